"""Read an ``xgboost.Booster`` into a :class:`~models.trees.TreeEnsemble`, exactly.

The reader parses the model JSON (``booster.save_raw("json")``), not the text dump:
the JSON carries every float32 threshold and leaf value bit for bit (shortest repr of a
float32), the covers (``sum_hessian``), the default directions and the categorical
splits. XGBoost's split test is ``float32(x) < float32(t)``; listed categories go right.

Node numbering: nodes keep XGBoost's node ids whenever the tree has no deleted nodes
(the usual case), so ``tree_eval.apply`` equals ``predict(pred_leaf=True)``. Trees grown
with a pruner (``tree_method="exact"`` with ``gamma > 0``) keep deleted nodes in the
JSON; those are dropped and the remaining nodes keep their relative order, so a node's
index is the rank of its XGBoost id among the nodes reachable from the root.

Raw output is XGBoost's margin (``output_margin=True``). ``base_score`` in the JSON is
in the output space and is moved to the margin through the objective's link: logit for
logistic objectives, log for the log-link objectives (Poisson, Gamma, Tweedie, Cox,
AFT), identity otherwise (multiclass objectives store margins). For the log-link
objectives the ensemble's ``link`` is ``"identity"`` because :data:`models.trees.Link`
has no exponential; ``capabilities["prediction_transform"] == "exp"`` says that the
model's prediction is ``exp(raw)``.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import numpy.typing as npt
import xgboost

from models.readers import NotATreeModel
from models.trees import MISSING_DEFAULT, Link, Tree, TreeEnsemble

__all__ = ["read_xgboost"]

# objective -> (link of the raw output, how base_score maps from output to margin space)
_OBJECTIVES: dict[str, tuple[Link, str]] = {
    "reg:squarederror": ("identity", "identity"),
    "reg:squaredlogerror": ("identity", "identity"),
    "reg:pseudohubererror": ("identity", "identity"),
    "reg:absoluteerror": ("identity", "identity"),
    "reg:quantileerror": ("identity", "identity"),
    "reg:logistic": ("logistic", "logit"),
    "binary:logistic": ("logistic", "logit"),
    "binary:logitraw": ("identity", "identity"),
    "binary:hinge": ("identity", "identity"),
    "multi:softprob": ("softmax", "identity"),
    "multi:softmax": ("softmax", "identity"),
    "count:poisson": ("identity", "log"),
    "reg:gamma": ("identity", "log"),
    "reg:tweedie": ("identity", "log"),
    "survival:cox": ("identity", "log"),
    "survival:aft": ("identity", "log"),
    "rank:ndcg": ("identity", "identity"),
    "rank:map": ("identity", "identity"),
    "rank:pairwise": ("identity", "identity"),
}

_SPLIT_CATEGORICAL = 1


def read_xgboost(booster: xgboost.Booster) -> TreeEnsemble:
    """Read a gbtree (or DART) XGBoost booster into the normalized form.

    Parameters
    ----------
    booster : xgboost.Booster
        A trained booster; for the scikit-learn wrappers pass ``model.get_booster()``.
        All trees are read (``best_iteration`` is ignored, as ``Booster.predict`` does).

    Returns
    -------
    TreeEnsemble
        ``comparison="<"``, ``input_float32=True``, ``n_outputs`` = number of classes
        (multiclass) or targets (multi-target), else 1; ``base_score`` in margin space,
        float64 of shape ``[n_outputs]``; ``source="xgboost"``.

    Raises
    ------
    NotATreeModel
        For gblinear boosters, vector-leaf trees (``multi_strategy="multi_output_tree"``)
        and objectives whose base-score link is unknown here.
    """
    if not isinstance(booster, xgboost.Booster):
        raise TypeError(f"expected an xgboost.Booster, got {type(booster).__name__}")
    learner = json.loads(bytes(booster.save_raw("json")))["learner"]
    model, tree_weights = _gbtree_model(learner["gradient_booster"])
    objective = str(learner["objective"]["name"])
    if objective not in _OBJECTIVES:
        raise NotATreeModel(
            f"XGBoost objective {objective!r} is not supported: its base score cannot be "
            "placed in margin space reliably; retrain with a standard objective")
    link, base_transform = _OBJECTIVES[objective]

    params = learner["learner_model_param"]
    n_features = int(params["num_feature"])
    n_outputs = max(int(params["num_class"]), int(params.get("num_target", 1)), 1)
    base_score = _base_margin(_parse_base_score(params["base_score"]), base_transform, n_outputs)

    tree_info = [int(k) for k in model["tree_info"]]
    trees = []
    for index, raw_tree in enumerate(model["trees"]):
        weight = 1.0 if tree_weights is None else float(np.float32(tree_weights[index]))
        trees.append(_read_tree(raw_tree, output=tree_info[index], weight=weight))

    capabilities: dict[str, object] = {"xgboost_export": True, "objective": objective}
    if base_transform == "log":
        capabilities["prediction_transform"] = "exp"
    names = booster.feature_names
    return TreeEnsemble(
        trees=tuple(trees),
        n_features=n_features,
        n_outputs=n_outputs,
        base_score=base_score,
        feature_names=tuple(names) if names is not None else None,
        link=link,
        comparison="<",
        input_float32=True,
        source="xgboost",
        capabilities=capabilities,
    )


def _gbtree_model(booster_json: dict[str, Any]) -> tuple[dict[str, Any], list[float] | None]:
    """The tree model and its per-tree DART weights (None when every weight is 1)."""
    name = booster_json["name"]
    if name == "gbtree":
        model = booster_json["model"]
        # XGBoost 3.4 folded DART into gbtree: the weights sit next to the trees.
        return model, model.get("weight_drop")
    if name == "dart":
        return booster_json["gbtree"]["model"], booster_json["weight_drop"]
    if name == "gblinear":
        raise NotATreeModel("this XGBoost model is a linear booster (gblinear), not a tree "
                            "ensemble; explain it with a model-agnostic method instead")
    raise NotATreeModel(f"XGBoost booster type {name!r} is not a tree ensemble tabxai reads")


def _parse_base_score(text: str) -> npt.NDArray[np.float32]:
    """XGBoost 3.x writes ``"[v1,v2]"``; older versions a single number."""
    parts = text.strip().strip("[]").split(",")
    return np.array([float(p) for p in parts], dtype=np.float32)


def _base_margin(values: npt.NDArray[np.float32], transform: str, n_outputs: int
                 ) -> npt.NDArray[np.float64]:
    base = values.astype(np.float64)
    if base.shape[0] == 1 and n_outputs > 1:
        base = np.repeat(base, n_outputs)
    if base.shape[0] != n_outputs:
        raise NotATreeModel(f"XGBoost model has {base.shape[0]} base scores for "
                            f"{n_outputs} outputs; the model file looks inconsistent")
    if transform == "logit":
        return np.array([-math.log(1.0 / b - 1.0) for b in base])
    if transform == "log":
        return np.log(base)
    return base


def _read_tree(raw: dict[str, Any], *, output: int, weight: float) -> Tree:
    if int(raw["tree_param"].get("size_leaf_vector", "1")) > 1:
        raise NotATreeModel("XGBoost vector-leaf trees (multi_strategy='multi_output_tree') "
                            "are not supported; train with one_output_per_tree")
    left_xgb = np.asarray(raw["left_children"], dtype=np.int64)
    right_xgb = np.asarray(raw["right_children"], dtype=np.int64)
    order = _node_order(left_xgb, right_xgb)
    new_id = np.full(left_xgb.shape[0], -1, dtype=np.int64)
    new_id[order] = np.arange(order.shape[0])

    is_leaf = left_xgb[order] < 0
    left = np.where(is_leaf, -1, new_id[np.maximum(left_xgb[order], 0)]).astype(np.int32)
    right = np.where(is_leaf, -1, new_id[np.maximum(right_xgb[order], 0)]).astype(np.int32)
    # Thresholds and leaf values are float32 in XGBoost; the JSON prints each one's
    # shortest repr, so rounding the parsed double to float32 recovers it exactly.
    conditions = np.asarray(raw["split_conditions"], dtype=np.float32).astype(np.float64)[order]
    feature = np.where(is_leaf, -1, np.asarray(raw["split_indices"], dtype=np.int64)[order])
    value = np.where(is_leaf, conditions * weight, 0.0)[:, None]
    threshold = np.where(is_leaf, 0.0, conditions)
    cover = np.asarray(raw["sum_hessian"], dtype=np.float32).astype(np.float64)[order]
    default_left = np.asarray(raw["default_left"], dtype=bool)[order] & ~is_leaf

    categories, category_set_left = _categories(raw, order, new_id)
    return Tree(
        left=left,
        right=right,
        feature=feature.astype(np.int32),
        threshold=threshold,
        default_left=default_left,
        missing=np.full(order.shape[0], MISSING_DEFAULT, dtype=np.int8),
        value=value,
        cover=cover,
        output=output,
        categories=categories,
        category_set_left=category_set_left,
    )


def _node_order(left: npt.NDArray[np.int64], right: npt.NDArray[np.int64]
                ) -> npt.NDArray[np.int64]:
    """XGBoost ids of the nodes reachable from the root, parents before children.

    XGBoost allocates children after their parent, so ascending ids already put parents
    first; preorder is the fallback for a file where that does not hold.
    """
    reachable: list[int] = []
    stack = [0]
    monotone = True
    while stack:
        node = stack.pop()
        reachable.append(node)
        if left[node] >= 0:
            monotone = monotone and left[node] > node and right[node] > node
            stack.extend((int(right[node]), int(left[node])))
    if monotone:
        return np.sort(np.asarray(reachable, dtype=np.int64))
    return np.asarray(reachable, dtype=np.int64)


def _categories(raw: dict[str, Any], order: npt.NDArray[np.int64],
                new_id: npt.NDArray[np.int64]
                ) -> tuple[tuple[npt.NDArray[np.int64] | None, ...] | None,
                           npt.NDArray[np.bool_] | None]:
    split_type = np.asarray(raw.get("split_type", []), dtype=np.int64)
    if not (split_type == _SPLIT_CATEGORICAL).any():
        return None, None
    flat = np.asarray(raw["categories"], dtype=np.int64)
    # A categorical node with no listed category sends every code left.
    per_node: list[npt.NDArray[np.int64] | None] = [
        np.empty(0, dtype=np.int64) if split_type[old] == _SPLIT_CATEGORICAL else None
        for old in order]
    for node, start, size in zip(raw["categories_nodes"], raw["categories_segments"],
                                 raw["categories_sizes"], strict=True):
        if new_id[node] >= 0:
            per_node[int(new_id[node])] = np.sort(flat[int(start):int(start) + int(size)])
    # XGBoost sends the listed categories right.
    return tuple(per_node), np.zeros(order.shape[0], dtype=bool)
