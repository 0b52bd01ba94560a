"""Rashomon-set interaction scores: equality with generalized-rashomon-set 0.2.0, the
closed-form behaviour of additive and product models, batching invariance, params,
cost estimate, progress/cancellation and the figures."""

from __future__ import annotations

import io
import json
import math
import warnings
from dataclasses import replace

import numpy as np
import pytest
from sklearn import metrics
from sklearn.datasets import load_diabetes
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPRegressor

from explainers.progress import Cancelled
from explainers.rashomon import (
    RashomonParams,
    RashomonParamsError,
    RashomonResult,
    UnknownLoss,
    UnknownRashomonFeature,
    ZeroTolerance,
    estimate_checked_cost,
    estimate_cost,
    rashomon_interactions,
    run_rashomon_interactions,
)
from explainers.rashomon_figures import (
    draw_halo,
    draw_search_trace,
    draw_swarm,
    draw_swarm_main,
)

NAMES = [f"x{i}" for i in range(10)]


@pytest.fixture(scope="module")
def diabetes() -> tuple[np.ndarray, np.ndarray]:
    X, y = load_diabetes(return_X_y=True)
    return X[:120] * 10.0, y[:120]


@pytest.fixture(scope="module")
def mlp(diabetes: tuple[np.ndarray, np.ndarray]) -> MLPRegressor:
    X, y = diabetes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return MLPRegressor(hidden_layer_sizes=(16,), max_iter=300, learning_rate_init=0.01,
                            random_state=0).fit(X, y)


@pytest.fixture(scope="module")
def gbc(diabetes: tuple[np.ndarray, np.ndarray]) -> tuple[GradientBoostingClassifier, np.ndarray]:
    X, y = diabetes
    yc = (y > np.median(y)).astype(np.int64)
    model = GradientBoostingClassifier(n_estimators=15, max_depth=3, random_state=0).fit(X, yc)
    return model, yc


def _package(model, X, y, params: RashomonParams, loss: str):
    grs = pytest.importorskip("generalized_rashomon_set",
                              reason="needs generalized-rashomon-set 0.2.0")
    ex = grs.RashomonExplainer(
        model, X, y, loss=loss, epsilon_rate=params.epsilon_rate, delta=params.delta,
        features=list(params.features), feature_names=NAMES[:X.shape[1]],
        permutation=params.permutation, shuffle_times=params.shuffle_times,
        random_state=params.random_state,
    )
    return ex.fit(order=params.order, radii=params.radii)


def _assert_same(ours: RashomonResult, ex) -> None:
    scale = abs(ex.loss_ref)

    def close(a, b) -> None:
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12 * scale, equal_nan=True)

    assert math.isclose(ours.loss_ref, ex.loss_ref, rel_tol=1e-12)
    assert list(ours.active_features) == list(ex.active_features)
    assert list(ours.dropped_features) == list(ex.reference_.dropped_features)
    assert list(ours.insensitive_features) == list(ex.samples_.insensitive_features)
    close(ours.reference_main_effects, ex.reference_.main_effects)
    assert [tuple(s) for s in ours.subsets] == list(ex.reference_.subsets)
    close(ours.reference_fis, ex.reference_.fis)
    close(ours.masks, ex.samples_.masks)
    close(ours.mask_losses, ex.samples_.losses)
    close(ours.main_effect_clouds, ex.attributions_.effects)
    close(ours.main_effect_losses, ex.attributions_.losses)
    C = ex.interactions_
    assert [tuple(s) for s in ours.subsets] == list(C.subsets)
    close(ours.fis_masks, C.masks)
    close(ours.fis_losses, C.losses)
    close(ours.fis_joint_effects, C.joint_effects)
    close(ours.fis_main_effects, C.main_effects)
    close(ours.fis_clouds, C.fis)
    np.testing.assert_array_equal(ours.fis_in_set, C.in_rashomon_set)
    from generalized_rashomon_set.plots._halo import halo_coordinates

    emp, exp = halo_coordinates(C, tuple(C.subsets[0]), 1.0)
    pick = ours.combo_radius == 1.0
    close(ours.halo[0, pick, 0], emp)
    close(ours.halo[0, pick, 1], exp)


def test_equals_package_mlp_regressor_on_10_features(diabetes, mlp) -> None:
    X, y = diabetes
    params = RashomonParams(loss="mse", delta=0.5, shuffle_times=2, features=tuple(NAMES))
    ours = rashomon_interactions(mlp.predict, X, y, task="regression", feature_names=NAMES,
                                 params=params)
    _assert_same(ours, _package(mlp, X, y, params, "mse"))
    assert ours.subsets.shape == (45, 2)


def test_equals_package_gradient_boosting_log_loss(diabetes, gbc) -> None:
    X, _ = diabetes
    model, yc = gbc
    params = RashomonParams(delta=0.5, shuffle_times=2, features=("x2", "x8", "x3"))
    ours = rashomon_interactions(model.predict_proba, X, yc, task="binary", feature_names=NAMES,
                                 params=params)
    assert ours.loss == "log_loss"
    _assert_same(ours, _package(model, X, yc, params, "log_loss"))


def test_equals_package_order_3_joint_permutation_two_radii(diabetes, mlp) -> None:
    X, y = diabetes
    params = RashomonParams(delta=0.25, shuffle_times=2, order=3, radii=(1.0, 0.75),
                            permutation="joint", epsilon_rate=0.2,
                            features=("x2", "x3", "x8"))
    ours = rashomon_interactions(mlp.predict, X, y, task="regression", feature_names=NAMES,
                                 params=params)
    _assert_same(ours, _package(mlp, X, y, params, "mse"))
    assert ours.fis_clouds.shape == (1, (3 + 1) * 8)


def _gaussian(n: int, p: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, p))


def _whitened(n: int, p: int, seed: int) -> np.ndarray:
    """Gaussian rows made exactly uncorrelated in the sample: independent features whose
    permutation cross terms have expectation exactly 0 on these rows."""
    X = _gaussian(n, p, seed)
    X -= X.mean(axis=0)
    return X @ np.linalg.inv(np.linalg.cholesky(np.cov(X, rowvar=False, bias=True))).T


def test_additive_model_has_clouds_centred_on_zero() -> None:
    X = _whitened(400, 3, 1)

    def predict(Z: np.ndarray) -> np.ndarray:
        return Z[:, 0] + 2.0 * Z[:, 1] - 1.5 * Z[:, 2]

    y = predict(X) + 0.5 * np.random.default_rng(2).standard_normal(400)
    res = rashomon_interactions(predict, X, y, task="regression", feature_names=["a", "b", "c"],
                                params=RashomonParams(shuffle_times=10, delta=0.2))
    smallest_main = np.nanmin(np.abs(res.main_effect_clouds))
    assert smallest_main > 1.0
    # Each model's FIS is 0 in expectation on these rows; what remains is permutation
    # noise, independent across models: each cloud's mean is 0 within 4 standard errors.
    mean = res.fis_clouds.mean(axis=1)
    stderr = res.fis_clouds.std(axis=1, ddof=1) / np.sqrt(res.fis_clouds.shape[1])
    assert np.all(np.abs(mean) < 4 * stderr + 1e-12)
    assert np.abs(mean).max() < 0.1 * smallest_main


def test_product_model_interacts_only_on_its_pair() -> None:
    X = _whitened(400, 3, 3)

    def predict(Z: np.ndarray) -> np.ndarray:
        return Z[:, 0] * Z[:, 1] + Z[:, 2]

    y = predict(X) + 0.3 * np.random.default_rng(4).standard_normal(400)
    res = rashomon_interactions(predict, X, y, task="regression", feature_names=["u", "v", "w"],
                                params=RashomonParams(shuffle_times=10, delta=0.2))
    by_pair = {tuple(res.feature_names[f] for f in s): res.fis_clouds[i]
               for i, s in enumerate(res.subsets)}
    # E[(uv - u'v')^2] - E[(uv - u'v)^2] - E[(uv - uv')^2] = -2 m_u^2 m_v^2 for N(0,1).
    assert by_pair[("u", "v")].max() < -1.0
    for other in (("u", "w"), ("v", "w")):
        # Not exactly 0 on a finite sample (third moments such as mean(u v w) remain).
        assert np.abs(by_pair[other]).max() < 0.5 * abs(by_pair[("u", "v")].mean())
    summary = res.summary()
    assert summary["interactions"][0]["features"] == ["u", "v"]


@pytest.mark.parametrize("model_name", ["mlp", "gbc"])
def test_batch_rows_and_n_jobs_do_not_change_numbers(diabetes, mlp, gbc, model_name) -> None:
    X, y = diabetes
    if model_name == "mlp":
        predict, target, task = mlp.predict, y, "regression"
    else:
        predict, target, task = gbc[0].predict_proba, gbc[1], "binary"
    params = RashomonParams(delta=0.5, shuffle_times=3, features=("x0", "x2", "x3", "x8"))
    n = X.shape[0]
    runs = [
        rashomon_interactions(predict, X, target, task=task, feature_names=NAMES, params=params,
                              batch_rows=b, n_jobs=j)
        for b, j in [(1_000_000, 1), (1, 1), (7 * n + 3, 1), (5 * n, 2)]
    ]
    first = runs[0].arrays()
    for other in runs[1:]:
        for name, value in other.arrays().items():
            assert np.array_equal(value, first[name], equal_nan=True), name
        assert other.rows_predicted == runs[0].rows_predicted


def test_float32_rows_for_a_float32_model_change_no_number(diabetes, mlp, tmp_path) -> None:
    """An ONNX graph computes in float32: rows written in float32 from the start give the
    model the same values as float64 rows it converts itself."""
    from skl2onnx import to_onnx

    from models.loading import load_model

    X, y = diabetes
    path = tmp_path / "mlp.onnx"
    path.write_bytes(to_onnx(mlp, X[:1].astype(np.float32)).SerializeToString())
    model = load_model(path, format="onnx", n_threads=1)
    assert model.input_dtype == np.float32

    def predict(rows: np.ndarray) -> np.ndarray:
        return model.predict(rows, output="label")

    params = RashomonParams(delta=0.5, shuffle_times=3, features=("x0", "x2", "x3", "x8"))
    runs = [rashomon_interactions(predict, X, y, task="regression", feature_names=NAMES,
                                  params=params, batch_rows=5 * X.shape[0], dtype=dtype)
            for dtype in (np.float64, np.float32)]
    for name, value in runs[1].arrays().items():
        assert np.array_equal(value, runs[0].arrays()[name], equal_nan=True), name
    assert np.abs(runs[0].fis_clouds[~np.isnan(runs[0].fis_clouds)]).max() > 0


@pytest.mark.parametrize("loss", ["mse", "rmse", "mae", "r2"])
def test_regression_losses_equal_scikit_learn(loss) -> None:
    X = _gaussian(60, 2, 6)

    def predict(Z: np.ndarray) -> np.ndarray:
        return 3.0 * Z[:, 0] - Z[:, 1]

    y = predict(X) + np.random.default_rng(7).standard_normal(60)
    res = rashomon_interactions(predict, X, y, task="regression", feature_names=["a", "b"],
                                params=RashomonParams(loss=loss, shuffle_times=1, delta=0.5))
    expected = {"mse": metrics.mean_squared_error, "rmse": metrics.root_mean_squared_error,
                "mae": metrics.mean_absolute_error,
                "r2": lambda t, p: 1.0 - metrics.r2_score(t, p)}[loss](y, predict(X))
    assert math.isclose(res.loss_ref, expected, rel_tol=1e-12)


@pytest.mark.parametrize(("loss", "n_classes"), [
    ("log_loss", 2), ("log_loss", 3), ("zero_one_loss", 3), ("accuracy", 2), ("roc_auc", 2)])
def test_classification_losses_equal_scikit_learn(loss, n_classes) -> None:
    X = _gaussian(80, 2, 8)
    W = np.array([[2.0, -1.0, 0.5], [0.5, 1.5, -2.0]])[:, :n_classes]

    def predict(Z: np.ndarray) -> np.ndarray:
        z = Z @ W
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    rng = np.random.default_rng(9)
    proba = predict(X)
    y = np.array([rng.choice(n_classes, p=row) for row in proba])
    task = "binary" if n_classes == 2 else "multiclass"
    res = rashomon_interactions(predict, X, y, task=task, feature_names=["a", "b"],
                                params=RashomonParams(loss=loss, shuffle_times=1, delta=0.5))
    expected = {"log_loss": lambda: metrics.log_loss(y, proba),
                "zero_one_loss": lambda: metrics.zero_one_loss(y, proba.argmax(axis=1)),
                "accuracy": lambda: 1.0 - metrics.accuracy_score(y, proba.argmax(axis=1)),
                "roc_auc": lambda: 1.0 - metrics.roc_auc_score(y, proba[:, 1])}[loss]()
    assert math.isclose(res.loss_ref, expected, rel_tol=1e-12)


def test_row_sample_is_seeded_and_in_file_order() -> None:
    X = _gaussian(50, 2, 5)

    def predict(Z: np.ndarray) -> np.ndarray:
        return Z[:, 0] - Z[:, 1]

    y = predict(X) + 0.1
    params = RashomonParams(max_rows=20, shuffle_times=2, delta=0.5)
    a = rashomon_interactions(predict, X, y, task="regression", feature_names=["p", "q"],
                              params=params)
    b = rashomon_interactions(predict, X, y, task="regression", feature_names=["p", "q"],
                              params=params)
    assert a.row_index.size == 20 and np.all(np.diff(a.row_index) > 0)
    np.testing.assert_array_equal(a.row_index, b.row_index)
    assert a.summary()["provenance"]["n_rows"] == 20


@pytest.mark.parametrize(
    ("change", "error", "words"),
    [
        ({"epsilon_rate": 0.0}, RashomonParamsError, "epsilon_rate"),
        ({"epsilon_rate": -0.1}, RashomonParamsError, "epsilon_rate"),
        ({"delta": 0.3}, RashomonParamsError, "delta must divide 1"),
        ({"delta": 0.0}, RashomonParamsError, "delta must divide 1"),
        ({"order": 4}, RashomonParamsError, "order must be 2 or 3"),
        ({"order": 1}, RashomonParamsError, "order must be 2 or 3"),
        ({"features": ("x0", "nope")}, UnknownRashomonFeature, "nope"),
        ({"loss": "hinge"}, UnknownLoss, "Unknown loss 'hinge'"),
        ({"radii": (0.15,)}, RashomonParamsError, "multiple of delta"),
        ({"radii": (-1.0,)}, RashomonParamsError, "multiple of delta"),
        ({"radii": (0.1,)}, RashomonParamsError, "multiple of delta"),
        ({"shuffle_times": 0}, RashomonParamsError, "shuffle_times"),
        ({"permutation": "both"}, RashomonParamsError, "permutation"),
    ],
)
def test_invalid_params_raise_a_sentence(change, error, words) -> None:
    params = replace(RashomonParams(), **change)
    with pytest.raises(error, match=words) as info:
        params.validate(10, NAMES)
    assert isinstance(info.value, ValueError)
    assert str(info.value).endswith(".")


def test_params_are_checked_before_any_prediction() -> None:
    def predict(Z: np.ndarray) -> np.ndarray:
        raise AssertionError("predict must not run for invalid params")

    X = _gaussian(10, 3, 0)
    with pytest.raises(UnknownLoss, match="does not apply to a regression model"):
        rashomon_interactions(predict, X, X[:, 0], task="regression", feature_names=["a", "b", "c"],
                              params=RashomonParams(loss="log_loss"))
    RashomonParams(delta=0.25, radii=(0.5, 1.0, 2.0)).validate(3, ["a", "b", "c"], task="binary")


def test_zero_reference_loss_needs_an_absolute_epsilon() -> None:
    X = _gaussian(20, 2, 0)

    def predict(Z: np.ndarray) -> np.ndarray:
        return Z[:, 0] + Z[:, 1]

    with pytest.raises(ZeroTolerance, match="absolute epsilon"):
        rashomon_interactions(predict, X, predict(X), task="regression", feature_names=["a", "b"],
                              params=RashomonParams(shuffle_times=2))


def test_cost_estimate_counts_reference_and_interaction_rows_exactly(diabetes, mlp) -> None:
    X, y = diabetes
    params = RashomonParams(delta=0.25, shuffle_times=3, features=("x2", "x3", "x8", "x0"))
    res = rashomon_interactions(mlp.predict, X, y, task="regression", feature_names=NAMES,
                                params=params)
    est = estimate_cost(X.shape[0], 10, params, task="regression")
    assert est["rows_by_stage"]["reference"] == res.rows_predicted["reference"]
    assert est["rows_by_stage"]["interactions"] == res.rows_predicted["interactions"]
    assert est["rows_by_stage"]["main_effects"] >= res.rows_predicted["main_effects"]
    assert est["rows_to_predict"] == sum(est["rows_by_stage"].values())
    # The doc's rule of thumb: 3,276 n rows per pair with the defaults.
    default = estimate_cost(2000, 2, RashomonParams(), task="regression")
    assert default["rows_by_stage"]["interactions"] == 3276 * 2000
    assert estimate_cost(10**6, 20, RashomonParams(), task="binary")["n_subsets"] == 66



def test_run_entry_and_checked_cost_take_validated_params_as_they_are(
        diabetes, mlp, monkeypatch) -> None:
    X, y = diabetes
    params = RashomonParams(delta=0.5, shuffle_times=2, features=("x2", "x3", "x8"))
    expected = rashomon_interactions(mlp.predict, X, y, task="regression",
                                     feature_names=NAMES, params=params)
    cost = estimate_cost(X.shape[0], 10, params, task="regression")

    def refuse(self, *args, **kwargs) -> None:
        raise AssertionError("the params were validated again")

    monkeypatch.setattr(RashomonParams, "validate", refuse)
    assert estimate_checked_cost(X.shape[0], 10, params) == cost
    result = run_rashomon_interactions(mlp.predict, X, y, task="regression",
                                       feature_names=NAMES, params=params)
    for name, values in expected.arrays().items():
        np.testing.assert_array_equal(result.arrays()[name], values, err_msg=name)
    assert result.loss == expected.loss == "mse"
    # The data is still checked: it is not part of the params.
    with pytest.raises(ValueError, match="y must have shape"):
        run_rashomon_interactions(mlp.predict, X, y[:-1], task="regression",
                                  feature_names=NAMES, params=params)

def test_progress_is_reported_per_stage_and_can_cancel(diabetes, mlp) -> None:
    X, y = diabetes
    params = RashomonParams(delta=0.5, shuffle_times=2, features=("x2", "x3", "x8"))
    seen: list[tuple[str, float]] = []

    def record(fraction: float, stage: str) -> None:
        seen.append((stage, fraction))

    rashomon_interactions(mlp.predict, X, y, task="regression", feature_names=NAMES,
                          params=params, batch_rows=3 * X.shape[0], progress=record)
    stages = [s for s, _ in seen]
    assert [s for i, s in enumerate(stages) if i == 0 or stages[i - 1] != s] == [
        "reference", "search", "main_effects", "interactions"]
    for stage in set(stages):
        fractions = [f for s, f in seen if s == stage]
        assert fractions == sorted(fractions) and fractions[-1] == 1.0
        assert all(0.0 <= f <= 1.0 for f in fractions)

    calls = 0

    def cancel_in_interactions(fraction: float, stage: str) -> None:
        nonlocal calls
        if stage == "interactions" and fraction > 0:
            calls += 1
            raise Cancelled

    for n_jobs in (1, 2):
        with pytest.raises(Cancelled):
            rashomon_interactions(mlp.predict, X, y, task="regression", feature_names=NAMES,
                                  params=params, batch_rows=3 * X.shape[0], n_jobs=n_jobs,
                                  progress=cancel_in_interactions)
    assert calls == 2


@pytest.fixture(scope="module")
def stored(diabetes, mlp) -> tuple[dict, dict]:
    X, y = diabetes
    params = RashomonParams(delta=0.25, shuffle_times=2, features=("x2", "x3", "x8", "x9"))
    res = rashomon_interactions(mlp.predict, X, y, task="regression", feature_names=NAMES,
                                params=params)
    summary = json.loads(json.dumps(res.summary(), allow_nan=False))
    arrays = {k: np.asarray(v, dtype=np.float32) for k, v in res.arrays().items()}
    return summary, arrays


def test_summary_shape(stored) -> None:
    summary, arrays = stored
    assert summary["loss"] == "mse" and summary["epsilon_rate"] == 0.1
    assert len(summary["main_effects"]) == 4
    assert all(m["n_models"] == 10 for m in summary["main_effects"])
    ranges = [r["max"] - r["min"] for r in summary["interactions"]]
    assert ranges == sorted(ranges, reverse=True)
    assert all(r["n_models"] == 12 for r in summary["interactions"])
    assert arrays["masks"].shape == (10, 5, 2)
    assert arrays["fis_clouds"].shape == arrays["fis_in_set"].shape == (6, 12)
    assert arrays["halo"].shape == (6, 12, 2, 2)


def _render(fig) -> None:
    for fmt in ("svg", "png"):
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt)
        assert buf.tell() > 1000


def test_figures_render_svg_and_png(stored) -> None:
    summary, arrays = stored
    swarm = draw_swarm(summary, arrays, max_pairs=3)
    assert swarm.axes[0].get_xlabel() == "feature interaction score"
    assert len(swarm.axes[0].get_yticklabels()) == 3
    halo = draw_halo(summary, arrays)
    widest = summary["interactions"][0]["features"]
    assert halo.axes[0].get_xlabel() == f"loss change along {widest[0]}"
    flipped = draw_halo(summary, arrays, pair=("x9", "x2"))
    assert flipped.axes[0].get_ylabel() == "loss change along x2"
    for fig in (swarm, draw_swarm_main(summary, arrays), halo, flipped,
                draw_search_trace(summary, arrays)):
        _render(fig)


def test_halo_unknown_pair_names_the_pairs(stored) -> None:
    summary, arrays = stored
    with pytest.raises(ValueError, match=r"the pairs are .*x2,x3"):
        draw_halo(summary, arrays, pair=("x2", "x5"))
