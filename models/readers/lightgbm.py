"""Read a ``lightgbm.Booster`` into a :class:`~models.trees.TreeEnsemble`, exactly.

The reader walks ``booster.dump_model()``: LightGBM prints every float64 threshold and
leaf value with 17 significant digits there, so the parsed numbers are bit-identical.
Semantics carried over (shared/methods/tree_export.md):

- numeric split ``x <= t`` in float64 (``comparison="<="``, ``input_float32=False``);
  missing type None → ``MISSING_AS_ZERO``, Zero → ``MISSING_ZERO``, NaN →
  ``MISSING_DEFAULT`` with the node's ``default_left``; LightGBM's predictor reads
  ``|x| <= float32(1e-35)`` as 0.0, which thresholds in that band absorb (see
  ``_effective_threshold``);
- categorical split: the codes listed in the node go left (``category_set_left``);
  NaN and negative codes go right, so categorical nodes get ``default_left=False``;
- leaf values are used as stored (shrinkage applied, the initial score folded into the
  first iteration's trees), so ``base_score`` is 0; ``average_output`` models (random
  forest mode) get ``leaf_scale = 1 / n_iterations``: their raw output is the average
  that LightGBM's prediction transforms, whereas ``predict(raw_score=True)`` returns
  the un-averaged sum;
- cover is the data count (``internal_count`` / ``leaf_count``), as LightGBM's own
  ``pred_contrib`` uses;
- trees interleave the outputs: tree ``i`` adds to output ``i % num_tree_per_iteration``.

Nodes are numbered in preorder (left subtree first). ``leaf_indices`` maps a tree's node
index to LightGBM's leaf index (what ``predict(pred_leaf=True)`` returns).

Raw output is LightGBM's raw score (``predict(raw_score=True)``). For ``binary`` and
``multiclassova`` objectives LightGBM's probability is ``1 / (1 + exp(-sigmoid * raw))``;
the ensemble's link is ``"logistic"`` and ``capabilities["sigmoid"]`` carries the
factor, which :data:`models.trees.Link` cannot hold. Poisson, Gamma and Tweedie models
have ``link="identity"`` and ``capabilities["prediction_transform"] == "exp"``.
"""

from __future__ import annotations

from typing import Any

import lightgbm
import numpy as np
import numpy.typing as npt

from models.readers import NotATreeModel
from models.trees import MISSING_AS_ZERO, MISSING_DEFAULT, MISSING_ZERO, Link, Tree, TreeEnsemble

__all__ = ["read_lightgbm", "leaf_indices"]

_MISSING = {"None": MISSING_AS_ZERO, "Zero": MISSING_ZERO, "NaN": MISSING_DEFAULT}

# LightGBM's kZeroThreshold is the float 1e-35f; its predictor replaces every input with
# |x| <= this value by 0.0 before any split sees it.
_ZERO = float(np.float32(1e-35))

_LINKS: dict[str, Link] = {
    "binary": "logistic",
    "cross_entropy": "logistic",
    "multiclassova": "logistic",
    "multiclass": "softmax",
}
_LOG_LINK = frozenset({"poisson", "gamma", "tweedie"})


def read_lightgbm(booster: lightgbm.Booster) -> TreeEnsemble:
    """Read a LightGBM booster into the normalized form.

    Parameters
    ----------
    booster : lightgbm.Booster
        A trained booster; for the scikit-learn wrappers pass ``model.booster_``. Like
        ``Booster.predict``, the trees up to ``best_iteration`` are read when early
        stopping set one, else all trees.

    Returns
    -------
    TreeEnsemble
        ``comparison="<="``, ``input_float32=False``, ``n_outputs`` = trees per iteration
        (number of classes for multiclass, else 1), ``base_score`` zeros,
        ``source="lightgbm"``. ``capabilities["xgboost_export"]`` is False (with a
        reason) when a split treats zero as missing, which XGBoost cannot express.

    Raises
    ------
    NotATreeModel
        For linear-tree models (``linear_tree=True``): their leaves are linear models.
    """
    if not isinstance(booster, lightgbm.Booster):
        raise TypeError(f"expected a lightgbm.Booster, got {type(booster).__name__}")
    dump = booster.dump_model()
    n_outputs = int(dump["num_tree_per_iteration"])
    trees = tuple(_read_tree(info["tree_structure"], output=index % n_outputs)
                  for index, info in enumerate(dump["tree_info"]))

    objective, options = _parse_objective(dump.get("objective"))
    capabilities: dict[str, object] = {"xgboost_export": True, "objective": objective}
    if any((t.missing == MISSING_ZERO).any() for t in trees):
        capabilities["xgboost_export"] = False
        capabilities["xgboost_export_reason"] = (
            "the LightGBM model treats zero as missing (zero_as_missing=True): XGBoost "
            "cannot send zeros to a per-split default child, so a translation would "
            "change predictions")
    if objective in ("binary", "multiclassova"):
        capabilities["sigmoid"] = float(options.get("sigmoid", "1"))
    if objective in _LOG_LINK:
        capabilities["prediction_transform"] = "exp"

    n_iterations = max(len(trees) // n_outputs, 1)
    names = booster.feature_name()
    return TreeEnsemble(
        trees=trees,
        n_features=int(dump["max_feature_idx"]) + 1,
        n_outputs=n_outputs,
        base_score=np.zeros(n_outputs, dtype=np.float64),
        feature_names=tuple(names) if names else None,
        leaf_scale=1.0 / n_iterations if dump.get("average_output") else 1.0,
        link=_LINKS.get(objective, "identity"),
        comparison="<=",
        input_float32=False,
        source="lightgbm",
        capabilities=capabilities,
    )


def leaf_indices(booster: lightgbm.Booster) -> list[npt.NDArray[np.int32]]:
    """Per tree, LightGBM's leaf index of each node of :func:`read_lightgbm`'s tree.

    Returns one int32 array per tree, of length ``n_nodes``, -1 at internal nodes; so
    ``leaf_indices(b)[t][tree_eval.apply(ens, X)[:, t]]`` equals
    ``b.predict(X, pred_leaf=True)[:, t]``.
    """
    out = []
    for info in booster.dump_model()["tree_info"]:
        out.append(np.array([node.get("leaf_index", 0) if "split_feature" not in node else -1
                             for node in _preorder(info["tree_structure"])], dtype=np.int32))
    return out


def _parse_objective(text: str | None) -> tuple[str, dict[str, str]]:
    """``"binary sigmoid:1"`` → ``("binary", {"sigmoid": "1"})``."""
    if not text:
        return "custom", {}
    name, *rest = text.split()
    options = dict(item.split(":", 1) for item in rest if ":" in item)
    return name, options


def _preorder(root: dict[str, Any]) -> list[dict[str, Any]]:
    nodes = []
    stack = [root]
    while stack:
        node = stack.pop()
        nodes.append(node)
        if "split_feature" in node:
            stack.extend((node["right_child"], node["left_child"]))
    return nodes


def _read_tree(root: dict[str, Any], *, output: int) -> Tree:
    nodes = _preorder(root)
    n = len(nodes)
    left = np.full(n, -1, dtype=np.int32)
    right = np.full(n, -1, dtype=np.int32)
    feature = np.full(n, -1, dtype=np.int32)
    threshold = np.zeros(n, dtype=np.float64)
    default_left = np.zeros(n, dtype=bool)
    missing = np.full(n, MISSING_DEFAULT, dtype=np.int8)
    value = np.zeros((n, 1), dtype=np.float64)
    cover = np.zeros(n, dtype=np.float64)
    categories: list[npt.NDArray[np.int64] | None] = [None] * n
    index = {id(node): i for i, node in enumerate(nodes)}

    for i, node in enumerate(nodes):
        if "split_feature" not in node:
            if "leaf_coeff" in node:
                raise NotATreeModel(
                    "this LightGBM model has linear trees (linear_tree=True): its leaves "
                    "are linear models, which the tree methods cannot explain")
            value[i, 0] = float(node["leaf_value"])
            # A single-leaf tree has no count in the dump; it has no split to weigh.
            cover[i] = float(node.get("leaf_count", 0))
            continue
        left[i] = index[id(node["left_child"])]
        right[i] = index[id(node["right_child"])]
        feature[i] = int(node["split_feature"])
        cover[i] = float(node["internal_count"])
        if node["decision_type"] == "==":
            categories[i] = np.array(sorted(int(c) for c in str(node["threshold"]).split("||")),
                                     dtype=np.int64)
            # NaN goes right at LightGBM's categorical splits, whatever the missing type.
            default_left[i] = False
        elif node["decision_type"] == "<=":
            threshold[i] = _effective_threshold(float(node["threshold"]))
            missing[i] = _MISSING[node["missing_type"]]
            default_left[i] = bool(node["default_left"])
        else:
            raise NotATreeModel(f"LightGBM decision type {node['decision_type']!r} is unknown")

    has_categorical = any(c is not None for c in categories)
    return Tree(
        left=left,
        right=right,
        feature=feature,
        threshold=threshold,
        default_left=default_left,
        missing=missing,
        value=value,
        cover=cover,
        output=output,
        categories=tuple(categories) if has_categorical else None,
        category_set_left=np.ones(n, dtype=bool) if has_categorical else None,
    )


def _effective_threshold(t: float) -> float:
    """The float64 threshold that gives LightGBM's decision on the raw input.

    LightGBM reads ``|x| <= _ZERO`` as 0.0, and it puts split thresholds at exactly
    ``-_ZERO`` and ``_ZERO`` to separate negatives, zeros and positives. Away from
    ``[-_ZERO, _ZERO)`` that rewrite changes no decision; inside it, ``x <= t`` on the
    rewritten input equals ``x <= nextafter(-_ZERO, -inf)`` for a negative ``t`` (only
    values below the band go left) and ``x <= _ZERO`` for a non-negative one.
    """
    if -_ZERO <= t < 0.0:
        return float(np.nextafter(-_ZERO, -np.inf))
    if 0.0 <= t < _ZERO:
        return _ZERO
    return t
