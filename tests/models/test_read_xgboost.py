"""read_xgboost against XGBoost itself: leaf reached per tree, and margins.

Probe rows put values exactly on every split threshold and on its float64 and float32
neighbours (and halfway to the next float32 down, which float32 rounding decides), plus
NaNs and every category code, starting from training rows that reach the split node.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pandas as pd
import pytest
import xgboost as xgb

from models import tree_eval
from models.readers import NotATreeModel, read_ensemble
from models.readers.xgboost import read_xgboost
from models.trees import TreeEnsemble

# XGBoost sums float32 leaf values in float32; tree_eval sums the same values in float64.
# Over <= 50 trees the difference measured here stays below 2e-7 of the margin scale.
MARGIN_RTOL = 1e-5


def float32_neighbours(t: float) -> list[float]:
    """The threshold, its float64 and float32 neighbours, and the float32 midpoint below."""
    t32 = np.float32(t)
    below32 = float(np.nextafter(t32, np.float32(-np.inf)))
    return [float(t), float(np.nextafter(t, -np.inf)), float(np.nextafter(t, np.inf)),
            below32, float(np.nextafter(t32, np.float32(np.inf))), (float(t32) + below32) / 2]


def probe_rows(ensemble: TreeEnsemble, X: npt.NDArray[np.float64],
               neighbours: Callable[[float], list[float]], *, rng: np.random.Generator,
               max_nodes: int = 400) -> npt.NDArray[np.float64]:
    """Rows of X edited to sit on split thresholds (or categories, or NaN) of nodes they reach.

    For up to ``max_nodes`` split nodes, a training row that passes through the node is
    copied once per probe value with the node's feature set to that value.
    """
    leaves = tree_eval.apply(ensemble, X)
    rows = [X]
    nodes = [(t, n) for t, tree in enumerate(ensemble.trees)
             for n in np.flatnonzero(tree.left >= 0)]
    for pick in rng.permutation(len(nodes))[:max_nodes]:
        t, n = nodes[pick]
        tree = ensemble.trees[t]
        passing = np.flatnonzero(np.isin(leaves[:, t], _leaves_under(tree, int(n))))
        base = X[rng.choice(passing)] if passing.size else X[rng.integers(X.shape[0])]
        categories = tree.categories[n] if tree.categories is not None else None
        if categories is not None:
            values = [float(c) for c in range(int(np.nanmax(X[:, tree.feature[n]])) + 1)]
        else:
            values = neighbours(float(tree.threshold[n])) + [0.0, -0.0]
        for v in values + [np.nan]:
            row = base.copy()
            row[tree.feature[n]] = v
            rows.append(row[None, :])
    return np.vstack(rows)


def _leaves_under(tree, node: int) -> list[int]:
    out, stack = [], [node]
    while stack:
        n = stack.pop()
        if tree.left[n] < 0:
            out.append(n)
        else:
            stack.extend((int(tree.left[n]), int(tree.right[n])))
    return out


def _xgb_node_ids(booster: xgb.Booster) -> list[npt.NDArray[np.int64]]:
    """Per tree, XGBoost's ids of the nodes reachable from the root, ascending.

    Ascending reachable ids is the numbering read_xgboost documents; a tree without
    deleted nodes maps to itself.
    """
    trees = json.loads(bytes(booster.save_raw("json")))["learner"]["gradient_booster"][
        "model"]["trees"]
    out = []
    for tree in trees:
        left, right = tree["left_children"], tree["right_children"]
        seen, stack = [], [0]
        while stack:
            n = stack.pop()
            seen.append(n)
            if left[n] >= 0:
                stack.extend((right[n], left[n]))
        out.append(np.sort(np.asarray(seen)))
    return out


def _check(booster: xgb.Booster, ens: TreeEnsemble, X: npt.NDArray[np.float64],
           dmatrix: xgb.DMatrix) -> float:
    """Assert leaves and margins agree; return the largest margin error / scale."""
    ours = tree_eval.apply(ens, X)
    theirs = booster.predict(dmatrix, pred_leaf=True).reshape(X.shape[0], -1).astype(np.int64)
    ids = _xgb_node_ids(booster)
    mapped = np.column_stack([ids[t][ours[:, t]] for t in range(ens.n_trees)])
    assert mapped.shape == theirs.shape
    mismatch = np.argwhere(mapped != theirs)
    assert mismatch.size == 0, f"{len(mismatch)} (row, tree) pairs differ, first {mismatch[:3]}"
    margin = booster.predict(dmatrix, output_margin=True).reshape(X.shape[0], ens.n_outputs)
    raw = tree_eval.predict_raw(ens, X)
    scale = max(1.0, float(np.abs(margin).max()))
    err = float(np.abs(raw - margin).max()) / scale
    assert err <= MARGIN_RTOL, err
    return err


def _numeric_data(n: int, p: int, *, seed: int, nan_rate: float = 0.1):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, p))
    X[:, 1] = np.round(X[:, 1], 1)  # ties and values exactly on thresholds
    y = X[:, 0] + np.sin(3 * X[:, 1]) + 0.5 * X[:, 2] * X[:, 3] + 0.1 * rng.normal(size=n)
    X[rng.random(X.shape) < nan_rate] = np.nan
    return X, y, rng


@pytest.mark.filterwarnings("ignore:.*booster=dart. is deprecated")
@pytest.mark.parametrize(("objective", "depth", "extra"), [
    ("reg:squarederror", 8, {}),
    ("binary:logistic", 4, {}),
    ("multi:softprob", 3, {"num_class": 3}),
    ("reg:squarederror", 4, {"tree_method": "exact", "gamma": 2.0}),  # pruned: deleted nodes
    ("reg:squarederror", 3, {"rate_drop": 0.5, "booster": "dart"}),
    ("reg:squarederror", 3, {"num_parallel_tree": 3, "subsample": 0.7,
                             "colsample_bynode": 0.7}),
])
def test_numeric_models_match_xgboost(objective: str, depth: int, extra: dict) -> None:
    X, y, rng = _numeric_data(500, 5, seed=depth)
    if objective == "binary:logistic":
        y = (y > 0.3).astype(float)
    elif objective.startswith("multi"):
        y = np.digitize(y, [-0.5, 0.7]).astype(float)
    params = {"objective": objective, "max_depth": depth, "eta": 0.3, "nthread": 1,
              "seed": 0, **extra}
    booster = xgb.train(params, xgb.DMatrix(X, y), num_boost_round=12)
    ens = read_xgboost(booster)
    assert ens.n_trees == 12 * ens.n_outputs * extra.get("num_parallel_tree", 1)
    assert ens.n_outputs == (3 if objective.startswith("multi") else 1)
    assert ens.link == {"reg:squarederror": "identity", "binary:logistic": "logistic",
                        "multi:softprob": "softmax"}[objective]
    assert ens.capabilities["xgboost_export"] is True
    if depth == 8:
        assert ens.max_depth() == 8
    X_probe = probe_rows(ens, X, float32_neighbours, rng=rng)
    _check(booster, ens, X_probe, xgb.DMatrix(X_probe))


def test_pruned_trees_drop_deleted_nodes() -> None:
    X, y, _ = _numeric_data(300, 5, seed=1)
    booster = xgb.train({"tree_method": "exact", "gamma": 2.0, "max_depth": 4, "nthread": 1},
                        xgb.DMatrix(X, y), num_boost_round=5)
    trees = json.loads(bytes(booster.save_raw("json")))["learner"]["gradient_booster"][
        "model"]["trees"]
    assert sum(int(t["tree_param"]["num_deleted"]) for t in trees) > 0
    ens = read_xgboost(booster)
    for tree, ids in zip(ens.trees, _xgb_node_ids(booster), strict=True):
        assert tree.n_nodes == ids.size
        assert ((tree.left < 0) | (tree.left > np.arange(tree.n_nodes))).all()


def test_categorical_model_matches_xgboost() -> None:
    rng = np.random.default_rng(3)
    n = 600
    colour = rng.integers(0, 8, n)
    df = pd.DataFrame({
        "colour": pd.Categorical.from_codes(colour, categories=list("abcdefgh")),
        "size": rng.normal(size=n),
        "shape": pd.Categorical.from_codes(rng.integers(0, 3, n), categories=["o", "x", "v"]),
    })
    y = ((np.isin(colour, [1, 4, 6]) + df["size"].to_numpy()
          + 0.3 * rng.normal(size=n)) > 0.8).astype(float)
    df.loc[rng.random(n) < 0.08, "colour"] = np.nan
    df.loc[rng.random(n) < 0.08, "size"] = np.nan
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 4, "nthread": 1,
                         "max_cat_to_onehot": 1, "seed": 0},
                        xgb.DMatrix(df, y, enable_categorical=True), num_boost_round=10)
    ens = read_xgboost(booster)
    assert ens.feature_names == ("colour", "size", "shape")
    assert any(t.has_categorical for t in ens.trees)

    codes = _codes(df)
    X_probe = probe_rows(ens, codes, float32_neighbours, rng=rng)
    frame = pd.DataFrame({
        name: (pd.Categorical.from_codes(np.nan_to_num(X_probe[:, j], nan=-1).astype(int),
                                         categories=df[name].cat.categories)
               if isinstance(df[name].dtype, pd.CategoricalDtype) else X_probe[:, j])
        for j, name in enumerate(df.columns)})
    _check(booster, ens, X_probe, xgb.DMatrix(frame, enable_categorical=True))


def _codes(df: pd.DataFrame) -> npt.NDArray[np.float64]:
    """Category codes as floats, NaN for a missing category (what XGBoost sees)."""
    cols = []
    for name in df.columns:
        if isinstance(df[name].dtype, pd.CategoricalDtype):
            c = df[name].cat.codes.to_numpy().astype(np.float64)
            cols.append(np.where(c < 0, np.nan, c))
        else:
            cols.append(df[name].to_numpy(dtype=np.float64))
    return np.column_stack(cols)


@pytest.mark.parametrize("objective", [
    "binary:logitraw", "reg:logistic", "binary:hinge", "count:poisson", "reg:gamma",
    "reg:tweedie", "reg:absoluteerror", "reg:pseudohubererror", "survival:cox",
    "survival:aft", "reg:quantileerror", "rank:ndcg",
])
def test_base_score_reaches_margin_space(objective: str) -> None:
    rng = np.random.default_rng(5)
    X = rng.normal(size=(240, 3))
    y = np.exp(0.5 * X[:, 0]) * rng.gamma(2.0, size=240) + 0.05
    if objective in ("binary:logitraw", "binary:hinge"):
        y = (X[:, 0] + 0.5 * rng.normal(size=240) > 0.2).astype(float)
    elif objective == "reg:logistic":
        y = 1 / (1 + np.exp(-X[:, 0]))
    elif objective == "rank:ndcg":
        y = rng.integers(0, 3, 240).astype(float)
    dtrain = xgb.DMatrix(X, y)
    params: dict[str, object] = {"objective": objective, "max_depth": 3, "nthread": 1}
    if objective == "survival:aft":
        dtrain.set_float_info("label_lower_bound", y)
        dtrain.set_float_info("label_upper_bound", np.where(rng.random(240) < 0.3, np.inf, y))
    elif objective == "reg:quantileerror":
        params["quantile_alpha"] = [0.2, 0.8]
    elif objective == "rank:ndcg":
        dtrain.set_group([80, 80, 80])
    booster = xgb.train(params, dtrain, num_boost_round=5)
    ens = read_xgboost(booster)
    assert ens.n_outputs == (2 if objective == "reg:quantileerror" else 1)
    if objective in ("count:poisson", "reg:gamma", "reg:tweedie", "survival:cox",
                     "survival:aft"):
        assert ens.capabilities["prediction_transform"] == "exp"
    _check(booster, ens, X, xgb.DMatrix(X))


def test_feature_names_and_dispatch() -> None:
    X, y, _ = _numeric_data(200, 4, seed=2)
    dtrain = xgb.DMatrix(X, y, feature_names=["age", "income", "tenure", "visits"])
    booster = xgb.train({"max_depth": 2, "nthread": 1}, dtrain, num_boost_round=3)
    ens = read_ensemble(booster)
    assert ens.source == "xgboost"
    assert ens.feature_names == ("age", "income", "tenure", "visits")
    assert ens.n_features == 4
    assert (ens.comparison, ens.input_float32) == ("<", True)
    unnamed = read_xgboost(xgb.train({"max_depth": 2, "nthread": 1}, xgb.DMatrix(X, y), 2))
    assert unnamed.feature_names is None


@pytest.mark.filterwarnings("ignore:.*booster=gblinear. is deprecated")
def test_linear_booster_is_refused() -> None:
    X, y, _ = _numeric_data(100, 4, seed=4, nan_rate=0.0)
    booster = xgb.train({"booster": "gblinear", "nthread": 1}, xgb.DMatrix(X, y), 2)
    with pytest.raises(NotATreeModel, match="linear booster"):
        read_xgboost(booster)


def test_vector_leaf_trees_are_refused() -> None:
    X, y, _ = _numeric_data(150, 4, seed=6, nan_rate=0.0)
    booster = xgb.train({"multi_strategy": "multi_output_tree", "tree_method": "hist",
                         "max_depth": 2, "nthread": 1},
                        xgb.DMatrix(X, np.column_stack([y, -y])), num_boost_round=2)
    with pytest.raises(NotATreeModel, match="vector-leaf"):
        read_xgboost(booster)
