"""The XGBoost export reaches the same leaves and margins as the reference evaluator."""

from __future__ import annotations

import dataclasses
import importlib.util

import numpy as np
import pytest
import xgboost

from models import tree_eval
from models.trees import MISSING_ZERO, TreeEnsemble
from models.xgboost_export import (
    NotExportable,
    base_margin,
    leaves_from_xgboost,
    to_booster,
    to_xgboost_json,
)
from tests.models.tree_builders import random_ensemble, rows_on_thresholds


def assert_exact(ensemble: TreeEnsemble, X: np.ndarray, *, with_base_margin: bool = True
                 ) -> None:
    """Leaves equal tree_eval.apply; margins equal predict_raw within 1e-5 of scale."""
    booster = to_booster(ensemble, nthread=1)
    dmatrix = xgboost.DMatrix(X, missing=np.nan)
    leaves = leaves_from_xgboost(ensemble, booster.predict(dmatrix, pred_leaf=True))
    np.testing.assert_array_equal(leaves, tree_eval.apply(ensemble, X))
    if with_base_margin:
        dmatrix.set_base_margin(base_margin(ensemble, X.shape[0]))
    margin = booster.predict(dmatrix, output_margin=True).reshape(X.shape[0], -1)
    raw = tree_eval.predict_raw(ensemble, X)
    scale = max(1.0, float(np.abs(raw).max()))
    np.testing.assert_allclose(margin, raw, rtol=0, atol=1e-5 * scale)


@pytest.mark.parametrize("seed", range(4))
def test_le_thresholds_float32_inputs_rows_on_thresholds(seed: int) -> None:
    # scikit-learn's semantics: float32(x) <= t with float64 thresholds not float32-exact
    ensemble = random_ensemble(seed, n_trees=6, depth=5, comparison="<=", input_float32=True)
    X = rows_on_thresholds(ensemble, np.random.default_rng(seed), 400)
    assert_exact(ensemble, X)


def test_row_on_threshold_below_float32_rounding() -> None:
    # float32(0.7) < 0.7: the row float32(0.7) satisfies x <= 0.7 and must go left, which
    # a threshold of float32(0.7) with XGBoost's strict < would get wrong
    assert float(np.float32(0.7)) < 0.7
    ensemble = random_ensemble(0, n_trees=1, depth=1, n_features=1,
                               thresholds=np.array([0.7]))
    x32 = float(np.float32(0.7))
    X = np.array([[x32], [0.7], [float(np.nextafter(np.float32(0.7), np.float32(1)))]])
    np.testing.assert_array_equal(tree_eval.apply(ensemble, X)[:, 0],
                                  [ensemble.trees[0].left[0]] * 2 + [ensemble.trees[0].right[0]])
    assert_exact(ensemble, X)


@pytest.mark.parametrize("seed", range(3))
def test_lightgbm_semantics_float64_le_with_missing_as_zero(seed: int) -> None:
    ensemble = random_ensemble(seed, n_trees=6, depth=5, comparison="<=", input_float32=False,
                               missing_as_zero=True)
    X = rows_on_thresholds(ensemble, np.random.default_rng(seed), 400)
    # float32-representable data: the documented float64 residual cannot occur
    assert_exact(ensemble, X.astype(np.float32).astype(np.float64))


def test_xgboost_semantics_strict_less() -> None:
    thresholds = np.round(np.random.default_rng(3).normal(size=20), 2)
    ensemble = random_ensemble(3, n_trees=5, depth=5, comparison="<",
                               thresholds=thresholds.astype(np.float32).astype(np.float64))
    assert_exact(ensemble, rows_on_thresholds(ensemble, np.random.default_rng(3), 400))


@pytest.mark.parametrize("seed", range(3))
def test_categorical_both_orientations_with_unseen_negative_and_nan(seed: int) -> None:
    categorical = {1: 6, 3: 12}
    ensemble = random_ensemble(seed, n_trees=6, depth=4, categorical=categorical)
    orientations = np.concatenate([t.category_set_left[t.left >= 0] for t in ensemble.trees
                                   if t.category_set_left is not None])
    assert orientations.any() and not orientations.all()
    X = rows_on_thresholds(ensemble, np.random.default_rng(seed), 400, categorical=categorical)
    assert_exact(ensemble, X)


def test_multiclass_softmax_with_per_class_base() -> None:
    ensemble = random_ensemble(5, n_trees=9, depth=4, n_outputs=3, link="softmax")
    X = rows_on_thresholds(ensemble, np.random.default_rng(5), 300)
    assert_exact(ensemble, X)
    # the vector base_score alone reproduces the margin too
    assert_exact(ensemble, X, with_base_margin=False)


def test_vector_leaves_forest_averaging() -> None:
    ensemble = random_ensemble(6, n_trees=5, depth=4, n_outputs=3, vector_leaves=True,
                               leaf_scale=1 / 5)
    X = rows_on_thresholds(ensemble, np.random.default_rng(6), 300)
    assert_exact(ensemble, X)
    assert_exact(ensemble, X, with_base_margin=False)
    model = to_xgboost_json(ensemble)["learner"]["gradient_booster"]["model"]
    assert model["tree_info"] == [0, 1, 2] * 5


def test_deep_preorder_tree_depth_10() -> None:
    ensemble = random_ensemble(7, n_trees=3, depth=10, n_features=6)
    assert ensemble.max_depth() == 10
    X = rows_on_thresholds(ensemble, np.random.default_rng(7), 2000)
    assert_exact(ensemble, X)


def test_breadth_first_layout_right_is_left_plus_one() -> None:
    ensemble = random_ensemble(8, n_trees=2, depth=6)
    for tree in to_xgboost_json(ensemble)["learner"]["gradient_booster"]["model"]["trees"]:
        left = np.array(tree["left_children"])
        right = np.array(tree["right_children"])
        inner = left >= 0
        np.testing.assert_array_equal(right[inner], left[inner] + 1)
        parents = np.array(tree["parents"])
        np.testing.assert_array_equal(parents[left[inner]], np.flatnonzero(inner))


def test_logistic_base_score_without_base_margin() -> None:
    ensemble = dataclasses.replace(random_ensemble(9, link="logistic"),
                                   base_score=np.array([-1.3]))
    assert_exact(ensemble, rows_on_thresholds(ensemble, np.random.default_rng(9), 200),
                 with_base_margin=False)


def test_infinite_threshold() -> None:
    ensemble = random_ensemble(10, n_trees=1, depth=1, n_features=1,
                               thresholds=np.array([np.inf]))
    X = np.array([[1e30], [float(np.finfo(np.float32).max)], [np.nan]])
    assert_exact(ensemble, X)


def test_zero_as_missing_is_refused_with_reason() -> None:
    ensemble = random_ensemble(11, n_trees=2, depth=3)
    tree = ensemble.trees[1]
    missing = tree.missing.copy()
    missing[0] = MISSING_ZERO
    broken = dataclasses.replace(ensemble, trees=(ensemble.trees[0],
                                                  dataclasses.replace(tree, missing=missing)))
    with pytest.raises(NotExportable, match="tree 1 treats zero as missing"):
        to_xgboost_json(broken)


def test_reader_refusal_is_carried() -> None:
    ensemble = dataclasses.replace(random_ensemble(12), capabilities={
        "xgboost_export": False, "xgboost_export_reason": "linear trees"})
    with pytest.raises(NotExportable, match="linear trees"):
        to_booster(ensemble)


# Real models through the readers -------------------------------------------------------

def _reader_available(name: str) -> bool:
    return importlib.util.find_spec(f"models.readers.{name}") is not None


def _data(n: int = 200, n_features: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, n_features)).astype(np.float32).astype(np.float64)
    X[rng.random(X.shape) < 0.05] = np.nan
    y = np.nan_to_num(X[:, 0]) + np.nan_to_num(X[:, 1]) ** 2 + rng.normal(0, 0.3, n)
    return X, y


@pytest.mark.skipif(not _reader_available("xgboost"), reason="models.readers.xgboost missing")
@pytest.mark.parametrize("objective", ["reg:squarederror", "binary:logistic", "multi:softprob"])
def test_xgboost_models_round_trip(objective: str) -> None:
    from models.readers.xgboost import read_xgboost

    X, y = _data()
    params = {"objective": objective, "max_depth": 4, "nthread": 1, "eta": 0.3}
    if objective == "binary:logistic":
        y = (y > np.median(y)).astype(int)
    if objective == "multi:softprob":
        y = np.digitize(y, np.quantile(y, [0.33, 0.66]))
        params["num_class"] = 3
    original = xgboost.train(params, xgboost.DMatrix(X, y), 10)
    ensemble = read_xgboost(original)
    assert_exact(ensemble, X)
    exported = to_booster(ensemble, nthread=1)
    dmatrix = xgboost.DMatrix(X)
    np.testing.assert_allclose(exported.predict(dmatrix, output_margin=True),
                               original.predict(dmatrix, output_margin=True), atol=1e-6)


@pytest.mark.skipif(not _reader_available("lightgbm"), reason="models.readers.lightgbm missing")
def test_lightgbm_categorical_nan_round_trip() -> None:
    import lightgbm
    import pandas as pd

    from models.readers.lightgbm import read_lightgbm

    X, y = _data(seed=1)
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 8, size=X.shape[0]).astype(np.float64)
    codes[rng.random(codes.shape) < 0.1] = np.nan
    y = y + np.isin(codes, [1, 4, 6]) * 2.0
    frame = pd.DataFrame(X, columns=[f"x{i}" for i in range(X.shape[1])])
    frame["c"] = pd.Categorical(codes, categories=np.arange(8.0))
    model = lightgbm.LGBMRegressor(n_estimators=15, num_leaves=8, min_child_samples=5,
                                   min_data_per_group=5, cat_smooth=1, verbose=-1,
                                   n_jobs=1).fit(frame, y)
    ensemble = read_lightgbm(model.booster_)
    assert any(t.has_categorical for t in ensemble.trees)
    X_codes = np.column_stack([X, codes])
    assert_exact(ensemble, X_codes)
    raw = model.booster_.predict(frame, raw_score=True)
    margin = to_booster(ensemble, nthread=1).predict(
        xgboost.DMatrix(X_codes), output_margin=True)
    np.testing.assert_allclose(margin, raw, atol=1e-5 * max(1.0, np.abs(raw).max()))


@pytest.mark.skipif(not _reader_available("sklearn"), reason="models.readers.sklearn missing")
def test_sklearn_deep_random_forest_round_trip() -> None:
    from sklearn.ensemble import RandomForestClassifier

    from models.readers.sklearn import read_sklearn

    X, y = _data(n=300, seed=2)
    X = np.nan_to_num(X)
    labels = np.digitize(y, np.quantile(y, [0.5]))
    model = RandomForestClassifier(n_estimators=5, max_depth=12, random_state=0,
                                   n_jobs=1).fit(X, labels)
    ensemble = read_sklearn(model)
    assert ensemble.max_depth() > 6
    assert_exact(ensemble, X)
    margin = to_booster(ensemble, nthread=1).predict(xgboost.DMatrix(X), output_margin=True)
    np.testing.assert_allclose(margin, model.predict_proba(X), atol=1e-5)
