"""Exact translation of a :class:`~models.trees.TreeEnsemble` into an XGBoost model.

TreeSHAP runs on XGBoost's engine for every tree model, so every ensemble is written out
as XGBoost JSON (shared/methods/tree_export.md). The rules that make it exact:

- thresholds: XGBoost goes left when ``float32(x) < t'``. ``x <= t`` becomes
  ``t' = nextafter(float32_floor(t), +inf)``; ``x < t`` becomes ``t' = float32_ceil(t)``.
  For float32-representable ``x`` this is the same test. An ensemble that compares in
  float64 (LightGBM, ``input_float32=False``) can still differ for a float64 ``x`` that is
  not float32-representable and lies within one float32 step of ``t``: XGBoost rounds
  ``x`` to float32 before comparing. Data read as float32 never hits this.
- node order: XGBoost's predictor needs ``right == left + 1``; nodes are renumbered
  breadth-first. :func:`node_order` gives the map back to the ensemble's node ids.
- missing values: ``MISSING_AS_ZERO`` becomes ``default_left = goes_left(0.0)``;
  ``MISSING_ZERO`` cannot be expressed per split and is refused.
- categorical splits: XGBoost sends listed codes right and every other code (unlisted,
  negative, too large) left. A set whose codes go left (LightGBM) is written with its
  children swapped and its default flipped, which is exact without knowing the category
  universe. XGBoost truncates a non-integer code to an integer where the ensemble treats
  it as unlisted; category codes are integers in practice.
- leaf values are multiplied by ``leaf_scale`` (forest averaging) and stored in float32,
  as XGBoost accumulates them.
- vector leaves (forest class fractions, K outputs) become K scalar trees, one per output.
- base score: XGBoost keeps ``base_score`` in output space; for the logistic link it is
  ``sigmoid(raw)`` in float32, whose logit loses precision for raw > 5 (about 1e-4 at 7.5).
  Callers that need the exact margin pass the raw base as ``base_margin``
  (:func:`base_margin`), as the TreeSHAP explainer does.

The objective makes ``output_margin`` the raw output: ``reg:squarederror`` for the
identity link (``num_target=K`` for K outputs), ``binary:logistic`` for the logistic link,
``multi:softprob`` for softmax. Only the margin is exact: a LightGBM ``sigmoid`` other
than 1 (``capabilities["sigmoid"]``) or an ``exp`` prediction transform is not carried into
the exported booster's probability/response output.
"""

from __future__ import annotations

import json
from collections import deque
from typing import Any

import numpy as np
import numpy.typing as npt

from models.trees import MISSING_AS_ZERO, MISSING_ZERO, Tree, TreeEnsemble

__all__ = ["NotExportable", "to_xgboost_json", "to_booster", "node_order", "base_margin",
           "leaves_from_xgboost"]

_XGBOOST_FORMAT_VERSION = [3, 4, 1]
_NO_PARENT = 2147483647


class NotExportable(ValueError):
    """The tree ensemble cannot be translated into an XGBoost model exactly."""


def to_xgboost_json(ensemble: TreeEnsemble) -> dict[str, Any]:
    """Translate ``ensemble`` into an XGBoost JSON model (the dict of ``save_raw("json")``).

    Thresholds of +-inf stay floats; ``json.dumps`` writes them as ``Infinity``, which
    XGBoost reads.

    Raises :class:`NotExportable` with the reason when a node cannot be expressed in
    XGBoost (zero-as-missing splits, an unknown link).
    """
    _check_exportable(ensemble)
    trees: list[dict[str, Any]] = []
    tree_info: list[int] = []
    for t, tree in enumerate(ensemble.trees):
        k_values = tree.value.shape[1]
        for k, exported in enumerate(_tree_json(ensemble, tree, t)):
            exported["id"] = len(trees)
            trees.append(exported)
            tree_info.append(k if k_values > 1 else int(tree.output))
    objective, num_class, num_target = _objective(ensemble)
    model = {
        "cats": {"enc": [], "feature_segments": [], "sorted_idx": []},
        "gbtree_model_param": {"num_parallel_tree": "1", "num_trees": str(len(trees))},
        "iteration_indptr": [0, len(trees)],
        "tree_info": tree_info,
        "trees": trees,
    }
    return {
        "learner": {
            "attributes": {},
            "feature_names": [],
            "feature_types": [],
            "gradient_booster": {"model": model, "name": "gbtree"},
            "learner_model_param": {
                "base_score": _base_score_text(ensemble),
                "boost_from_average": "0",
                "num_class": str(num_class),
                "num_feature": str(ensemble.n_features),
                "num_target": str(num_target),
            },
            "objective": objective,
        },
        "version": list(_XGBOOST_FORMAT_VERSION),
    }


def to_booster(ensemble: TreeEnsemble, *, device: str = "cpu", nthread: int = 0) -> Any:
    """Translate ``ensemble`` and load it as an ``xgboost.Booster``.

    device: XGBoost device string ("cpu", "cuda", "cuda:0"); nthread: CPU threads, 0 for
    XGBoost's default (all cores).
    """
    import xgboost

    # Thresholds may be +-inf; Python writes them as Infinity, which XGBoost reads.
    text = json.dumps(to_xgboost_json(ensemble))
    booster = xgboost.Booster(model_file=bytearray(text.encode()))
    params: dict[str, Any] = {"device": device}
    if nthread > 0:
        params["nthread"] = nthread
    booster.set_param(params)
    return booster


def node_order(tree: Tree) -> npt.NDArray[np.int32]:
    """Breadth-first order of ``tree``'s nodes: ``order[j]`` is the ensemble node id of
    exported node ``j``. Categorical nodes whose listed codes go left have their children
    visited right first, because their children are swapped in the export."""
    order = np.empty(tree.n_nodes, dtype=np.int32)
    queue = deque([0])
    j = 0
    while queue:
        node = queue.popleft()
        order[j] = node
        j += 1
        if tree.left[node] >= 0:
            first, second = int(tree.left[node]), int(tree.right[node])
            if _swapped(tree, node):
                first, second = second, first
            queue.append(first)
            queue.append(second)
    if j != tree.n_nodes:
        raise NotExportable(f"a tree has {tree.n_nodes} nodes but only {j} are reachable "
                            "from its root; the tree is malformed")
    return order


def leaves_from_xgboost(ensemble: TreeEnsemble, pred_leaf: npt.ArrayLike
                        ) -> npt.NDArray[np.int32]:
    """Map the exported booster's ``predict(..., pred_leaf=True)`` output,
    [n_rows, n_exported_trees], back to the ensemble's node ids, [n_rows, n_trees] (the
    layout of :func:`models.tree_eval.apply`)."""
    leaves = np.asarray(pred_leaf).astype(np.int64).reshape(np.shape(pred_leaf)[0], -1)
    out = np.empty((leaves.shape[0], ensemble.n_trees), dtype=np.int32)
    column = 0
    for t, tree in enumerate(ensemble.trees):
        out[:, t] = node_order(tree)[leaves[:, column]]
        column += tree.value.shape[1]
    return out


def base_margin(ensemble: TreeEnsemble, n_rows: int) -> npt.NDArray[np.float32]:
    """The raw base score as an XGBoost ``base_margin``: [n_rows] for one output, else
    [n_rows, n_outputs], float32."""
    base = np.asarray(ensemble.base_score, dtype=np.float32).reshape(-1)
    if ensemble.n_outputs == 1:
        return np.full(n_rows, base[0], dtype=np.float32)
    return np.tile(base, (n_rows, 1))


def _check_exportable(ensemble: TreeEnsemble) -> None:
    if ensemble.capabilities.get("xgboost_export") is False:
        reason = ensemble.capabilities.get("xgboost_export_reason",
                                           "its reader marked it as not translatable")
        raise NotExportable(f"this model cannot be translated into XGBoost: {reason}")
    if ensemble.link not in ("identity", "logistic", "softmax"):
        raise NotExportable(f"the link {ensemble.link!r} has no XGBoost objective")
    if ensemble.link == "logistic" and ensemble.n_outputs != 1:
        raise NotExportable("a logistic link needs exactly one output, "
                            f"this ensemble has {ensemble.n_outputs}")
    if ensemble.n_trees == 0:
        raise NotExportable("the ensemble has no trees")
    for t, tree in enumerate(ensemble.trees):
        split = tree.left >= 0
        if np.any((tree.missing == MISSING_ZERO) & split & ~_categorical_mask(tree)):
            raise NotExportable(
                f"tree {t} treats zero as missing (LightGBM zero_as_missing); XGBoost "
                "cannot express that per split, so this model cannot be translated")
        k_values = tree.value.shape[1]
        if k_values > 1 and k_values != ensemble.n_outputs:
            raise NotExportable(f"tree {t} has {k_values} leaf values per leaf but the "
                                f"ensemble has {ensemble.n_outputs} outputs")
        if k_values == 1 and not 0 <= tree.output < ensemble.n_outputs:
            raise NotExportable(f"tree {t} adds to output {tree.output} but the ensemble "
                                f"has {ensemble.n_outputs} outputs")


def _objective(ensemble: TreeEnsemble) -> tuple[dict[str, Any], int, int]:
    """(objective JSON, num_class, num_target)."""
    k = ensemble.n_outputs
    if ensemble.link == "softmax":
        return ({"name": "multi:softprob",
                 "softmax_multiclass_param": {"num_class": str(k)}}, k, 1)
    name = "binary:logistic" if ensemble.link == "logistic" else "reg:squarederror"
    return {"name": name, "reg_loss_param": {"scale_pos_weight": "1"}}, 0, k


def _base_score_text(ensemble: TreeEnsemble) -> str:
    base = np.asarray(ensemble.base_score, dtype=np.float64).reshape(-1)
    if ensemble.link == "logistic":
        base = 1.0 / (1.0 + np.exp(-base))
    return "[" + ",".join(repr(float(np.float32(b))) for b in base) + "]"


def _tree_json(ensemble: TreeEnsemble, tree: Tree, t: int) -> list[dict[str, Any]]:
    """One XGBoost tree per leaf value column (K for vector leaves), sharing the splits."""
    order = node_order(tree)
    new_id = np.empty_like(order)
    new_id[order] = np.arange(order.shape[0], dtype=np.int32)
    n = tree.n_nodes
    left = np.full(n, -1, dtype=np.int64)
    right = np.full(n, -1, dtype=np.int64)
    parents = np.full(n, _NO_PARENT, dtype=np.int64)
    conditions = np.zeros(n, dtype=np.float32)
    indices = np.zeros(n, dtype=np.int64)
    default_left = np.zeros(n, dtype=np.int64)
    split_type = np.zeros(n, dtype=np.int64)
    categories: list[int] = []
    categories_nodes: list[int] = []
    categories_segments: list[int] = []
    categories_sizes: list[int] = []
    cover = tree.cover[order]
    for j, node in enumerate(order):
        if tree.left[node] < 0:
            continue
        swapped = _swapped(tree, int(node))
        first, second = int(tree.left[node]), int(tree.right[node])
        if swapped:
            first, second = second, first
        left[j], right[j] = new_id[first], new_id[second]
        parents[left[j]] = parents[right[j]] = j
        indices[j] = tree.feature[node]
        goes_left_on_missing = bool(tree.default_left[node])
        codes = tree.categories[node] if tree.categories is not None else None
        if codes is not None:
            split_type[j] = 1
            categories_nodes.append(j)
            categories_segments.append(len(categories))
            categories_sizes.append(int(len(codes)))
            categories.extend(int(c) for c in np.sort(np.asarray(codes, dtype=np.int64)))
            default_left[j] = goes_left_on_missing != swapped
            continue
        conditions[j] = _threshold(float(tree.threshold[node]), ensemble.comparison)
        if tree.missing[node] == MISSING_AS_ZERO:
            goes_left_on_missing = bool(np.float32(0.0) < conditions[j])
        default_left[j] = goes_left_on_missing
    if any(c < 0 for c in categories):
        raise NotExportable(f"tree {t} lists a negative category code; XGBoost category "
                            "codes are non-negative")
    shared = {
        "categories": categories,
        "categories_nodes": categories_nodes,
        "categories_segments": categories_segments,
        "categories_sizes": categories_sizes,
        "default_left": default_left.tolist(),
        "left_children": left.tolist(),
        "loss_changes": [0.0] * n,
        "parents": parents.tolist(),
        "right_children": right.tolist(),
        "split_indices": indices.tolist(),
        "split_type": split_type.tolist(),
        "sum_hessian": cover.astype(np.float32).tolist(),
        "tree_param": {"num_deleted": "0", "num_feature": str(ensemble.n_features),
                       "num_nodes": str(n), "size_leaf_vector": "1"},
    }
    is_leaf = left < 0
    leaf_values = (tree.value[order] * ensemble.leaf_scale).astype(np.float32)
    exported = []
    for k in range(tree.value.shape[1]):
        conditions_k = np.where(is_leaf, leaf_values[:, k], conditions)
        exported.append({**shared,
                         "base_weights": np.where(is_leaf, conditions_k, np.float32(0.0)).tolist(),
                         "split_conditions": conditions_k.tolist()})
    return exported


def _swapped(tree: Tree, node: int) -> bool:
    """Whether the export swaps this node's children (categorical set that goes left)."""
    return (tree.categories is not None and tree.categories[node] is not None
            and tree.category_set_left is not None and bool(tree.category_set_left[node]))


def _categorical_mask(tree: Tree) -> npt.NDArray[np.bool_]:
    if tree.categories is None:
        return np.zeros(tree.n_nodes, dtype=bool)
    return np.array([c is not None for c in tree.categories], dtype=bool)


def _threshold(t: float, comparison: str) -> np.float32:
    """The float32 t' with ``float32(x) < t'`` equivalent to the node's test."""
    with np.errstate(over="ignore"):
        nearest = np.float32(t)
    if comparison == "<":
        # smallest float32 >= t
        if float(nearest) < t:
            nearest = np.nextafter(nearest, np.float32(np.inf))
        return nearest
    # largest float32 <= t, then one step up
    if float(nearest) > t:
        nearest = np.nextafter(nearest, np.float32(-np.inf))
    return np.nextafter(nearest, np.float32(np.inf))
