"""Reference evaluation of a :class:`~models.trees.TreeEnsemble` in float64.

This is the oracle every reader and the XGBoost export are checked against: it follows
the split semantics documented in :mod:`models.trees` literally, one tree at a time,
vectorized over rows. It is exact, not fast.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from models.trees import MISSING_AS_ZERO, MISSING_ZERO, ZERO_BOUND, Tree, TreeEnsemble

__all__ = ["apply", "predict_raw", "go_left"]


def apply(ensemble: TreeEnsemble, X: npt.ArrayLike) -> npt.NDArray[np.int32]:
    """Leaf index reached by every row in every tree, shape [n_rows, n_trees]."""
    X = _as_matrix(X, ensemble)
    out = np.empty((X.shape[0], ensemble.n_trees), dtype=np.int32)
    for t, tree in enumerate(ensemble.trees):
        out[:, t] = _leaves(tree, X, ensemble)
    return out


def predict_raw(ensemble: TreeEnsemble, X: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Raw (margin) output, float64, shape [n_rows, n_outputs]."""
    X = _as_matrix(X, ensemble)
    acc = np.zeros((X.shape[0], ensemble.n_outputs), dtype=np.float64)
    for tree in ensemble.trees:
        leaf_values = tree.value[_leaves(tree, X, ensemble)]
        if tree.value.shape[1] == 1:
            acc[:, tree.output] += leaf_values[:, 0]
        else:
            acc += leaf_values
    return acc * ensemble.leaf_scale + ensemble.base_score[None, :]


def go_left(tree: Tree, node: int, x: npt.NDArray[np.float64], ensemble: TreeEnsemble
            ) -> npt.NDArray[np.bool_]:
    """Whether each value of ``x`` (one feature column) goes left at ``node``."""
    nan = np.isnan(x)
    default = bool(tree.default_left[node])
    categories = tree.categories[node] if tree.categories is not None else None
    if categories is not None:
        assert tree.category_set_left is not None
        set_left = bool(tree.category_set_left[node])
        whole = np.zeros(x.shape, dtype=bool)
        ok = ~nan & (x >= 0) & (x == np.floor(x))
        whole[ok] = np.isin(x[ok].astype(np.int64), categories)
        left = np.where(whole, set_left, not set_left)
        return np.where(nan, default, left)
    mode = int(tree.missing[node])
    v = np.where(nan, 0.0, x) if mode == MISSING_AS_ZERO else x
    thr = tree.threshold[node]
    if ensemble.input_float32:
        v = v.astype(np.float32).astype(np.float64)
    with np.errstate(invalid="ignore"):
        left = v < thr if ensemble.comparison == "<" else v <= thr
    if mode == MISSING_AS_ZERO:
        return left
    zero = np.abs(np.where(nan, 1.0, x)) <= ZERO_BOUND
    to_default = nan | zero if mode == MISSING_ZERO else nan
    return np.where(to_default, default, left)


def _leaves(tree: Tree, X: npt.NDArray[np.float64], ensemble: TreeEnsemble
            ) -> npt.NDArray[np.int32]:
    node = np.zeros(X.shape[0], dtype=np.int32)
    active = np.flatnonzero(tree.left[node] >= 0)
    while active.size:
        current = node[active]
        for n in np.unique(current):
            rows = active[current == n]
            left = go_left(tree, int(n), X[rows, tree.feature[n]], ensemble)
            node[rows] = np.where(left, tree.left[n], tree.right[n])
        active = active[tree.left[node[active]] >= 0]
    return node


def _as_matrix(X: npt.ArrayLike, ensemble: TreeEnsemble) -> npt.NDArray[np.float64]:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] < ensemble.n_features:
        raise ValueError(f"expected a 2-D array with {ensemble.n_features} columns, "
                         f"got shape {X.shape}")
    return X
