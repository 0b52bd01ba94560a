"""The normalized tree ensemble: one array form for every tree model tabxai reads.

Every reader (XGBoost, LightGBM, scikit-learn) produces a :class:`TreeEnsemble`; every
method that needs trees (TreeSHAP through the XGBoost export, Feature Vectors, tree-aware
permutation importance) reads only this form. Node arrays follow scikit-learn's
``tree_`` layout: one entry per node, node 0 is the root, ``left[i] == -1`` at a leaf.

Split semantics per node (see shared/methods/tree_export.md):

- numeric split: go left when ``x < threshold`` (``comparison == "<"``) or
  ``x <= threshold`` (``comparison == "<="``); when ``input_float32`` is true, ``x`` is
  rounded to float32 before the comparison (XGBoost, scikit-learn), otherwise compared in
  float64 (LightGBM).
- missing values: ``missing[i]`` says what a NaN (and, for ``MISSING_ZERO``, a zero) does:
  ``MISSING_DEFAULT``: NaN goes to the default child (``default_left[i]``);
  ``MISSING_AS_ZERO``: NaN is replaced by 0.0 and compared (LightGBM missing type None);
  ``MISSING_ZERO``: NaN and ``|x| <= ZERO_BOUND`` (float32(1e-35), LightGBM's kZeroThreshold)
  go to the default child (LightGBM missing type Zero).
- categorical split (``categories[i]`` is not None): the value is a category code; codes
  in the set ``categories[i]`` go left when ``category_set_left[i]`` is true (LightGBM)
  and right when false (XGBoost); every other code — unlisted, negative, non-integer —
  goes the other way; NaN goes to the default child.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

MISSING_DEFAULT = 0
MISSING_AS_ZERO = 1
MISSING_ZERO = 2
# LightGBM treats |x| <= float32(1e-35) as zero; the bound must be that float32, widened.
ZERO_BOUND = float(np.float32(1e-35))

Comparison = Literal["<", "<="]
Link = Literal["identity", "logistic", "softmax"]


@dataclass(frozen=True, eq=False)
class Tree:
    """One tree. Arrays have one entry per node (``n_nodes``).

    left, right: int32 child indices, -1 at leaves.
    feature: int32 split feature (model column index), -1 at leaves.
    threshold: float64 split threshold (unused at leaves and categorical nodes).
    default_left: bool, where a missing value goes.
    missing: int8, one of MISSING_DEFAULT, MISSING_AS_ZERO, MISSING_ZERO.
    value: float64 [n_nodes, k] leaf values (k = 1, or n_outputs for vector leaves);
        only leaf rows are meaningful. Already multiplied by any learning rate, but not by
        the ensemble's ``leaf_scale``.
    cover: float64 [n_nodes], the training weight reaching each node (TreeSHAP's cover).
    output: the model output this tree adds to when ``value.shape[1] == 1`` (class index
        for multiclass boosting, 0 otherwise); ignored for vector leaves.
    categories: per node, None for numeric splits, else a sorted int64 array of codes.
    category_set_left: bool [n_nodes], whether the listed codes go left.
    """

    left: npt.NDArray[np.int32]
    right: npt.NDArray[np.int32]
    feature: npt.NDArray[np.int32]
    threshold: npt.NDArray[np.float64]
    default_left: npt.NDArray[np.bool_]
    missing: npt.NDArray[np.int8]
    value: npt.NDArray[np.float64]
    cover: npt.NDArray[np.float64]
    output: int = 0
    categories: tuple[npt.NDArray[np.int64] | None, ...] | None = None
    category_set_left: npt.NDArray[np.bool_] | None = None

    @property
    def n_nodes(self) -> int:
        return int(self.left.shape[0])

    @property
    def is_leaf(self) -> npt.NDArray[np.bool_]:
        return self.left < 0

    @property
    def has_categorical(self) -> bool:
        return self.categories is not None and any(c is not None for c in self.categories)

    def depth(self) -> int:
        """Number of edges on the longest root-to-leaf path (a stump has depth 1)."""
        depths = np.zeros(self.n_nodes, dtype=np.int64)
        best = 0
        for i in range(self.n_nodes):  # parents precede children in every reader's order
            if self.left[i] >= 0:
                d = depths[i] + 1
                depths[self.left[i]] = d
                depths[self.right[i]] = d
                best = max(best, int(d))
        return best


@dataclass(frozen=True, eq=False)
class TreeEnsemble:
    """A tree ensemble in raw output space.

    raw(x)[k] = base_score[k] + leaf_scale * sum over trees t adding to output k of the
    value of the leaf x reaches in t. ``link`` maps raw output to the model's
    probability/prediction space (identity for regression and for forests of class
    fractions, logistic for binary boosting, softmax for multiclass boosting).

    n_outputs: 1 for regression and binary boosting, K for multiclass boosting and for
        classifier forests whose leaves hold K class fractions (binary forests included).
    comparison / input_float32: the numeric split test of every node (module docstring).
    source: the library the ensemble was read from ("xgboost", "lightgbm", "sklearn").
    capabilities: what this ensemble supports, e.g. {"xgboost_export": True} or
        {"xgboost_export": False, "xgboost_export_reason": "…"}.
    """

    trees: tuple[Tree, ...]
    n_features: int
    n_outputs: int
    base_score: npt.NDArray[np.float64]
    feature_names: tuple[str, ...] | None = None
    leaf_scale: float = 1.0
    link: Link = "identity"
    comparison: Comparison = "<"
    input_float32: bool = True
    source: str = ""
    capabilities: dict[str, object] = field(default_factory=dict)

    @property
    def n_trees(self) -> int:
        return len(self.trees)

    def max_depth(self) -> int:
        return max((t.depth() for t in self.trees), default=0)

    def n_leaves(self) -> int:
        return int(sum(int(t.is_leaf.sum()) for t in self.trees))
