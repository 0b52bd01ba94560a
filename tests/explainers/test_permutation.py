"""Permutation importance against scikit-learn, a closed form, and its own invariants."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import lightgbm
import numpy as np
import onnxruntime
import pytest
import skops.io
import xgboost
from skl2onnx import to_onnx
from sklearn.ensemble import RandomForestClassifier
from sklearn.inspection import permutation_importance as sklearn_permutation_importance
from sklearn.linear_model import LinearRegression
from sklearn.neural_network import MLPClassifier, MLPRegressor

from explainers import permutation
from explainers.permutation import (
    PermutationParams,
    PermutationParamsError,
    ScorerNotApplicable,
    UnknownFeature,
    UnknownScorer,
    permutation_importance,
    run_permutation_importance,
    validate_permutation_params,
)
from explainers.permutation_figures import draw_importance
from explainers.progress import Cancelled
from models.loaded import LoadedModel
from models.loading import load_model
from tests.onnx_reference import OnnxClassifier, OnnxRegressor, onnx_file

TOL = 1e-9
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def saved(path: Path, fmt: str, **options: Any) -> LoadedModel:
    """The LoadedModel the service would build from the file at ``path``."""
    return load_model(path, format=fmt, n_threads=1, **options)


class BaseProtocolModel:
    """The parts of ``models.capabilities.PredictiveModel`` every fake here shares: it
    declares no capability, computes in float64 and runs on the CPU only."""

    n_outputs = 1
    input_dtype = np.dtype(np.float64)
    capabilities: frozenset[str] = frozenset()
    serial_predict = False
    probability_dtype = np.dtype(np.float64)

    def place(self, device: str) -> str:
        return "cpu"


class EstimatorModel(BaseProtocolModel):
    """The base protocol over a fitted scikit-learn-API estimator, without trees."""

    def __init__(self, estimator: Any, task: str) -> None:
        self.estimator = estimator
        self.task = task
        self.classes = None if task == "regression" else list(estimator.classes_)
        self.n_features = int(estimator.n_features_in_)

    def predict(self, X: np.ndarray, *, output: str = "raw", device: str = "cpu",
                batch_rows: int | None = None) -> np.ndarray:
        if output == "probability":
            return np.asarray(self.estimator.predict_proba(X), dtype=np.float64)
        prediction = np.asarray(self.estimator.predict(X))
        if self.task == "regression":
            return prediction.astype(np.float64)
        return np.searchsorted(np.asarray(self.classes), prediction).astype(np.int64)


def assert_same_as_sklearn(model: Any, estimator: Any, X: np.ndarray, y: np.ndarray,
                           scoring: str, path: str = "auto", **options: Any) -> None:
    names = [f"x{j}" for j in range(X.shape[1])]
    ours = permutation_importance(model, X, y, scoring=scoring, feature_names=names,
                                  n_jobs=2, n_repeats=3, random_state=7, path=path,
                                  **options)
    reference = sklearn_permutation_importance(estimator, X, y, scoring=scoring,
                                               n_repeats=3, random_state=7, **options)
    np.testing.assert_allclose(ours.importances, reference.importances, rtol=0, atol=TOL)
    assert np.abs(reference.importances).max() > 1e-3  # the comparison is not vacuous


@pytest.fixture(scope="module")
def regression_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 5))
    y = 3 * X[:, 0] + np.sin(2 * X[:, 1]) + X[:, 2] * X[:, 3] + 0.1 * rng.normal(size=400)
    return X, y


@pytest.fixture
def small_onnx_mlp(regression_data, tmp_path) -> LoadedModel:
    """A one-layer MLP regressor on regression_data, as the ONNX file the service loads."""
    X, y = regression_data
    mlp = MLPRegressor(hidden_layer_sizes=(8,), max_iter=200, random_state=0).fit(X, y)
    onnx_file(mlp, X, tmp_path / "model.onnx")
    return saved(tmp_path / "model.onnx", "onnx")


@pytest.mark.parametrize("scoring", ["r2", "neg_mean_squared_error"])
@pytest.mark.parametrize("max_samples", [1.0, 0.6, 150])
def test_xgboost_regressor_matches_sklearn(regression_data, scoring, max_samples, tmp_path):
    X, y = regression_data
    est = xgboost.XGBRegressor(n_estimators=30, max_depth=3, n_jobs=1).fit(X, y)
    est.get_booster().save_model(tmp_path / "model.json")
    model = saved(tmp_path / "model.json", "xgboost")
    assert_same_as_sklearn(model, est, X, y, scoring, max_samples=max_samples)


@pytest.mark.parametrize("scoring", ["accuracy", "roc_auc", "neg_log_loss", "f1_macro"])
def test_lightgbm_binary_with_categorical_codes_matches_sklearn(scoring, tmp_path):
    rng = np.random.default_rng(1)
    n = 500
    codes = rng.integers(0, 6, size=n).astype(np.float64)
    X = np.column_stack([rng.normal(size=n), codes, rng.normal(size=n)])
    logit = X[:, 0] + np.where(np.isin(codes, [1, 4]), 1.5, -1.0) + 0.3 * rng.normal(size=n)
    y = np.where(logit > 0, "yes", "no")
    est = lightgbm.LGBMClassifier(n_estimators=25, num_leaves=8, n_jobs=1, verbose=-1,
                                  min_child_samples=5)
    est.fit(X, y, categorical_feature=[1])
    est.booster_.save_model(tmp_path / "model.txt")
    model = saved(tmp_path / "model.txt", "lightgbm", classes=["no", "yes"])
    assert_same_as_sklearn(model, est, X, y, scoring)


@pytest.mark.parametrize("scoring", ["accuracy", "neg_log_loss", "roc_auc_ovr"])
def test_random_forest_multiclass_matches_sklearn(regression_data, scoring, tmp_path):
    X, target = regression_data
    y = np.digitize(target, [-1.0, 1.0])
    est = RandomForestClassifier(n_estimators=15, max_depth=5, random_state=0).fit(X, y)
    skops.io.dump(est, tmp_path / "model.skops")
    assert_same_as_sklearn(saved(tmp_path / "model.skops", "sklearn"), est, X, y, scoring)


# path="graph" builds each permuted copy in nodes in front of the model (what a GPU run
# does); on the CPU that too is scikit-learn's numbers exactly, subsample included.
@pytest.mark.parametrize(("scoring", "path", "max_samples"), [
    ("r2", "auto", 1.0), ("neg_mean_squared_error", "auto", 1.0),
    ("r2", "graph", 1.0), ("neg_mean_squared_error", "graph", 0.6)])
def test_onnx_mlp_regressor_matches_sklearn(regression_data, scoring, path, max_samples,
                                            tmp_path):
    X, y = regression_data
    mlp = MLPRegressor(hidden_layer_sizes=(16,), max_iter=300, random_state=0).fit(X, y)
    reference = OnnxRegressor(onnx_file(mlp, X, tmp_path / "model.onnx")).fit(X, y)
    model = saved(tmp_path / "model.onnx", "onnx")
    assert_same_as_sklearn(model, reference, X, y, scoring, path=path,
                           max_samples=max_samples)
    result = permutation_importance(model, X, y, feature_names=[f"x{j}" for j in range(5)],
                                    path=path)
    assert result.provenance["path"] == ("graph" if path == "graph" else "plain")


@pytest.mark.parametrize("path", ["auto", "graph"])
@pytest.mark.parametrize("scoring", ["accuracy", "roc_auc", "neg_log_loss"])
def test_onnx_mlp_classifier_matches_sklearn(regression_data, scoring, path, tmp_path):
    X, target = regression_data
    y = (target > 0).astype(np.int64)
    mlp = MLPClassifier(hidden_layer_sizes=(16,), max_iter=300, random_state=0).fit(X, y)
    session = onnx_file(mlp, X, tmp_path / "model.onnx", zipmap=False)
    reference = OnnxClassifier(session, [0, 1]).fit(X, y)
    model = saved(tmp_path / "model.onnx", "onnx")
    assert_same_as_sklearn(model, reference, X, y, scoring, path=path)


def test_copies_built_in_the_graph_equal_copies_made_on_the_host(regression_data,
                                                                 tmp_path, monkeypatch):
    """Groups and calls that split the rows (a bound below one repeat's rows) give exactly
    the scores of copies made on the host."""
    from explainers import permutation as module

    X, y = regression_data
    mlp = MLPRegressor(hidden_layer_sizes=(16,), max_iter=300, random_state=0).fit(X, y)
    onnx_file(mlp, X, tmp_path / "model.onnx")
    model = saved(tmp_path / "model.onnx", "onnx")
    names = [f"x{j}" for j in range(X.shape[1])]
    options = dict(scoring="neg_mean_absolute_error", feature_names=names,
                   features=[["x0"], ["x1", "x2"], ["x4", "x3"]], n_repeats=4,
                   random_state=3, max_samples=0.9)
    plain = permutation_importance(model, X, y, path="plain", **options)
    # 90 rows per call: each repeat's 360 rows in four calls
    monkeypatch.setitem(module.GRAPH_ROWS, "cpu", 90)
    split = permutation_importance(model, X, y, path="graph", **options)
    monkeypatch.setitem(module.GRAPH_ROWS, "cpu", 10_000)
    whole = permutation_importance(model, X, y, path="graph", **options)
    assert split.provenance["path"] == whole.provenance["path"] == "graph"
    assert np.abs(plain.importances).max() > 1e-3
    np.testing.assert_array_equal(split.importances, plain.importances)
    np.testing.assert_array_equal(whole.importances, plain.importances)


@pytest.mark.parametrize("rows_per_call", [1_000, 70])
def test_graph_copies_carry_nan_and_infinity(regression_data, tmp_path, rows_per_call):
    """The nodes in front of the model select values, never compute with them: NaN and
    infinities reach the model as they are, in every output form."""
    X, target = regression_data
    y = (target > 0).astype(np.int64)
    mlp = MLPClassifier(hidden_layer_sizes=(8,), max_iter=200, random_state=0).fit(X, y)
    onnx_file(mlp, X, tmp_path / "model.onnx", zipmap=False)
    model = saved(tmp_path / "model.onnx", "onnx")
    X = X.copy()
    X[::7, 1] = np.nan
    X[3, 2] = np.inf
    X[5, 2] = -np.inf
    rng = np.random.default_rng(4)
    base = np.sort(rng.choice(X.shape[0], size=300, replace=False))
    orders = [rng.permutation(300) for _ in range(3)]
    for output in ("raw", "probability", "label"):
        predict = model.permuted_predictor(X, base, [base[o] for o in orders],
                                           output=output, rows_per_call=rows_per_call)
        assert predict is not None
        for cols in ([1], [2, 0]):
            for order, got in zip(orders, predict(cols), strict=True):
                copy = X[base].copy()
                copy[:, cols] = X[base[order]][:, cols]
                expected = model.predict(copy, output=output)
                assert got.dtype == expected.dtype
                np.testing.assert_array_equal(got, expected)


def test_rows_too_large_to_keep_on_the_device_take_the_plain_path(regression_data,
                                                                   small_onnx_mlp,
                                                                   monkeypatch):
    from explainers import permutation as module

    X, y = regression_data
    model = small_onnx_mlp
    names = [f"x{j}" for j in range(5)]
    # 400 x 5 float32 rows and 6 index arrays of 400 int64: 27,200 bytes
    monkeypatch.setattr(module, "GRAPH_MAX_RESIDENT_BYTES", 27_199)
    small = permutation_importance(model, X, y, feature_names=names, path="graph")
    monkeypatch.setattr(module, "GRAPH_MAX_RESIDENT_BYTES", 27_200)
    fits = permutation_importance(model, X, y, feature_names=names, path="graph")
    assert (small.provenance["path"], fits.provenance["path"]) == ("plain", "graph")
    np.testing.assert_array_equal(small.importances, fits.importances)


def test_rows_the_device_cannot_hold_take_the_plain_path(regression_data, small_onnx_mlp,
                                                         monkeypatch):
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

    X, y = regression_data
    model = small_onnx_mlp
    names = [f"x{j}" for j in range(5)]
    expected = permutation_importance(model, X, y, feature_names=names, path="plain")

    def out_of_memory(*args: Any, **kwargs: Any) -> Any:
        raise ort_state.RuntimeException("Failed to allocate memory for requested buffer")

    monkeypatch.setattr(onnxruntime.OrtValue, "ortvalue_from_numpy", out_of_memory)
    got = permutation_importance(model, X, y, feature_names=names, path="graph")
    assert got.provenance["path"] == "plain"
    np.testing.assert_array_equal(got.importances, expected.importances)


def test_graph_that_cannot_be_wrapped_takes_the_plain_path(regression_data, tmp_path):
    """A graph whose names collide with the nodes put in front of it keeps its copies on
    the host, with the same numbers."""
    import onnx

    X, y = regression_data
    mlp = MLPRegressor(hidden_layer_sizes=(8,), max_iter=200, random_state=0).fit(X, y)
    proto = to_onnx(mlp, X[:1].astype(np.float32))
    first = proto.graph.node[0].output[0]  # an inner tensor takes one of our names
    for node in proto.graph.node:
        node.output[:] = ["tabxai_permute_mask" if n == first else n for n in node.output]
        node.input[:] = ["tabxai_permute_mask" if n == first else n for n in node.input]
    onnx.checker.check_model(proto)
    (tmp_path / "model.onnx").write_bytes(proto.SerializeToString())
    reference = OnnxRegressor(onnxruntime.InferenceSession(
        str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])).fit(X, y)
    model = saved(tmp_path / "model.onnx", "onnx")
    names = [f"x{j}" for j in range(X.shape[1])]
    ours = permutation_importance(model, X, y, feature_names=names, path="graph",
                                  n_repeats=3, random_state=7)
    assert ours.provenance["path"] == "plain"
    expected = sklearn_permutation_importance(reference, X, y, n_repeats=3, random_state=7)
    np.testing.assert_allclose(ours.importances, expected.importances, rtol=0, atol=TOL)


class RoundedProbabilities(BaseProtocolModel):
    """A binary classifier whose float32 probabilities overshoot 1 by rounding, as a
    sigmoid on a GPU gives them (1.0000001192092896)."""

    task = "binary"
    classes = [0, 1]
    n_features = 5

    def predict(self, X: np.ndarray, *, output: str = "label", device: str = "cpu",
                batch_rows: int | None = None) -> np.ndarray:
        p = np.float32(1) / (np.float32(1) + np.exp(-4 * X[:, 0].astype(np.float32)))
        p = np.where(X[:, 0] > 2.5, np.nextafter(np.float32(1), np.float32(2)), p)
        p = p.astype(np.float64)
        if output == "label":
            return (p > 0.5).astype(np.int64)
        return np.column_stack([1 - p, p])


def test_probabilities_over_one_by_float32_rounding_are_clipped(regression_data):
    """scikit-learn's log loss refuses 1.0000001; the clipped probabilities score as the
    exact ones would, and a real overshoot is still refused by the metric."""
    from sklearn.metrics import log_loss

    X, target = regression_data
    X = X.copy()
    X[:5, 0] = 3.0
    y = (target > 0).astype(np.int64)
    model = RoundedProbabilities()
    assert model.predict(X, output="probability").max() > 1.0
    result = permutation_importance(model, X, y, scoring="neg_log_loss",
                                    feature_names=[f"x{j}" for j in range(5)], n_repeats=2)
    clipped = np.clip(model.predict(X, output="probability")[:, 1], 0.0, 1.0)
    assert result.baseline_score == -log_loss(y, clipped)
    assert np.isfinite(result.importances).all() and result.importances[0].min() > 0
    from explainers.permutation import _within_unit_interval

    assert _within_unit_interval(np.array([0.2, 1.5])).max() == 1.5
    exact = np.array([0.0, 0.5, 1.0])
    assert _within_unit_interval(exact) is exact


def test_linear_model_importance_is_twice_coef_squared():
    rng = np.random.default_rng(2)
    coef = np.array([2.0, -1.0, 0.5, 0.0])
    X = rng.normal(size=(40_000, 4))
    y = X @ coef + 0.5 * rng.normal(size=X.shape[0])
    est = LinearRegression().fit(X, y)
    result = permutation_importance(
        EstimatorModel(est, "regression"), X, y, scoring="neg_mean_squared_error",
        feature_names=["a", "b", "c", "d"], n_repeats=3, n_jobs=1)
    np.testing.assert_allclose(result.importances_mean, 2 * coef**2, rtol=0.03, atol=0.01)


class FirstCopyModel(BaseProtocolModel):
    """Predicts with an estimator fitted on [a, b] from a table [a, a_copy, b] using a_copy."""

    task = "regression"
    classes = None
    n_features = 3

    def __init__(self, estimator: Any) -> None:
        self.estimator = estimator

    def predict(self, X: np.ndarray, *, output: str = "raw", device: str = "cpu",
                batch_rows: int | None = None) -> np.ndarray:
        return self.estimator.predict(X[:, [1, 2]]).astype(np.float64)


@pytest.mark.parametrize("path", ["auto", "tree_subset", "graph", "plain"])
def test_a_model_with_only_the_base_protocol_takes_the_plain_path(regression_data, path):
    """A tree model that declares no capability (only ``PredictiveModel``) is permuted
    through ``predict`` whatever path is asked for, with scikit-learn's numbers: nothing
    looks at its library."""
    X, y = regression_data
    est = xgboost.XGBRegressor(n_estimators=20, max_depth=3, n_jobs=1).fit(X, y)
    model = EstimatorModel(est, "regression")
    assert_same_as_sklearn(model, est, X, y, "r2", path=path)
    result = permutation_importance(model, X, y, feature_names=[f"x{j}" for j in range(5)],
                                    n_repeats=2, n_jobs=2, path=path)
    assert result.provenance["path"] == "plain" and result.provenance["n_jobs"] == 2


def test_a_model_declaring_serial_predict_runs_one_feature_at_a_time(regression_data):
    X, y = regression_data
    est = LinearRegression().fit(X, y)
    model = EstimatorModel(est, "regression")
    model.serial_predict = True
    result = permutation_importance(model, X, y, feature_names=[f"x{j}" for j in range(5)],
                                    n_repeats=2, n_jobs=4)
    assert result.provenance["n_jobs"] == 1


def test_group_of_identical_columns_equals_the_single_column(regression_data):
    X, y = regression_data
    est = xgboost.XGBRegressor(n_estimators=20, max_depth=3, n_jobs=1).fit(X[:, :2], y)
    single = permutation_importance(EstimatorModel(est, "regression"), X[:, :2], y,
                                    feature_names=["a", "b"], n_jobs=1)
    wide = np.column_stack([X[:, 0], X[:, 0], X[:, 1]])
    grouped = permutation_importance(FirstCopyModel(est), wide, y,
                                     feature_names=["a", "a_copy", "b"],
                                     features=[["a", "a_copy"], "b"], n_jobs=1)
    np.testing.assert_array_equal(grouped.importances, single.importances)
    entry = next(e for e in grouped.summary()["importances"] if e["feature"] == "a+a_copy")
    assert entry["features"] == ["a", "a_copy"]


def test_sequential_equals_parallel(regression_data):
    X, y = regression_data
    est = xgboost.XGBRegressor(n_estimators=20, max_depth=3, n_jobs=1).fit(X, y)
    names = [f"x{j}" for j in range(X.shape[1])]
    runs = [permutation_importance(EstimatorModel(est, "regression"), X, y, n_jobs=n,
                                   feature_names=names, max_samples=0.7) for n in (1, 2)]
    np.testing.assert_array_equal(runs[0].importances, runs[1].importances)


@pytest.mark.parametrize("fmt", ["model.json", "model.ubj"])
def test_tree_subset_path_equals_plain_path_and_sklearn(fmt, tmp_path):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(300, 40))
    X[rng.random(X.shape) < 0.05] = np.nan
    y = np.nansum(X[:, :10], axis=1) + 0.1 * rng.normal(size=300)
    est = xgboost.XGBRegressor(n_estimators=40, max_depth=2, n_jobs=1).fit(X, y)
    names = [f"x{j}" for j in range(X.shape[1])]
    options = dict(feature_names=names, n_repeats=3, n_jobs=2, max_samples=0.8,
                   features=names[:12] + [["x3", "x30"], "x38", "x39"])
    est.get_booster().save_model(tmp_path / fmt)
    model = saved(tmp_path / fmt, "xgboost")
    tree = permutation_importance(model, X, y, path="tree_subset", **options)
    plain = permutation_importance(model, X, y, path="plain", **options)
    auto = permutation_importance(model, X, y, **options)
    assert tree.provenance["path"] == "tree_subset"
    assert plain.provenance["path"] == "plain"
    np.testing.assert_array_equal(tree.importances, plain.importances)
    np.testing.assert_array_equal(auto.importances, plain.importances)
    reference = sklearn_permutation_importance(est, X, y, n_repeats=3, random_state=0,
                                               max_samples=0.8)
    np.testing.assert_allclose(tree.importances[:12], reference.importances[:12],
                               rtol=0, atol=TOL)
    assert np.abs(reference.importances).max() > 1e-3


def test_subset_path_is_not_built_where_every_feature_is_in_most_trees(
        regression_data, tmp_path, monkeypatch):
    """Each of the two features splits most of the trees: the subset path cannot gain,
    so no tree is evaluated for it (no build, no timing); the plain path runs."""
    from models.tree_subsets import TreeSubsets

    X, y = regression_data
    X2 = X[:, :2]
    est = xgboost.XGBRegressor(n_estimators=20, max_depth=3, n_jobs=1).fit(X2, y)
    est.get_booster().save_model(tmp_path / "model.json")
    model = saved(tmp_path / "model.json", "xgboost")
    trees = model.tree_subsets()
    assert trees is not None
    assert all(2 * len(trees.touched([j])) > trees.n_trees for j in range(2))

    def refuse(*args, **kwargs):
        raise AssertionError("the subset path was built")

    monkeypatch.setattr(TreeSubsets, "evaluate", refuse)
    result = permutation_importance(model, X2, y, feature_names=["x0", "x1"], n_repeats=2)
    assert result.provenance["path"] == "plain"


@pytest.mark.parametrize("scoring", ["accuracy", "roc_auc", "neg_log_loss"])
@pytest.mark.parametrize("n_classes", [2, 3])
@pytest.mark.parametrize("path", ["tree_subset", "plain"])
def test_xgboost_classifier_matches_sklearn_on_both_paths(scoring, n_classes, path,
                                                          tmp_path):
    if scoring == "roc_auc" and n_classes == 3:
        scoring = "roc_auc_ovr"
    rng = np.random.default_rng(5)
    X = rng.normal(size=(400, 15))
    X[rng.random(X.shape) < 0.03] = np.nan
    z = np.nan_to_num(X)
    score = z[:, 0] + z[:, 1] * z[:, 2] + 0.3 * rng.normal(size=400)
    y = np.digitize(score, np.quantile(score, np.linspace(0, 1, n_classes + 1)[1:-1]))
    est = xgboost.XGBClassifier(n_estimators=30, max_depth=3, n_jobs=1).fit(X, y)
    est.get_booster().save_model(tmp_path / "model.json")
    model = saved(tmp_path / "model.json", "xgboost", classes=list(range(n_classes)))
    assert_same_as_sklearn(model, est, X, y, scoring, path=path)
    names = [f"x{j}" for j in range(X.shape[1])]
    used = permutation_importance(model, X, y, scoring=scoring, feature_names=names,
                                  n_repeats=1, path=path).provenance["path"]
    assert used == path


@pytest.mark.filterwarnings("ignore:.*booster=dart. is deprecated")  # dart on purpose
def test_tree_subset_path_is_not_used_where_it_would_not_be_exact(tmp_path):
    rng = np.random.default_rng(4)
    X = rng.normal(size=(200, 6))
    y = X[:, 0] + X[:, 1] * X[:, 2]
    names = [f"x{j}" for j in range(6)]
    dart = xgboost.train({"booster": "dart", "max_depth": 3, "rate_drop": 0.2, "nthread": 1},
                         xgboost.DMatrix(X, y), 10)
    dart.save_model(tmp_path / "dart.json")
    lgbm = lightgbm.LGBMRegressor(n_estimators=10, verbose=-1).fit(X, y)
    lgbm.booster_.save_model(tmp_path / "model.txt")
    for model in (saved(tmp_path / "dart.json", "xgboost"),
                  saved(tmp_path / "model.txt", "lightgbm")):
        result = permutation_importance(model, X, y, feature_names=names, n_repeats=2,
                                        path="tree_subset")
        assert result.provenance["path"] == "plain"


def test_validation_errors_name_the_problem():
    names = ["a", "b"]
    with pytest.raises(UnknownScorer, match="'r2'"):
        validate_permutation_params(task="regression", feature_names=names, scoring="r3")
    with pytest.raises(PermutationParamsError, match="n_repeats"):
        validate_permutation_params(task="regression", feature_names=names, n_repeats=0)
    with pytest.raises(UnknownFeature, match="'c'"):
        validate_permutation_params(task="regression", feature_names=names,
                                    features=[["a", "c"]])
    with pytest.raises(ScorerNotApplicable, match="regressor"):
        validate_permutation_params(task="regression", feature_names=names,
                                    scoring="accuracy")
    with pytest.raises(ScorerNotApplicable, match="predict_proba"):
        validate_permutation_params(task="binary", feature_names=names,
                                    scoring="neg_log_loss",
                                    response_methods=frozenset({"predict"}))
    with pytest.raises(PermutationParamsError, match="max_samples"):
        validate_permutation_params(task="binary", feature_names=names, max_samples=10,
                                    n_rows=5)
    params = validate_permutation_params(task="binary", feature_names=names,
                                         scoring="roc_auc", features=["b", ["a", "b"]])
    assert params.response_method == "predict_proba"
    assert params.groups == ((1,), (0, 1)) and params.names == ("b", "a+b")
    assert validate_permutation_params(task="multiclass", feature_names=names).scoring \
        == "accuracy"



@pytest.mark.parametrize(("task", "options"), [
    ("regression", {}),
    ("binary", {"scoring": "roc_auc", "features": ["b", ["a", "c"]]}),
    ("multiclass", {"scoring": "neg_log_loss", "n_repeats": 3, "random_state": 9}),
    ("binary", {"response_methods": frozenset({"predict", "decision_function"}),
                "scoring": "roc_auc"}),
])
def test_resolve_builds_what_validation_returns(task, options):
    names = ["a", "b", "c"]
    checked = validate_permutation_params(task=task, feature_names=names, **options)
    assert PermutationParams.resolve(task=task, feature_names=names, **options) == checked
    # Resolved params resolve to themselves: what a service stores is what ran.
    assert PermutationParams.resolve(
        task=task, feature_names=names, scoring=checked.scoring, n_repeats=checked.n_repeats,
        random_state=checked.random_state, features=options.get("features"),
        response_methods=options.get("response_methods")) == checked


def test_run_entry_takes_checked_params_without_checking_them_again(regression_data,
                                                                    monkeypatch):
    X, y = regression_data
    est = LinearRegression().fit(X, y)
    model = EstimatorModel(est, "regression")
    names = [f"x{j}" for j in range(X.shape[1])]
    expected = permutation_importance(model, X, y, feature_names=names, n_repeats=3,
                                      features=[["x0", "x1"], "x2"], n_jobs=1)
    params = validate_permutation_params(task="regression", feature_names=names, n_repeats=3,
                                         features=[["x0", "x1"], "x2"])

    def refuse(**kwargs):
        raise AssertionError("the params were checked again")

    monkeypatch.setattr(permutation, "validate_permutation_params", refuse)
    result = run_permutation_importance(model, X, y, params, n_jobs=1)
    np.testing.assert_array_equal(result.importances, expected.importances)
    assert result.names == expected.names == ("x0+x1", "x2")
    assert result.scoring == "r2"
    # The rows are still checked: they are not part of the params.
    with pytest.raises(PermutationParamsError, match="row"):
        run_permutation_importance(model, X, y[:-1], params)
    with pytest.raises(PermutationParamsError, match="max_samples"):
        run_permutation_importance(model, X[:3], y[:3],
                                   PermutationParams.resolve(
                                       task="regression", feature_names=names,
                                       max_samples=5))

def test_cancel_stops_the_run(regression_data):
    X, y = regression_data
    est = LinearRegression().fit(X, y)
    calls = []

    def cancel_after_two(fraction: float, stage: str) -> None:
        calls.append(fraction)
        if len(calls) > 2:
            raise Cancelled

    with pytest.raises(Cancelled):
        permutation_importance(EstimatorModel(est, "regression"), X, y, n_jobs=2,
                               feature_names=[f"x{j}" for j in range(5)],
                               progress=cancel_after_two)


def test_graph_path_reports_each_feature_and_stops_when_cancelled(regression_data,
                                                                   small_onnx_mlp):
    X, y = regression_data
    model = small_onnx_mlp
    names = [f"x{j}" for j in range(5)]
    seen: list[float] = []
    permutation_importance(model, X, y, feature_names=names, path="graph",
                           progress=lambda fraction, stage: seen.append(fraction))
    assert seen == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]

    calls: list[int] = []
    predict = model.permuted_predictor

    def counting(*args: Any, **kwargs: Any) -> Any:
        inner = predict(*args, **kwargs)
        return lambda cols: (calls.append(1), inner(cols))[1]

    model.permuted_predictor = counting  # type: ignore[method-assign]
    fractions: list[float] = []

    def cancel_after_two(fraction: float, stage: str) -> None:
        fractions.append(fraction)
        if len(fractions) > 2:
            raise Cancelled

    with pytest.raises(Cancelled):
        permutation_importance(model, X, y, feature_names=names, path="graph",
                               progress=cancel_after_two)
    assert len(calls) == 2  # the two features scored before the cancel


def test_threaded_run_reports_progress_once_per_feature(regression_data):
    X, y = regression_data
    est = LinearRegression().fit(X, y)
    calls = []
    permutation_importance(EstimatorModel(est, "regression"), X, y, n_jobs=2,
                           feature_names=[f"x{j}" for j in range(5)],
                           progress=lambda fraction, stage: calls.append(fraction))
    assert calls == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]


def test_summary_is_sorted_json_and_figure_renders(regression_data):
    X, y = regression_data
    est = LinearRegression().fit(X, y)
    result = permutation_importance(EstimatorModel(est, "regression"), X, y, n_jobs=1,
                                    feature_names=[f"x{j}" for j in range(5)],
                                    features=["x0", "x1", ["x2", "x3"], "x4"])
    summary = json.loads(json.dumps(result.summary(), allow_nan=False))
    means = [e["mean"] for e in summary["importances"]]
    assert means == sorted(means, reverse=True)
    assert summary["importances"][0]["feature"] == "x0"
    assert summary["scoring"] == "r2" and summary["n_repeats"] == 5
    assert result.arrays()["importances"].shape == (4, 5)
    figure = draw_importance(summary, result.arrays(), max_display=3)
    ax = figure.axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[-1] == "x0" and len(labels) == 3  # most important at the top
    for fmt, magic in (("svg", b"<svg"), ("png", b"\x89PNG")):
        buffer = io.BytesIO()
        figure.savefig(buffer, format=fmt)
        assert magic in buffer.getvalue()[:400]
