"""Load a LightGBM text model (from Booster.save_model) and predict with it.

The header's size claims are checked against the file before LightGBM's parser trusts
them. Prediction is LightGBM's own ``Booster.predict``, on the CPU.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from models.errors import InvalidModel, first_line
from models.loaded import Device
from models.loaders.parts import LoadedParts
from models.loaders.probabilities import two_columns

__all__ = ["load_lightgbm"]

_LGB_HEADER_LIMIT = 1 << 20


def load_lightgbm(path: Path, *, task: str | None, n_threads: int | None) -> LoadedParts:
    import lightgbm

    text = path.read_text(encoding="utf-8", errors="replace")
    header = _lightgbm_header(text)
    _check_lightgbm_sizes(text, header)
    try:
        booster = lightgbm.Booster(model_str=text)
    except lightgbm.basic.LightGBMError as error:
        raise InvalidModel(
            f"The LightGBM model could not be read ({first_line(error)}). "
            "Upload the whole file written by Booster.save_model('model.txt')."
        ) from error
    objective = header.get("objective", "regression").split(" ")[0]
    n_outputs = int(header.get("num_tree_per_iteration", "1"))
    if objective == "binary":
        file_task, n_classes = "binary", 2
    elif objective in ("multiclass", "multiclassova"):
        file_task, n_classes = "multiclass", int(header.get("num_class", str(n_outputs)))
    else:
        file_task, n_classes = "regression", None
    n_features = booster.num_feature()
    names: list[str] | None = booster.feature_name()
    if names == [f"Column_{i}" for i in range(n_features)]:
        names = None  # LightGBM's placeholder names for a model trained without names
    details: dict[str, Any] = {
        "library": "lightgbm",
        "library_version": lightgbm.__version__,
        "model_version": header.get("version", ""),
        "objective": header.get("objective", ""),
    }
    if re.search(r"^is_linear=1$", text, flags=re.MULTILINE):
        details["linear_tree"] = True
        details["note"] = (
            "This is a LightGBM linear-tree model: it predicts normally, but its leaves hold "
            "linear models that TreeSHAP and the tree methods cannot read."
        )
    categorical = _lightgbm_categorical_features(text)
    categories: dict[int, list[str]] = {}
    pandas_categorical = booster.pandas_categorical or []
    if categorical:
        details["categorical_features"] = categorical
        if len(pandas_categorical) == len(categorical):
            categories = {
                i: [str(v) for v in labels]
                for i, labels in zip(categorical, pandas_categorical, strict=True)
            }
        elif pandas_categorical:
            details["categories_note"] = (
                "The model's pandas category lists do not pair one-to-one with its categorical "
                "features; categorical columns must be given as integer codes."
            )
    return LoadedParts(
        kind="tree",
        task=file_task,
        n_features=n_features,
        feature_names=names,
        n_outputs=n_outputs,
        n_classes=n_classes,
        categories_by_index=categories,
        details=details,
        native=booster,
        predictor=_LightGBMPredictor(booster, file_task, n_outputs, n_threads),
        capabilities=frozenset({"tree_ensemble"}),
    )


def _lightgbm_header(text: str) -> dict[str, str]:
    if not text.startswith("tree\n"):
        raise InvalidModel("The file is not a LightGBM text model (it must start with 'tree').")
    header: dict[str, str] = {}
    for line in text[:_LGB_HEADER_LIMIT].split("\n")[1:]:
        if not line or line.startswith("Tree="):
            break
        key, sep, value = line.partition("=")
        if sep:
            header[key] = value
    if "version" not in header:
        raise InvalidModel(
            "The LightGBM model has no version line; the file is not a LightGBM model."
        )
    return header


def _check_lightgbm_sizes(text: str, header: dict[str, str]) -> None:
    """Refuse size claims the file cannot back up, before LightGBM's parser trusts them
    (it seeks by ``tree_sizes`` and allocates by ``num_leaves``, and crashes on lies)."""
    try:
        tree_sizes = [int(v) for v in header.get("tree_sizes", "").split()]
        leaves = [int(v) for v in re.findall(r"^num_leaves=(-?\d+)$", text, flags=re.MULTILINE)]
        per_iteration = int(header.get("num_tree_per_iteration", "1"))
        num_class = int(header.get("num_class", "1"))
    except ValueError as error:
        raise InvalidModel(f"The LightGBM model header is malformed: {error}.") from error
    n_trees = len(re.findall(r"^Tree=\d+$", text, flags=re.MULTILINE))
    size = len(text)
    if any(s < 0 for s in tree_sizes) or sum(tree_sizes) > size:
        raise InvalidModel(
            f"The LightGBM model claims trees of {sum(tree_sizes)} bytes in a file of {size}; "
            "the file is truncated or corrupt."
        )
    if tree_sizes and len(tree_sizes) != n_trees:
        raise InvalidModel(
            f"The LightGBM model lists {len(tree_sizes)} tree sizes but holds {n_trees} trees."
        )
    if any(n < 1 for n in leaves) or sum(leaves) > size:
        raise InvalidModel(
            f"The LightGBM model claims {sum(leaves)} leaves in a file of {size} bytes; the file "
            "is corrupt."
        )
    if not 1 <= per_iteration <= max(n_trees, 1) or not 1 <= num_class <= max(n_trees, 1):
        raise InvalidModel(
            f"The LightGBM model claims {max(per_iteration, num_class)} outputs but holds "
            f"{n_trees} trees; the file is corrupt."
        )


def _lightgbm_categorical_features(text: str) -> list[int]:
    match = re.search(r"^\[categorical_feature: ([0-9,]*)\]$", text, flags=re.MULTILINE)
    if match is None or not match.group(1):
        return []
    return sorted(int(v) for v in match.group(1).split(","))


class _LightGBMPredictor:
    def __init__(self, booster: Any, task: str, n_outputs: int, n_threads: int | None) -> None:
        self._booster = booster
        self._task = task
        self._n_outputs = n_outputs
        self._params = {} if n_threads is None else {"num_threads": n_threads}

    def use_device(self, device: Device) -> Device:
        return "cpu"  # LightGBM's prediction has no GPU path

    def raw(self, X: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        out = self._booster.predict(X, raw_score=True, **self._params)
        return np.asarray(out, dtype=np.float64).reshape(X.shape[0], self._n_outputs)

    def probability(self, X: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        out = self._booster.predict(X, **self._params)
        return two_columns(out) if self._task == "binary" else np.asarray(out, dtype=np.float64)

    def label(self, X: npt.NDArray[np.float64]) -> npt.NDArray[Any]:
        if self._task == "regression":
            return np.asarray(self._booster.predict(X, **self._params), dtype=np.float64)
        return np.argmax(self.probability(X), axis=1)
