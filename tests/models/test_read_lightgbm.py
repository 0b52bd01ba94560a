"""read_lightgbm against LightGBM itself: leaf reached per tree, and raw scores.

Probe rows (see test_read_xgboost.probe_rows) sit on every split threshold and its
neighbours, on zeros, NaNs and every category code. LightGBM evaluates in float64, so
raw scores must agree to float64 summation noise.
"""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import numpy.typing as npt
import pandas as pd
import pytest

from models import tree_eval
from models.readers import NotATreeModel, read_ensemble
from models.readers.lightgbm import leaf_indices, read_lightgbm
from models.trees import MISSING_AS_ZERO, MISSING_DEFAULT, MISSING_ZERO, TreeEnsemble
from tests.models.test_read_xgboost import float32_neighbours, probe_rows

RAW_RTOL = 1e-9

_BASE = {"verbose": -1, "num_threads": 1, "seed": 0, "deterministic": True,
         "min_data_in_leaf": 5, "learning_rate": 0.2}


def _check(booster: lgb.Booster, ens: TreeEnsemble, X: npt.NDArray[np.float64],
           data: object, *, n_averaged: int = 1) -> float:
    """Assert leaves and raw scores agree; return the largest relative raw error.

    ``n_averaged``: the number of iterations an ``average_output`` model averages over;
    LightGBM's ``raw_score`` is their sum, the ensemble's raw output their mean.
    """
    ours = tree_eval.apply(ens, X)
    theirs = booster.predict(data, pred_leaf=True).reshape(X.shape[0], -1)
    ids = leaf_indices(booster)
    mapped = np.column_stack([ids[t][ours[:, t]] for t in range(ens.n_trees)])
    assert mapped.shape == theirs.shape
    mismatch = np.argwhere(mapped != theirs)
    assert mismatch.size == 0, f"{len(mismatch)} (row, tree) pairs differ, first {mismatch[:3]}"
    raw_lgb = booster.predict(data, raw_score=True).reshape(X.shape[0], ens.n_outputs)
    raw_lgb = raw_lgb / n_averaged
    raw = tree_eval.predict_raw(ens, X)
    scale = max(1.0, float(np.abs(raw_lgb).max()))
    err = float(np.abs(raw - raw_lgb).max()) / scale
    assert err <= RAW_RTOL, err
    return err


def _numeric_data(n: int, *, seed: int):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 5))
    X[:, 1] = np.round(X[:, 1], 1)
    X[:, 4] = np.where(rng.random(n) < 0.3, 0.0, X[:, 4])  # zeros for the missing modes
    y = X[:, 0] + np.sin(3 * X[:, 1]) + 0.5 * X[:, 2] * X[:, 3] + X[:, 4] ** 2
    X[rng.random(X.shape) < 0.1] = np.nan
    return X, y + 0.1 * rng.normal(size=n), rng


@pytest.mark.parametrize(("objective", "extra"), [
    ("regression", {"num_leaves": 31}),
    ("multiclass", {"num_class": 3, "num_leaves": 8}),
    ("regression", {"num_leaves": 12, "zero_as_missing": True}),
    ("regression", {"num_leaves": 12, "use_missing": False}),
    ("regression", {"boosting": "rf", "bagging_fraction": 0.7, "bagging_freq": 1,
                    "num_leaves": 12}),
])
def test_numeric_models_match_lightgbm(objective: str, extra: dict) -> None:
    X, y, rng = _numeric_data(500, seed=len(extra))
    if objective == "multiclass":
        y = np.digitize(y, [-0.3, 1.0]).astype(float)
    booster = lgb.train({**_BASE, "objective": objective, **extra}, lgb.Dataset(X, y),
                        num_boost_round=12)
    ens = read_lightgbm(booster)
    assert ens.n_outputs == (3 if objective == "multiclass" else 1)
    assert ens.n_trees == 12 * ens.n_outputs
    assert ens.link == ("softmax" if objective == "multiclass" else "identity")
    modes = np.concatenate([t.missing[t.left >= 0] for t in ens.trees])
    if extra.get("zero_as_missing"):
        assert (modes == MISSING_ZERO).any()
        assert ens.capabilities["xgboost_export"] is False
        assert "zero" in str(ens.capabilities["xgboost_export_reason"])
    else:
        assert not (modes == MISSING_ZERO).any()
        assert ens.capabilities["xgboost_export"] is True
        if extra.get("use_missing") is False:
            assert (modes == MISSING_AS_ZERO).all()
        else:
            assert (modes == MISSING_DEFAULT).any()
    n_averaged = 1
    if extra.get("boosting") == "rf":
        assert ens.leaf_scale == pytest.approx(1 / 12)
        n_averaged = 12
        np.testing.assert_allclose(tree_eval.predict_raw(ens, X)[:, 0], booster.predict(X),
                                   rtol=RAW_RTOL)
    X_probe = probe_rows(ens, X, float32_neighbours, rng=rng)
    _check(booster, ens, X_probe, X_probe, n_averaged=n_averaged)


def test_zero_as_missing_band_below_float32_epsilon() -> None:
    X, y, rng = _numeric_data(500, seed=2)
    booster = lgb.train({**_BASE, "objective": "regression", "num_leaves": 12,
                         "zero_as_missing": True}, lgb.Dataset(X, y), num_boost_round=12)
    ens = read_lightgbm(booster)
    X_band = np.where(rng.random(X.shape) < 0.3, float(np.float32(1e-35)), X)
    _check(booster, ens, X_band, X_band)


def test_binary_pandas_categorical_with_nans() -> None:
    rng = np.random.default_rng(7)
    n = 800
    colour = rng.integers(0, 10, n)
    df = pd.DataFrame({
        "size": rng.normal(size=n),
        "colour": pd.Categorical.from_codes(colour, categories=[f"c{i}" for i in range(10)]),
        "weight": rng.normal(size=n),
        "shape": pd.Categorical.from_codes(rng.integers(0, 4, n), categories=list("abcd")),
    })
    y = ((np.isin(colour, [1, 4, 6, 8]) + df["size"].to_numpy()
          + 0.3 * rng.normal(size=n)) > 0.8).astype(int)
    df.loc[rng.random(n) < 0.08, "colour"] = np.nan
    df.loc[rng.random(n) < 0.08, "size"] = np.nan
    booster = lgb.train({**_BASE, "objective": "binary", "num_leaves": 10,
                         "min_data_per_group": 5, "cat_smooth": 1.0, "max_cat_to_onehot": 2},
                        lgb.Dataset(df, y), num_boost_round=15)
    ens = read_lightgbm(booster)
    assert ens.feature_names == ("size", "colour", "weight", "shape")
    assert ens.link == "logistic" and ens.capabilities["sigmoid"] == 1.0
    assert any(t.has_categorical for t in ens.trees)

    codes = np.column_stack([
        np.where(df[c].cat.codes < 0, np.nan, df[c].cat.codes).astype(np.float64)
        if isinstance(df[c].dtype, pd.CategoricalDtype) else df[c].to_numpy(np.float64)
        for c in df.columns])
    X_probe = probe_rows(ens, codes, float32_neighbours, rng=rng)
    frame = pd.DataFrame({
        name: (pd.Categorical.from_codes(np.nan_to_num(X_probe[:, j], nan=-1).astype(int),
                                         categories=df[name].cat.categories)
               if isinstance(df[name].dtype, pd.CategoricalDtype) else X_probe[:, j])
        for j, name in enumerate(df.columns)})
    _check(booster, ens, X_probe, frame)


def test_numpy_categorical_negative_and_unseen_codes() -> None:
    rng = np.random.default_rng(11)
    n = 600
    X = np.column_stack([rng.integers(0, 12, n).astype(float), rng.normal(size=n)])
    y = np.digitize(np.isin(X[:, 0], [2, 3, 7]) + X[:, 1], [0.0, 1.0]).astype(float)
    X[rng.random(n) < 0.1, 0] = np.nan
    booster = lgb.train({**_BASE, "objective": "multiclass", "num_class": 3, "num_leaves": 6,
                         "min_data_per_group": 5, "cat_smooth": 1.0},
                        lgb.Dataset(X, y, categorical_feature=[0]), num_boost_round=8)
    ens = read_lightgbm(booster)
    X_probe = probe_rows(ens, X, float32_neighbours, rng=rng)
    odd = X_probe[rng.choice(X_probe.shape[0], 40)].copy()
    odd[:, 0] = np.tile([-1.0, -3.0, 12.0, 40.0], 10)  # negative and never-seen codes
    X_probe = np.vstack([X_probe, odd])
    _check(booster, ens, X_probe, X_probe)


def test_sigmoid_and_dispatch() -> None:
    X, y, _ = _numeric_data(300, seed=3)
    booster = lgb.train({**_BASE, "objective": "binary", "sigmoid": 2.0, "num_leaves": 6},
                        lgb.Dataset(X, (y > 0.5).astype(int),
                                    feature_name=["a", "b", "c", "d", "e"]),
                        num_boost_round=5)
    ens = read_ensemble(booster)
    assert ens.source == "lightgbm"
    assert ens.feature_names == ("a", "b", "c", "d", "e")
    assert (ens.comparison, ens.input_float32) == ("<=", False)
    assert ens.capabilities["sigmoid"] == 2.0
    raw = tree_eval.predict_raw(ens, X)[:, 0]
    np.testing.assert_allclose(1 / (1 + np.exp(-2.0 * raw)), booster.predict(X), rtol=1e-12)


def test_linear_trees_are_refused() -> None:
    X, y, _ = _numeric_data(300, seed=4)
    booster = lgb.train({**_BASE, "objective": "regression", "linear_tree": True,
                         "num_leaves": 4}, lgb.Dataset(X, y), num_boost_round=3)
    with pytest.raises(NotATreeModel, match="linear trees"):
        read_lightgbm(booster)
