"""TreeSHAP on XGBoost's engine against a brute-force oracle and against shap."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math

import numpy as np
import numpy.typing as npt
import pytest
import xgboost

from explainers.progress import Cancelled
from explainers.tree_shap import (
    NotExportable,
    TreeShap,
    TreeShapSummary,
    _abs_sum_rows,
    explain_tree_shap,
)
from models import tree_eval
from models.gpu import xgboost_cuda
from models.readers import read_ensemble
from models.trees import Tree, TreeEnsemble
from tests.models.tree_builders import random_ensemble, rows_on_thresholds

shap = pytest.importorskip("shap")


# Brute-force oracle ---------------------------------------------------------------------

def _expected(tree: Tree, node: int, x: npt.NDArray[np.float64], known: frozenset[int],
              ensemble: TreeEnsemble) -> npt.NDArray[np.float64]:
    """E[tree(x) | x_S] following the covers below every split on a feature not in S."""
    if tree.left[node] < 0:
        return tree.value[node]
    left, right = int(tree.left[node]), int(tree.right[node])
    f = int(tree.feature[node])
    if f in known:
        goes_left = bool(tree_eval.go_left(tree, node, x[f:f + 1], ensemble)[0])
        return _expected(tree, left if goes_left else right, x, known, ensemble)
    return (tree.cover[left] * _expected(tree, left, x, known, ensemble)
            + tree.cover[right] * _expected(tree, right, x, known, ensemble)) / tree.cover[node]


def _game(ensemble: TreeEnsemble, x: npt.NDArray[np.float64], known: frozenset[int]
          ) -> npt.NDArray[np.float64]:
    """v(S) per output, [K]."""
    total = np.zeros(ensemble.n_outputs)
    for tree in ensemble.trees:
        value = _expected(tree, 0, x, known, ensemble)
        if tree.value.shape[1] == 1:
            total[tree.output] += value[0]
        else:
            total += value
    return total * ensemble.leaf_scale + ensemble.base_score


def oracle(ensemble: TreeEnsemble, x: npt.NDArray[np.float64]
           ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """(phi [K, F], Phi [K, F, F], base [K]) from the Shapley and Shapley-interaction
    formulas over all subsets."""
    n = ensemble.n_features
    features = range(n)
    v = {frozenset(s): _game(ensemble, x, frozenset(s))
         for r in range(n + 1) for s in itertools.combinations(features, r)}
    phi = np.zeros((ensemble.n_outputs, n))
    pairs = np.zeros((ensemble.n_outputs, n, n))
    for i in features:
        others = [j for j in features if j != i]
        for r in range(n):
            weight = math.factorial(r) * math.factorial(n - r - 1) / math.factorial(n)
            for s in itertools.combinations(others, r):
                phi[:, i] += weight * (v[frozenset(s) | {i}] - v[frozenset(s)])
        for j in others:
            rest = [m for m in features if m not in (i, j)]
            for r in range(n - 1):
                weight = (math.factorial(r) * math.factorial(n - r - 2)
                          / (2 * math.factorial(n - 1)))
                for s in map(frozenset, itertools.combinations(rest, r)):
                    pairs[:, i, j] += weight * (v[s | {i, j}] - v[s | {i}] - v[s | {j}] + v[s])
        pairs[:, i, i] = phi[:, i] - pairs[:, i, :].sum(axis=1)
    return phi, pairs, v[frozenset()]


def _float32_leaves(ensemble: TreeEnsemble) -> TreeEnsemble:
    """XGBoost stores leaves in float32; give the oracle the same leaves."""
    trees = tuple(dataclasses.replace(t, value=t.value.astype(np.float32).astype(np.float64))
                  for t in ensemble.trees)
    return dataclasses.replace(ensemble, trees=trees)


@pytest.mark.parametrize("case", [
    {"seed": 0, "n_trees": 3, "depth": 3, "n_features": 5},
    {"seed": 1, "n_trees": 2, "depth": 3, "n_features": 4, "categorical": {1: 5},
     "comparison": "<", "missing_as_zero": True},
    {"seed": 2, "n_trees": 3, "depth": 3, "n_features": 4, "n_outputs": 3, "link": "softmax"},
    {"seed": 3, "n_trees": 2, "depth": 3, "n_features": 5, "n_outputs": 2,
     "vector_leaves": True, "leaf_scale": 0.5},
], ids=["numeric", "categorical", "multiclass", "vector_leaves"])
def test_matches_brute_force_oracle(case: dict) -> None:
    ensemble = _float32_leaves(random_ensemble(**case))
    X = rows_on_thresholds(ensemble, np.random.default_rng(case["seed"]), 12,
                           categorical=case.get("categorical"))
    X = X.astype(np.float32).astype(np.float64)
    explainer = TreeShap(ensemble, nthread=1)
    values, interactions = explainer.explain(X, interactions=True)
    k, f = ensemble.n_outputs, ensemble.n_features
    values = values.reshape(len(X), k, f)
    interactions = interactions.reshape(len(X), k, f, f)
    for row, x in enumerate(X):
        phi, pairs, base = oracle(ensemble, x)
        np.testing.assert_allclose(values[row], phi, atol=1e-6)
        np.testing.assert_allclose(interactions[row], pairs, atol=1e-6)
        np.testing.assert_allclose(explainer.base_values, base, atol=1e-6)


# Against shap on real models ----------------------------------------------------------

def _data(n: int = 150, n_features: int = 5, seed: int = 0, nan: float = 0.0
          ) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, n_features)).astype(np.float32).astype(np.float64)
    y = X[:, 0] + X[:, 1] ** 2 + X[:, 2] * X[:, 3] + rng.normal(0, 0.3, n)
    X[rng.random(X.shape) < nan] = np.nan
    return X, y


def _classes(y: np.ndarray, k: int) -> np.ndarray:
    return np.digitize(y, np.quantile(y, np.linspace(0, 1, k + 1)[1:-1]))


def _shap_layout(values: np.ndarray, n_outputs: int) -> np.ndarray:
    """shap puts the output axis last; ours is after the row axis."""
    values = np.asarray(values)
    if n_outputs == 1:
        return values
    return np.moveaxis(values, -1, 1)


def assert_matches_shap(model: object, X: np.ndarray, *, native: object = None,
                        X_native: object = None, interactions: bool = False) -> None:
    ensemble = read_ensemble(native if native is not None else model)
    k = ensemble.n_outputs
    explainer = TreeShap(ensemble, nthread=1)
    values, pair_values = explainer.explain(X, interactions=interactions)
    reference = shap.TreeExplainer(model)
    X_ref = X if X_native is None else X_native
    expected = _shap_layout(reference.shap_values(X_ref), k)
    if k == 1 and expected.ndim == 3:  # shap gives binary boosters one output axis of 1
        expected = expected[..., 0]
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(values, expected, rtol=0, atol=1e-5 * scale)
    np.testing.assert_allclose(explainer.base_values,
                               np.atleast_1d(reference.expected_value).reshape(-1),
                               rtol=0, atol=1e-5 * max(scale, 1.0))
    if interactions:
        expected_pairs = _shap_layout(reference.shap_interaction_values(X_ref), k)
        np.testing.assert_allclose(pair_values, expected_pairs, rtol=0,
                                   atol=1e-5 * float(np.abs(expected_pairs).max()))
    summary = TreeShapSummary(explainer)
    for chunk in explainer.iter_chunks(X, chunk_rows=64):
        summary.add(chunk)
    provenance = summary.summary()["provenance"]
    assert provenance["max_additivity_residual"] <= 1e-4 * provenance["prediction_scale"]


def test_xgboost_regressor_values_and_interactions() -> None:
    X, y = _data(nan=0.05)
    model = xgboost.XGBRegressor(n_estimators=20, max_depth=4, n_jobs=1).fit(X, y)
    assert_matches_shap(model, X, native=model.get_booster(), interactions=True)


def test_xgboost_binary() -> None:
    X, y = _data(seed=1, nan=0.05)
    model = xgboost.XGBClassifier(n_estimators=20, max_depth=4, n_jobs=1).fit(X, y > 0.5)
    assert_matches_shap(model, X, native=model.get_booster())


def test_xgboost_multiclass() -> None:
    X, y = _data(seed=2)
    model = xgboost.XGBClassifier(n_estimators=10, max_depth=3, n_jobs=1).fit(X, _classes(y, 3))
    assert_matches_shap(model, X, native=model.get_booster())


def test_xgboost_export_reproduces_booster_exactly() -> None:
    X, y = _data(seed=3, nan=0.1)
    booster = xgboost.train({"objective": "binary:logistic", "max_depth": 5, "nthread": 1,
                             "base_score": 0.3}, xgboost.DMatrix(X, y > 0.5), 15)
    explainer = TreeShap(read_ensemble(booster), nthread=1)
    values, pairs = explainer.explain(X, interactions=True)
    dmatrix = xgboost.DMatrix(X)
    expected = booster.predict(dmatrix, pred_contribs=True)
    np.testing.assert_allclose(values, expected[:, :-1], rtol=0, atol=1e-6)
    np.testing.assert_allclose(explainer.base_values, expected[0, -1:], rtol=0, atol=1e-6)
    np.testing.assert_allclose(pairs, booster.predict(dmatrix, pred_interactions=True)
                               [:, :-1, :-1], rtol=0, atol=1e-6)


# shap notes that its LightGBM binary output changed form; assert_matches_shap reshapes it
@pytest.mark.filterwarnings("ignore:LightGBM binary classifier with TreeExplainer")
def test_lightgbm_binary_pandas_categorical_with_nans() -> None:
    import lightgbm
    import pandas as pd

    X, y = _data(seed=4, nan=0.05)
    rng = np.random.default_rng(4)
    codes = rng.integers(0, 6, size=X.shape[0]).astype(np.float64)
    codes[rng.random(codes.shape) < 0.1] = np.nan
    y = y + np.isin(codes, [1, 3]) * 1.5
    frame = pd.DataFrame(X, columns=[f"x{i}" for i in range(X.shape[1])])
    frame["c"] = pd.Categorical(codes, categories=np.arange(6.0))
    model = lightgbm.LGBMClassifier(n_estimators=20, num_leaves=8, min_child_samples=5,
                                    min_data_per_group=5, cat_smooth=1, verbose=-1,
                                    n_jobs=1).fit(frame, y > np.median(y))
    assert any(t.has_categorical for t in read_ensemble(model.booster_).trees)
    assert_matches_shap(model, np.column_stack([X, codes]), native=model.booster_,
                        X_native=frame)


def test_lightgbm_multiclass_values_and_interactions() -> None:
    import lightgbm

    X, y = _data(seed=5, nan=0.05)
    model = lightgbm.LGBMClassifier(n_estimators=8, num_leaves=6, min_child_samples=5,
                                    verbose=-1, n_jobs=1).fit(X, _classes(y, 3))
    assert_matches_shap(model, X, native=model.booster_, interactions=True)


def test_random_forest_classifier_values_and_interactions() -> None:
    from sklearn.ensemble import RandomForestClassifier

    X, y = _data(seed=6)
    model = RandomForestClassifier(n_estimators=10, max_depth=6, random_state=0,
                                   n_jobs=1).fit(X, _classes(y, 3))
    assert_matches_shap(model, X, interactions=True)


def test_extra_trees_regressor() -> None:
    from sklearn.ensemble import ExtraTreesRegressor

    X, y = _data(seed=7)
    model = ExtraTreesRegressor(n_estimators=10, max_depth=8, random_state=0,
                                n_jobs=1).fit(X, y)
    assert_matches_shap(model, X)


def test_gradient_boosting_classifier() -> None:
    from sklearn.ensemble import GradientBoostingClassifier

    X, y = _data(seed=8)
    model = GradientBoostingClassifier(n_estimators=20, max_depth=3,
                                       random_state=0).fit(X, y > 0.5)
    assert_matches_shap(model, X)


def test_hist_gradient_boosting_with_nans() -> None:
    from sklearn.ensemble import HistGradientBoostingRegressor

    X, y = _data(seed=9, nan=0.1)
    model = HistGradientBoostingRegressor(max_iter=20, max_depth=4,
                                          random_state=0).fit(X, y)
    assert_matches_shap(model, X)


def test_decision_tree_deep() -> None:
    from sklearn.tree import DecisionTreeRegressor

    X, y = _data(seed=10)
    model = DecisionTreeRegressor(max_depth=12, random_state=0).fit(X, y)
    assert read_ensemble(model).max_depth() > 6
    assert_matches_shap(model, X)


# Chunks, summary, devices ---------------------------------------------------------------

def test_chunks_progress_cancel_and_summary() -> None:
    ensemble = random_ensemble(20, n_trees=5, depth=4, n_outputs=3, link="softmax")
    X = rows_on_thresholds(ensemble, np.random.default_rng(20), 50)
    seen: list[float] = []
    result = explain_tree_shap(ensemble, X, interactions=True, nthread=1, chunk_rows=16,
                               row_index=np.arange(100, 150),
                               progress=lambda fraction, stage: seen.append(fraction))
    assert seen == [0.0, 16 / 50, 32 / 50, 48 / 50, 1.0]
    whole_values, whole_pairs = TreeShap(ensemble, nthread=1).explain(X, interactions=True)
    arrays = result.arrays()
    np.testing.assert_array_equal(arrays["shap_values"], whole_values)
    np.testing.assert_array_equal(arrays["interaction_values"], whole_pairs)
    np.testing.assert_array_equal(arrays["row_index"], np.arange(100, 150))
    assert arrays["shap_values"].shape == (50, 3, 5)
    np.testing.assert_allclose(whole_pairs.sum(axis=3), whole_values, atol=1e-5)

    summary = result.summary()
    json.dumps(summary, allow_nan=False)
    assert summary["n_rows"] == 50 and summary["outputs"] == ["output_0", "output_1", "output_2"]
    totals = [sum(item["mean_abs_shap"]) for item in summary["importance"]]
    assert totals == sorted(totals, reverse=True)
    top = summary["importance"][0]
    i = summary["feature_names"].index(top["feature"])
    np.testing.assert_allclose(top["mean_abs_shap"], np.abs(whole_values[:, :, i]).mean(axis=0),
                               rtol=1e-6)
    np.testing.assert_allclose(summary["interaction_importance"],
                               np.abs(whole_pairs.astype(np.float64)).mean(axis=0), rtol=1e-12)
    provenance = summary["provenance"]
    assert provenance["engine"] == "xgboost" and provenance["device_used"] == "cpu"
    assert provenance["rows_explained"] == 50
    raw = tree_eval.predict_raw(ensemble, X)
    additivity = np.abs(whole_values.sum(axis=2) + TreeShap(ensemble).base_values - raw).max()
    assert additivity <= 1e-4 * np.abs(raw).max()
    assert provenance["max_additivity_residual"] <= 1e-4 * provenance["prediction_scale"]

    def cancel_after_first(fraction: float, stage: str) -> None:
        if fraction > 0:
            raise Cancelled

    chunks = []
    with pytest.raises(Cancelled):
        for chunk in TreeShap(ensemble, nthread=1).iter_chunks(X, chunk_rows=16,
                                                                progress=cancel_after_first):
            chunks.append(chunk.row_start)
    assert chunks == [0]


def test_chunk_size_bounded_by_memory() -> None:
    ensemble = random_ensemble(21, n_features=49)
    explainer = TreeShap(ensemble, nthread=1)
    rows = explainer.chunk_rows_for(interactions=True, memory_limit_bytes=10 << 20)
    assert rows >= 1 and rows * 50 * 50 * 4 <= 10 << 20


def test_invalid_input_is_refused_with_a_sentence() -> None:
    ensemble = random_ensemble(22)
    explainer = TreeShap(ensemble, nthread=1)
    with pytest.raises(ValueError, match="5 columns"):
        explainer.explain(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="infinite"):
        explainer.explain(np.full((3, 5), np.inf))
    tree = ensemble.trees[0]
    broken = dataclasses.replace(ensemble, trees=(dataclasses.replace(
        tree, cover=np.zeros_like(tree.cover)),))
    with pytest.raises(NotExportable, match="tree 0 node 0 has no positive cover"):
        TreeShap(broken)


@pytest.mark.skipif(not xgboost_cuda(), reason="no CUDA GPU")
def test_cuda_equals_cpu() -> None:
    ensemble = random_ensemble(23, n_trees=20, depth=6, n_features=8)
    X = rows_on_thresholds(ensemble, np.random.default_rng(23), 500)
    gpu = TreeShap(ensemble, device="cuda")
    assert gpu.device_used.startswith("cuda")
    cpu_values, cpu_pairs = TreeShap(ensemble, nthread=1).explain(X, interactions=True)
    gpu_values, gpu_pairs = gpu.explain(X, interactions=True)
    np.testing.assert_allclose(gpu_values, cpu_values, rtol=0, atol=1e-5)
    np.testing.assert_allclose(gpu_pairs, cpu_pairs, rtol=0, atol=1e-5)


def test_cuda_request_without_gpu_reports_cpu() -> None:
    if xgboost_cuda():
        pytest.skip("a CUDA GPU is present")
    explainer = TreeShap(random_ensemble(24), device="cuda", nthread=1)
    assert explainer.device_used == "cpu"


# Figures --------------------------------------------------------------------------------

@pytest.mark.parametrize("n_outputs", [1, 3])
def test_figures_render_to_svg_and_png(n_outputs: int) -> None:
    import io

    import matplotlib.pyplot as plt

    from explainers.tree_shap_figures import draw_importance, draw_interactions, draw_summary

    ensemble = random_ensemble(30, n_trees=6, depth=4, n_features=6, n_outputs=n_outputs,
                               link="softmax" if n_outputs > 1 else "identity")
    X = rows_on_thresholds(ensemble, np.random.default_rng(30), 60)
    result = explain_tree_shap(ensemble, X, interactions=True, nthread=1)
    summary, arrays = result.summary(), result.arrays()
    open_before = plt.get_fignums()
    figures = [
        draw_summary(summary, arrays, feature_values=X, max_display=4, output=n_outputs - 1),
        draw_summary(summary, arrays, feature_values=None),
        draw_importance(summary, arrays),
        draw_importance(summary, arrays, max_display=3, output=0),
        draw_interactions(summary, arrays, max_display=5, output=n_outputs - 1),
    ]
    assert plt.get_fignums() == open_before  # nothing drawn into pyplot's global state
    for figure in figures:
        for fmt, magic in (("svg", b"<svg"), ("png", b"\x89PNG")):
            buffer = io.BytesIO()
            figure.savefig(buffer, format=fmt)
            assert magic in buffer.getvalue()[:400] and len(buffer.getvalue()) > 5000
    without = dict(summary, interaction_importance=None)
    with pytest.raises(ValueError, match="interactions=true"):
        draw_interactions(without, arrays)


@pytest.mark.parametrize("rows", [0, 1, 255, 256, 700])
def test_block_sum_of_absolute_values_equals_the_plain_sum(rows):
    a = np.random.default_rng(rows).normal(size=(rows, 2, 7, 7)).astype(np.float32)
    np.testing.assert_allclose(_abs_sum_rows(a), np.abs(a.astype(np.float64)).sum(axis=0),
                               rtol=1e-13, atol=0)
