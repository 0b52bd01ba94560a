"""Hand-built tree ensembles for the export and TreeSHAP tests (no library involved)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from models.trees import MISSING_AS_ZERO, MISSING_DEFAULT, Tree, TreeEnsemble


def random_tree(rng: np.random.Generator, *, depth: int, n_features: int,
                thresholds: npt.NDArray[np.float64], n_values: int = 1, output: int = 0,
                missing_as_zero: bool = False, categorical: dict[int, int] | None = None,
                leaf_probability: float = 0.15) -> Tree:
    """A random tree numbered in preorder (left subtree first), as scikit-learn and the
    LightGBM reader number theirs, so the export's breadth-first renumbering is needed.

    thresholds: pool the numeric thresholds are drawn from (put data values in it so rows
    land exactly on thresholds). categorical: feature -> number of category codes; those
    features get set splits in random orientation. Covers are consistent (a parent's
    cover is the sum of its children's).
    """
    categorical = categorical or {}
    left: list[int] = []
    right: list[int] = []
    feature: list[int] = []
    threshold: list[float] = []
    default_left: list[bool] = []
    missing: list[int] = []
    value: list[npt.NDArray[np.float64]] = []
    cover: list[float] = []
    categories: list[npt.NDArray[np.int64] | None] = []
    set_left: list[bool] = []

    def grow(level: int) -> int:
        node = len(left)
        left.append(-1)
        right.append(-1)
        feature.append(-1)
        threshold.append(0.0)
        default_left.append(bool(rng.random() < 0.5))
        missing.append(MISSING_DEFAULT)
        value.append(rng.normal(size=n_values))
        cover.append(float(rng.integers(1, 20)))
        categories.append(None)
        set_left.append(False)
        if level == depth or (level > 0 and rng.random() < leaf_probability):
            return node
        f = int(rng.integers(n_features))
        feature[node] = f
        if f in categorical:
            n_codes = categorical[f]
            size = int(rng.integers(1, max(2, n_codes)))
            categories[node] = np.sort(rng.choice(n_codes, size=size, replace=False)
                                       ).astype(np.int64)
            set_left[node] = bool(rng.random() < 0.5)
        else:
            threshold[node] = float(rng.choice(thresholds))
            if missing_as_zero and rng.random() < 0.5:
                missing[node] = MISSING_AS_ZERO
        left[node] = grow(level + 1)
        right[node] = grow(level + 1)
        cover[node] = cover[left[node]] + cover[right[node]]
        return node

    grow(0)
    has_cats = any(c is not None for c in categories)
    return Tree(
        left=np.array(left, dtype=np.int32),
        right=np.array(right, dtype=np.int32),
        feature=np.array(feature, dtype=np.int32),
        threshold=np.array(threshold, dtype=np.float64),
        default_left=np.array(default_left, dtype=bool),
        missing=np.array(missing, dtype=np.int8),
        value=np.array(value, dtype=np.float64),
        cover=np.array(cover, dtype=np.float64),
        output=output,
        categories=tuple(categories) if has_cats else None,
        category_set_left=np.array(set_left, dtype=bool) if has_cats else None,
    )


def random_ensemble(seed: int, *, n_trees: int = 4, depth: int = 4, n_features: int = 5,
                    n_outputs: int = 1, vector_leaves: bool = False,
                    link: str = "identity", comparison: str = "<=",
                    input_float32: bool = True, leaf_scale: float = 1.0,
                    missing_as_zero: bool = False,
                    categorical: dict[int, int] | None = None,
                    thresholds: npt.NDArray[np.float64] | None = None) -> TreeEnsemble:
    rng = np.random.default_rng(seed)
    pool = thresholds if thresholds is not None else np.round(rng.normal(size=20), 2)
    trees = tuple(
        random_tree(rng, depth=depth, n_features=n_features, thresholds=pool,
                    n_values=n_outputs if vector_leaves else 1,
                    output=0 if vector_leaves else t % n_outputs,
                    missing_as_zero=missing_as_zero, categorical=categorical)
        for t in range(n_trees))
    return TreeEnsemble(
        trees=trees, n_features=n_features, n_outputs=n_outputs,
        base_score=rng.normal(size=n_outputs), leaf_scale=leaf_scale,
        link=link,  # type: ignore[arg-type]
        comparison=comparison,  # type: ignore[arg-type]
        input_float32=input_float32, source="test")


def rows_on_thresholds(ensemble: TreeEnsemble, rng: np.random.Generator, n_rows: int,
                       *, nan_fraction: float = 0.1,
                       categorical: dict[int, int] | None = None) -> npt.NDArray[np.float64]:
    """Rows whose numeric values are mostly the ensemble's thresholds (and their float32
    neighbours), with NaNs, zeros and, for categorical features, codes in and beyond the
    trees' range plus negatives."""
    categorical = categorical or {}
    thresholds = np.unique(np.concatenate(
        [t.threshold[t.left >= 0] for t in ensemble.trees] + [np.array([0.0])]))
    t32 = thresholds.astype(np.float32)
    pool = np.concatenate([thresholds, t32, np.nextafter(t32, np.float32(np.inf)),
                           np.nextafter(t32, np.float32(-np.inf)), [0.0, -0.0]])
    X = rng.choice(pool, size=(n_rows, ensemble.n_features)).astype(np.float64)
    for f, n_codes in categorical.items():
        X[:, f] = rng.integers(-1, n_codes + 2, size=n_rows)
    X[rng.random(X.shape) < nan_fraction] = np.nan
    return X
