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
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.ensemble import RandomForestClassifier
from sklearn.inspection import permutation_importance as sklearn_permutation_importance
from sklearn.linear_model import LinearRegression
from sklearn.neural_network import MLPClassifier, MLPRegressor

from explainers.permutation import (
    PermutationParamsError,
    ScorerNotApplicable,
    UnknownFeature,
    UnknownScorer,
    permutation_importance,
    validate_permutation_params,
)
from explainers.permutation_figures import draw_importance
from explainers.progress import Cancelled
from models.loaded import LoadedModel
from models.loading import load_model
from tests.model_files import onnx_cuda_available

TOL = 1e-9
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def saved(path: Path, fmt: str, **options: Any) -> LoadedModel:
    """The LoadedModel the service would build from the file at ``path``."""
    return load_model(path, format=fmt, n_threads=1, **options)


class EstimatorModel:
    """The Predictor protocol over a fitted scikit-learn-API estimator, without trees."""

    def __init__(self, estimator: Any, task: str) -> None:
        self.estimator = estimator
        self.task = task
        self.classes = None if task == "regression" else list(estimator.classes_)

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


class OnnxRegressor(RegressorMixin, BaseEstimator):
    """A fitted estimator that predicts through onnxruntime (scikit-learn's reference)."""

    def __init__(self, session: Any = None) -> None:
        self.session = session

    def fit(self, X: np.ndarray, y: np.ndarray) -> OnnxRegressor:
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        name = self.session.get_inputs()[0].name
        return self.session.run(None, {name: X.astype(np.float32)})[0].reshape(-1)


class OnnxClassifier(ClassifierMixin, BaseEstimator):
    def __init__(self, session: Any = None, classes: Any = None) -> None:
        self.session = session
        self.classes = classes

    def fit(self, X: np.ndarray, y: np.ndarray) -> OnnxClassifier:
        return self

    @property
    def classes_(self) -> np.ndarray:
        return np.asarray(self.classes)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        name = self.session.get_inputs()[0].name
        # float64 like LoadedModel: scikit-learn computes log_loss in float32 when given
        # float32 probabilities (1e-7 off), and in float64, as we do, otherwise.
        probabilities = self.session.run(["probabilities"], {name: X.astype(np.float32)})[0]
        return probabilities.astype(np.float64)

    def predict(self, X: np.ndarray) -> np.ndarray:
        name = self.session.get_inputs()[0].name
        return self.session.run(["label"], {name: X.astype(np.float32)})[0]


def onnx_file(estimator: Any, X: np.ndarray, path: Path, **options: Any) -> Any:
    """Convert ``estimator`` to ONNX at ``path``; return an onnxruntime session on it."""
    path.write_bytes(to_onnx(estimator, X[:1].astype(np.float32),
                             options=options).SerializeToString())
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("scoring", ["r2", "neg_mean_squared_error"])
def test_onnx_mlp_regressor_matches_sklearn(regression_data, scoring, tmp_path):
    X, y = regression_data
    mlp = MLPRegressor(hidden_layer_sizes=(16,), max_iter=300, random_state=0).fit(X, y)
    reference = OnnxRegressor(onnx_file(mlp, X, tmp_path / "model.onnx")).fit(X, y)
    model = saved(tmp_path / "model.onnx", "onnx")
    assert_same_as_sklearn(model, reference, X, y, scoring)


@pytest.mark.parametrize("scoring", ["accuracy", "roc_auc", "neg_log_loss"])
def test_onnx_mlp_classifier_matches_sklearn(regression_data, scoring, tmp_path):
    X, target = regression_data
    y = (target > 0).astype(np.int64)
    mlp = MLPClassifier(hidden_layer_sizes=(16,), max_iter=300, random_state=0).fit(X, y)
    session = onnx_file(mlp, X, tmp_path / "model.onnx", zipmap=False)
    reference = OnnxClassifier(session, [0, 1]).fit(X, y)
    model = saved(tmp_path / "model.onnx", "onnx")
    assert_same_as_sklearn(model, reference, X, y, scoring)


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


class FirstCopyModel:
    """Predicts with an estimator fitted on [a, b] from a table [a, a_copy, b] using a_copy."""

    task = "regression"
    classes = None

    def __init__(self, estimator: Any) -> None:
        self.estimator = estimator

    def predict(self, X: np.ndarray, *, output: str = "raw", device: str = "cpu",
                batch_rows: int | None = None) -> np.ndarray:
        return self.estimator.predict(X[:, [1, 2]]).astype(np.float64)


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
    from explainers import permutation

    X, y = regression_data
    X2 = X[:, :2]
    est = xgboost.XGBRegressor(n_estimators=20, max_depth=3, n_jobs=1).fit(X2, y)
    est.get_booster().save_model(tmp_path / "model.json")
    model = saved(tmp_path / "model.json", "xgboost")
    trees = permutation._BoosterTrees.read(model.native)
    assert all(2 * len(trees.touched([j])) > trees.n_trees for j in range(2))

    def refuse(*args, **kwargs):
        raise AssertionError("the subset path was built")

    monkeypatch.setattr(permutation._BoosterTrees, "evaluate", refuse)
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


@pytest.mark.skipif(not onnx_cuda_available(),
                    reason="no CUDA GPU with onnxruntime's CUDA provider (onnxruntime-gpu) here")
@pytest.mark.parametrize("scoring", ["r2", "neg_mean_squared_error"])
def test_onnx_mlp_on_cuda_matches_sklearn_to_float32(regression_data, scoring, tmp_path):
    """On the GPU the MLP runs in float32 CUDA kernels: scikit-learn's numbers (computed
    through onnxruntime on the CPU) to float32 rounding, not bit for bit."""
    X, y = regression_data
    mlp = MLPRegressor(hidden_layer_sizes=(16,), max_iter=300, random_state=0).fit(X, y)
    reference_model = OnnxRegressor(onnx_file(mlp, X, tmp_path / "model.onnx")).fit(X, y)
    model = saved(tmp_path / "model.onnx", "onnx")
    names = [f"x{j}" for j in range(X.shape[1])]
    ours = permutation_importance(model, X, y, scoring=scoring, feature_names=names,
                                  n_repeats=3, random_state=7, device="cuda")
    assert model.device_used == "cuda"
    reference = sklearn_permutation_importance(reference_model, X, y, scoring=scoring,
                                               n_repeats=3, random_state=7)
    scale = np.abs(reference.importances).max()
    assert scale > 1e-3
    np.testing.assert_allclose(ours.importances, reference.importances, rtol=0,
                               atol=1e-5 * max(scale, 1.0))
