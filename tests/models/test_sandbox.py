"""The inspection sandbox: limits, crash containment, and inspect_model end to end.

Children come from one fork server per test session; each run here costs a fork.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import time
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LinearRegression

from models.errors import FeatureMismatch, InvalidModel, ModelInspectionFailed, UntrustedFormat
from models.inspection import ModelInfo, inspect_model
from models.sandbox import run_isolated
from tests.model_files import SavedModel

LIMITS = {"memory_limit_bytes": 256 << 20, "time_limit_s": 30.0}


def add(a: int, b: int, *, scale: int = 1) -> int:
    return (a + b) * scale


def hang() -> None:
    time.sleep(600)


def abort() -> None:
    os.abort()


def allocate_without_bound() -> None:
    blocks = []
    while True:
        blocks.append(np.ones(8 << 20))  # 64 MiB each, touched


def raise_feature_mismatch() -> None:
    raise FeatureMismatch(
        "columns a and b are missing", missing=["a", "b"], type_clashes=["c (string)"]
    )


def test_returns_the_result() -> None:
    assert run_isolated(add, 2, 3, scale=4, **LIMITS) == 20


def test_model_errors_cross_with_their_attributes() -> None:
    with pytest.raises(FeatureMismatch) as info:
        run_isolated(raise_feature_mismatch, **LIMITS)
    assert (info.value.missing, info.value.type_clashes) == (["a", "b"], ["c (string)"])
    assert str(info.value) == "columns a and b are missing"


def test_time_limit() -> None:
    started = time.monotonic()
    with pytest.raises(ModelInspectionFailed, match="time limit") as info:
        run_isolated(hang, memory_limit_bytes=256 << 20, time_limit_s=1.0)
    assert info.value.reason == "timeout"
    assert time.monotonic() - started < 10


def test_crash() -> None:
    with pytest.raises(ModelInspectionFailed, match="SIGABRT") as info:
        run_isolated(abort, **LIMITS)
    assert info.value.reason == "crashed"


def test_memory_limit() -> None:
    with pytest.raises(ModelInspectionFailed, match="memory limit") as info:
        run_isolated(allocate_without_bound, **LIMITS)
    assert info.value.reason == "memory"


def test_inspects_a_tree_model(saved_models: dict[str, SavedModel]) -> None:
    info = inspect_model(saved_models["lightgbm_categorical"].path, **LIMITS)
    assert (info.format, info.kind, info.task, info.n_features, info.n_outputs) == (
        "lightgbm",
        "tree",
        "binary",
        5,
        1,
    )
    assert info.classes == [0, 1]
    assert info.categories == {"color": ["red", "green", "blue", "white"]}
    assert info.details["n_trees"] == 10 and info.details["max_depth"] >= 1
    assert info.details["library_version"]
    stored = json.loads(json.dumps(info.to_dict()))
    assert ModelInfo.from_dict(stored) == info


def test_inspects_an_onnx_network(saved_models: dict[str, SavedModel]) -> None:
    info = inspect_model(saved_models["onnx_mlp_multiclass"].path, **LIMITS)
    assert (info.format, info.kind, info.task, info.n_outputs, info.classes) == (
        "onnx",
        "neural",
        "multiclass",
        3,
        [0, 1, 2],
    )
    assert info.details["capabilities"]["tree_shap"] is False
    assert info.details["input_name"] == "X"


def test_untrusted_pickle_is_refused_through_the_sandbox(tmp_path: Path) -> None:
    path = tmp_path / "upload"
    path.write_bytes(pickle.dumps(LinearRegression().fit([[0.0], [1.0]], [0.0, 1.0])))
    with pytest.raises(UntrustedFormat):
        inspect_model(path, **LIMITS)


def _ubjson_with_array_claim(source: Path, tmp_path: Path, count: int) -> Path:
    """The UBJSON model with its first 'split_conditions' array claiming ``count`` doubles."""
    raw = source.read_bytes()
    start = raw.index(b"split_conditions") + len(b"split_conditions")
    assert raw[start : start + 5] == b"[$d#L"
    path = tmp_path / f"claim_{count}.ubj"
    path.write_bytes(raw[: start + 5] + struct.pack(">q", count) + raw[start + 13 :])
    return path


def test_parser_crash_is_contained(saved_models: dict[str, SavedModel], tmp_path: Path) -> None:
    # XGBoost's UBJSON reader reads past the buffer for an array longer than the file:
    # in-process this kills the interpreter with SIGSEGV.
    path = _ubjson_with_array_claim(saved_models["xgboost_regression_ubj"].path, tmp_path, 1 << 20)
    with pytest.raises(ModelInspectionFailed, match="SIGSEGV") as info:
        inspect_model(path, **LIMITS)
    assert (info.value.reason, info.value.status) == ("crashed", 422)


def test_unbounded_parser_allocation_hits_the_memory_limit(
    saved_models: dict[str, SavedModel], tmp_path: Path
) -> None:
    # An array claiming 2**33 doubles (64 GiB): the parser allocates before reading.
    path = _ubjson_with_array_claim(saved_models["xgboost_regression_ubj"].path, tmp_path, 1 << 33)
    with pytest.raises(ModelInspectionFailed, match="memory limit") as info:
        inspect_model(path, **LIMITS)
    assert info.value.reason == "memory"


def test_huge_lightgbm_claim_is_a_model_error(
    saved_models: dict[str, SavedModel], tmp_path: Path
) -> None:
    text = saved_models["lightgbm_multiclass"].path.read_text()
    path = tmp_path / "huge.txt"
    path.write_text(text.replace("num_leaves=7", "num_leaves=900000000", 1))
    with pytest.raises(InvalidModel, match="leaves"):
        inspect_model(path, **LIMITS)
