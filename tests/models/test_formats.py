"""Format detection from the bytes of real model files."""

from __future__ import annotations

import pickle
from pathlib import Path

import joblib
import pytest
from sklearn.linear_model import LinearRegression

from models.errors import UnsupportedModelFormat
from models.formats import FORMATS, detect_format
from tests.model_files import SavedModel

EXPECTED = {
    "xgboost_regression_json": "xgboost",
    "xgboost_binary_ubj": "xgboost",
    "xgboost_multiclass_ubj": "xgboost",
    "lightgbm_categorical": "lightgbm",
    "lightgbm_multiclass": "lightgbm",
    "sklearn_rf_multiclass": "sklearn",
    "sklearn_hgb_regression": "sklearn",
    "onnx_mlp_regression": "onnx",
    "onnx_mlp_multiclass": "onnx",
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_detects_each_saved_model(
    saved_models: dict[str, SavedModel], name: str, tmp_path: Path
) -> None:
    # The file name must not matter: copy under a neutral name.
    blind = tmp_path / "upload.bin"
    blind.write_bytes(saved_models[name].path.read_bytes())
    assert detect_format(blind) == EXPECTED[name]


@pytest.mark.parametrize("compress", [0, 3, ("gzip", 3), ("bz2", 3), ("xz", 3)])
def test_detects_joblib_and_pickle(tmp_path: Path, compress: object) -> None:
    model = LinearRegression().fit([[0.0], [1.0]], [0.0, 1.0])
    path = tmp_path / "model.joblib"
    joblib.dump(model, path, compress=compress)
    # An uncompressed joblib file is a plain pickle: both are refused the same way.
    assert detect_format(path) == ("pickle" if compress == 0 else "joblib")


def test_detects_pickle(tmp_path: Path) -> None:
    path = tmp_path / "model"
    path.write_bytes(pickle.dumps({"a": 1}, protocol=4))
    assert detect_format(path) == "pickle"


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"hello world\n",
        b'{"not": "a model"}',
        b"tree\nnot a lightgbm model\n",
        b"\x00\x01\x02garbage",
        b"PK\x05\x06" + b"\x00" * 18,
    ],
)
def test_unknown_bytes_are_unsupported(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "model.txt"
    path.write_bytes(content)
    with pytest.raises(UnsupportedModelFormat) as info:
        detect_format(path)
    assert info.value.status == 415
    assert "skops.io.dump" in str(info.value)  # the sentence lists what is accepted


def test_formats_constant() -> None:
    assert FORMATS == ("xgboost", "lightgbm", "sklearn", "onnx", "torchscript", "pickle", "joblib")
