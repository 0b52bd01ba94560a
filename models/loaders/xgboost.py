"""Load an XGBoost model (JSON or UBJSON, from Booster.save_model) and predict with it.

Prediction is XGBoost's own ``inplace_predict``, on the GPU when XGBoost was built with
CUDA and cupy finds a device; predictions from accumulated margins go through a booster
with this model's objective and one zero leaf, so the transform is XGBoost's, bit for bit.
A gbtree model declares the capabilities built on that: ``predict_from_margin`` and
``tree_subsets`` (``models.tree_subsets``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from models.capabilities import Capability
from models.errors import InvalidModel, UnsupportedOutput, first_line
from models.gpu import cupy_cuda
from models.loaded import Device
from models.loaders.parts import LoadedParts
from models.loaders.probabilities import sigmoid, softmax, two_columns
from models.tree_subsets import TreeSubsets

__all__ = ["load_xgboost", "identity_booster", "booster_nthread"]


def load_xgboost(path: Path, *, task: str | None, n_threads: int | None) -> LoadedParts:
    import xgboost

    raw = path.read_bytes()
    params = {} if n_threads is None else {"nthread": n_threads}
    booster = xgboost.Booster(params=params)
    try:
        # From a buffer XGBoost tells JSON from UBJSON by the bytes, not the file name.
        booster.load_model(bytearray(raw))
        config = json.loads(booster.save_config())
    except (xgboost.core.XGBoostError, ValueError) as error:
        raise InvalidModel(
            f"The XGBoost model could not be read ({first_line(error)}). "
            "Upload the whole file written by Booster.save_model('model.json') or .ubj."
        ) from error
    learner = config["learner"]
    objective = learner["objective"]["name"]
    model_param = learner["learner_model_param"]
    num_class = int(model_param.get("num_class", "0"))
    num_target = int(model_param.get("num_target", "1"))
    booster_kind = learner["gradient_booster"]["name"]
    if objective.startswith("binary:"):
        file_task, n_outputs, n_classes = "binary", 1, 2
    elif objective.startswith("multi:"):
        if num_class < 2:
            raise InvalidModel(f"The {objective} model has num_class={num_class}.")
        file_task, n_outputs, n_classes = "multiclass", num_class, num_class
    else:
        file_task, n_outputs, n_classes = "regression", max(num_target, 1), None
    feature_types = booster.feature_types or []
    details = {
        "library": "xgboost",
        "library_version": xgboost.__version__,
        "model_version": ".".join(str(v) for v in config.get("version", [])),
        "objective": objective,
        "booster": booster_kind,
    }
    if any(t == "c" for t in feature_types):
        details["categorical_features"] = [i for i, t in enumerate(feature_types) if t == "c"]
    # a linear booster has no trees, so no categories (XGBoost refuses to be asked)
    categories = {} if booster_kind == "gblinear" else _xgboost_categories(booster)
    if categories:
        # XGBoost re-codes a DataFrame's categories to these and refuses any other value.
        details["unseen_categories"] = "error"
    capabilities: set[Capability] = set() if booster_kind == "gblinear" else {"tree_ensemble"}
    if booster_kind == "gbtree":
        capabilities |= {"predict_from_margin", "tree_subsets"}
    names = booster.feature_names
    return LoadedParts(
        kind="other" if booster_kind == "gblinear" else "tree",
        task=file_task,
        n_features=booster.num_features(),
        feature_names=None if names is None else list(names),
        n_outputs=n_outputs,
        n_classes=n_classes,
        categories_by_index=categories,
        details=details,
        native=booster,
        predictor=_XGBoostPredictor(booster, objective, n_outputs,
                                    linear=booster_kind == "gblinear"),
        capabilities=frozenset(capabilities),
        # XGBoost computes probabilities in float32 (XGBClassifier.predict_proba's dtype)
        probability_dtype=np.dtype(np.float32),
    )


def _xgboost_categories(booster: Any) -> dict[int, list[str]]:
    """The category labels XGBoost stored for each categorical feature (models trained on
    DataFrames with ``enable_categorical=True``, XGBoost >= 3.1), in code order: a value's
    code is its index in its feature's list. Features without stored labels (numeric
    features, or categorical ones trained on codes) are left out."""
    stored = booster.get_categories(export_to_arrow=True)
    if stored.empty():
        return {}
    return {index: [str(v) for v in labels.to_pylist()]
            for index, (_, labels) in enumerate(stored.to_arrow()) if labels is not None}


class _XGBoostPredictor:
    def __init__(self, booster: Any, objective: str, n_outputs: int, *,
                 linear: bool = False) -> None:
        self._booster = booster
        # a linear booster has no in-place prediction: it predicts from a DMatrix
        self._linear = linear
        self._objective = objective
        self._n_outputs = n_outputs
        self._device: Device = "cpu"
        self._identity: Any = None

    def use_device(self, device: Device) -> Device:
        if device == "cuda" and self._device != "cuda" and cupy_cuda():
            self._booster.set_param({"device": "cuda"})
            self._device = "cuda"
        elif device == "cpu" and self._device != "cpu":
            self._booster.set_param({"device": "cpu"})
            self._device = "cpu"
        return self._device

    def _inplace(self, X: npt.NDArray[np.float64] | None, predict_type: str,
                 margin: npt.NDArray[np.float32] | None = None) -> npt.NDArray[Any]:
        if margin is not None:
            if predict_type == "margin":
                return margin
            return self._identity_booster().inplace_predict(
                np.zeros((margin.shape[0], 1), dtype=np.float32), predict_type=predict_type,
                base_margin=margin)
        assert X is not None
        if self._linear:
            import xgboost

            return self._booster.predict(xgboost.DMatrix(X),
                                         output_margin=predict_type == "margin")
        if self._device == "cuda":
            import cupy

            return cupy.asnumpy(
                self._booster.inplace_predict(cupy.asarray(X), predict_type=predict_type)
            )
        return self._booster.inplace_predict(X, predict_type=predict_type)

    def raw(self, X: npt.NDArray[np.float64] | None,
            margin: npt.NDArray[np.float32] | None = None) -> npt.NDArray[np.float64]:
        n = X.shape[0] if X is not None else margin.shape[0]  # type: ignore[union-attr]
        return np.asarray(self._inplace(X, "margin", margin), dtype=np.float64).reshape(
            n, self._n_outputs
        )

    def probability(self, X: npt.NDArray[np.float64] | None,
                    margin: npt.NDArray[np.float32] | None = None) -> npt.NDArray[np.float64]:
        if self._objective in ("binary:logistic", "binary:hinge"):
            return two_columns(self._inplace(X, "value", margin))
        if self._objective == "multi:softprob":
            return np.asarray(self._inplace(X, "value", margin), dtype=np.float64)
        if self._objective.startswith("multi:"):
            return softmax(self.raw(X, margin))
        return two_columns(sigmoid(self.raw(X, margin)))

    def label(self, X: npt.NDArray[np.float64] | None,
              margin: npt.NDArray[np.float32] | None = None) -> npt.NDArray[Any]:
        if self._objective.startswith(("binary:", "multi:")):
            return np.argmax(self.probability(X, margin), axis=1)
        n = X.shape[0] if X is not None else margin.shape[0]  # type: ignore[union-attr]
        value = np.asarray(self._inplace(X, "value", margin), dtype=np.float64)
        return value.reshape(n, -1) if self._n_outputs > 1 else value.reshape(-1)

    def from_margin(self, margin: npt.NDArray[np.float32], output: str) -> npt.NDArray[Any]:
        """What ``raw``/``probability``/``label`` give for rows whose margin is ``margin``.

        margin: float32 [n, n_outputs], accumulated as XGBoost accumulates it (base score,
        then each tree's leaf value in tree order). The objective's transform is XGBoost's
        own: a booster with one leaf of value 0 and this model's objective adds 0 to the
        margin and applies it, so the result is the model's prediction bit for bit.
        """
        margin = np.ascontiguousarray(margin, dtype=np.float32).reshape(-1, self._n_outputs)
        compute = {"raw": self.raw, "probability": self.probability, "label": self.label}
        return compute[output](None, margin)

    def tree_subsets(self) -> TreeSubsets | None:
        """The model's trees in any subset (see ``models.tree_subsets``), read afresh: the
        caller keeps the subsets' boosters for as long as it holds the object."""
        return TreeSubsets.read(self._booster, identity=self._identity_booster(),
                                nthread=booster_nthread(self._booster))

    def _identity_booster(self) -> Any:
        if self._identity is None:
            self._identity = identity_booster(self._booster)
        return self._identity


def identity_booster(booster: Any) -> Any:
    """A booster with ``booster``'s objective and base score, one feature and one tree
    whose single leaf is 0: with ``base_margin=m`` its "value" prediction is the
    objective's transform of ``m`` and its "margin" prediction without one is the base
    margin XGBoost starts every row from."""
    import xgboost

    doc = json.loads(bytes(booster.save_raw("json")))
    learner = doc["learner"]
    gbtree = learner["gradient_booster"]
    if gbtree.get("name") != "gbtree":
        raise UnsupportedOutput("only gbtree XGBoost models give predictions from margins")
    learner["learner_model_param"]["num_feature"] = "1"
    learner["feature_names"] = []
    learner["feature_types"] = []
    learner["attributes"] = {}
    model = gbtree["model"]
    model.pop("weight_drop", None)  # dropout weights of trees that are not here
    model["trees"] = [_leaf_tree(0, 0.0)]
    model["tree_info"] = [0]
    model["gbtree_model_param"] = {**model["gbtree_model_param"],
                                   "num_trees": "1", "num_parallel_tree": "1"}
    model["iteration_indptr"] = [0, 1]
    identity = xgboost.Booster()
    identity.load_model(bytearray(json.dumps(doc).encode()))
    identity.set_param({"nthread": booster_nthread(booster)})
    return identity


def _leaf_tree(tree_id: int, value: float) -> dict[str, Any]:
    """An XGBoost JSON tree of one leaf."""
    return {
        "id": tree_id,
        "tree_param": {"num_nodes": "1", "size_leaf_vector": "1", "num_feature": "1",
                       "num_deleted": "0"},
        "loss_changes": [0.0], "sum_hessian": [0.0], "base_weights": [value],
        "left_children": [-1], "right_children": [-1], "parents": [2147483647],
        "split_indices": [0], "split_conditions": [value], "split_type": [0],
        "default_left": [0], "categories": [], "categories_nodes": [],
        "categories_segments": [], "categories_sizes": [],
    }


def booster_nthread(booster: Any) -> int:
    """The ``nthread`` an XGBoost booster predicts with (0: every core)."""
    config = json.loads(booster.save_config())
    return int(config["learner"]["generic_param"].get("nthread", "0") or 0)
