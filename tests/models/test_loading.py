"""Loading every format and predicting exactly as the library does; hostile files."""

from __future__ import annotations

import json
import pickle
import re
import zipfile
from pathlib import Path

import joblib
import lightgbm
import numpy as np
import onnx
import pandas as pd
import pytest
import skops.io
import xgboost
from numpy.testing import assert_array_equal
from onnx import TensorProto, helper
from sklearn.ensemble import RandomForestRegressor

from models.errors import (
    InvalidModel,
    UnsupportedModelFormat,
    UnsupportedOutput,
    UntrustedFormat,
    UntrustedType,
)
from models.loaded import LoadedModel
from models.loading import load_model
from models.readers import NotATreeModel
from tests.model_files import FEATURE_NAMES, SavedModel
from tests.onnx_reference import onnx_cuda_available

FORMAT_OF = {"xgboost": "xgboost", "lightgbm": "lightgbm", "sklearn": "sklearn", "onnx": "onnx"}


def _load(saved: SavedModel, **kwargs: object) -> LoadedModel:
    fmt = FORMAT_OF[
        saved.path.name.split("_")[0].replace("xgb", "xgboost").replace("lgb", "lightgbm")
    ]
    return load_model(saved.path, format=fmt, n_threads=1, **kwargs)  # type: ignore[arg-type]


def _library_outputs(saved: SavedModel) -> dict[str, np.ndarray]:
    """raw / probability / label computed by calling the library directly."""
    native, X = saved.native, saved.X
    if isinstance(native, xgboost.Booster):
        d = xgboost.DMatrix(X, missing=np.nan, feature_names=native.feature_names)
        margin = native.predict(d, output_margin=True).reshape(len(X), -1)
        value = native.predict(d)
        if saved.task == "regression":
            return {"raw": margin, "label": value}
        proba = np.column_stack([1 - value, value]) if saved.task == "binary" else value
        return {"raw": margin, "probability": proba, "label": np.argmax(proba, axis=1)}
    if isinstance(native, lightgbm.Booster):
        raw = native.predict(X, raw_score=True).reshape(len(X), -1)
        value = native.predict(X)
        proba = np.column_stack([1 - value, value]) if saved.task == "binary" else value
        return {"raw": raw, "probability": proba, "label": np.argmax(proba, axis=1)}
    if saved.path.suffix == ".onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(
            saved.path.read_bytes(), providers=["CPUExecutionProvider"]
        )
        outs = session.run(None, {"X": X.astype(np.float32)})
        if saved.task == "regression":
            return {"raw": outs[0], "label": outs[0].reshape(-1)}
        return {"raw": outs[1], "probability": outs[1], "label": np.argmax(outs[1], axis=1)}
    frame = pd.DataFrame(X, columns=FEATURE_NAMES) if hasattr(native, "feature_names_in_") else X
    if saved.task == "regression":
        return {"raw": native.predict(frame).reshape(-1, 1), "label": native.predict(frame)}
    raw = (
        native.decision_function(frame)
        if "GradientBoosting" in type(native).__name__
        else native.predict_proba(frame)
    )
    label = np.searchsorted(native.classes_, native.predict(frame))
    return {
        "raw": raw.reshape(len(X), -1),
        "probability": native.predict_proba(frame),
        "label": label,
    }


NAMES = [
    "xgboost_regression_json",
    "xgboost_regression_ubj",
    "xgboost_binary_json",
    "xgboost_binary_ubj",
    "xgboost_multiclass_json",
    "xgboost_multiclass_ubj",
    "lightgbm_categorical",
    "lightgbm_multiclass",
    "sklearn_rf_multiclass",
    "sklearn_gbm_binary",
    "sklearn_hgb_regression",
    "sklearn_dt_regression",
    "onnx_mlp_regression",
    "onnx_mlp_multiclass",
]


@pytest.mark.parametrize("name", NAMES)
def test_predictions_equal_the_library(saved_models: dict[str, SavedModel], name: str) -> None:
    saved = saved_models[name]
    model = _load(saved)
    assert model.task == saved.task
    expected = _library_outputs(saved)
    for output, reference in expected.items():
        got = model.predict(saved.X, output=output)  # type: ignore[arg-type]
        assert got.dtype == (
            np.int64 if output == "label" and saved.task != "regression" else np.float64
        )
        assert_array_equal(got, np.asarray(reference, dtype=got.dtype).reshape(got.shape))
    assert model.predict(saved.X).shape == (len(saved.X), model.n_outputs)
    # Batching must not change a single number.
    assert_array_equal(model.predict(saved.X, batch_rows=7), model.predict(saved.X))
    if saved.task != "regression":
        assert model.classes == [0, 1] if saved.task == "binary" else [0, 1, 2]


def test_onnx_matches_sklearn_mlp(saved_models: dict[str, SavedModel]) -> None:
    saved = saved_models["onnx_mlp_multiclass"]
    model = _load(saved)
    np.testing.assert_allclose(
        model.predict(saved.X, output="probability"), saved.native.predict_proba(saved.X), atol=1e-5
    )
    assert model.kind == "neural" and model.n_outputs == 3


def test_model_facts(saved_models: dict[str, SavedModel]) -> None:
    lgb = _load(saved_models["lightgbm_categorical"])
    assert lgb.feature_names == ["f0", "f1", "f2", "f3", "color"]
    assert lgb.categories == {"color": ["red", "green", "blue", "white"]}
    assert _load(saved_models["lightgbm_multiclass"]).feature_names is None  # Column_i placeholders
    gbm = _load(saved_models["sklearn_gbm_binary"])
    assert (gbm.n_outputs, gbm.details["raw_output"]) == (1, "decision_function")
    rf = _load(saved_models["sklearn_rf_multiclass"])
    assert (rf.n_outputs, rf.kind, rf.feature_names) == (3, "tree", FEATURE_NAMES)
    xgb = _load(saved_models["xgboost_multiclass_ubj"])
    assert (xgb.n_outputs, xgb.details["objective"]) == (3, "multi:softprob")


def test_probability_of_regression_is_refused(saved_models: dict[str, SavedModel]) -> None:
    model = _load(saved_models["xgboost_regression_json"])
    with pytest.raises(UnsupportedOutput, match="regression"):
        model.predict(np.zeros((2, 5)), output="probability")
    with pytest.raises(ValueError, match="shape"):
        model.predict(np.zeros((2, 4)))


def test_cuda_request_falls_back_or_runs(saved_models: dict[str, SavedModel]) -> None:
    saved = saved_models["xgboost_binary_json"]
    model = _load(saved)
    assert model.place("cuda") in ("cpu", "cuda")
    got = model.predict(saved.X, device="cuda")
    assert model.place("cpu") == "cpu"
    np.testing.assert_allclose(got, model.predict(saved.X, device="cpu"), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["onnx_mlp_regression", "onnx_mlp_multiclass"])
def test_onnx_takes_float32_rows_as_they_are(saved_models: dict[str, SavedModel],
                                            name: str) -> None:
    saved = saved_models[name]
    model = _load(saved)
    assert model.input_dtype == np.float32
    for output in ("raw", "label"):
        got = model.predict(saved.X.astype(np.float32), output=output)
        np.testing.assert_array_equal(got, model.predict(saved.X, output=output))
    assert _load(saved_models["xgboost_binary_json"]).input_dtype == np.float64


@pytest.mark.parametrize("name", ["onnx_mlp_regression", "onnx_mlp_multiclass"])
def test_onnx_on_the_cpu_splits_large_calls_without_changing_a_bit(
        saved_models: dict[str, SavedModel], name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows go to onnxruntime in calls of ONNX_CPU_CALL_ROWS (cache-sized); every row's
    output is the one a single call over all rows gives."""
    import onnxruntime

    from models.loaders import onnx as onnx_loader

    saved = saved_models[name]
    rows = np.repeat(saved.X, 7, axis=0)[:-3]
    session = onnxruntime.InferenceSession(str(saved.path), providers=["CPUExecutionProvider"])
    graph_input = session.get_inputs()[0].name
    whole = session.run(None, {graph_input: rows.astype(np.float32)})
    expected = whole[1] if len(whole) > 1 else whole[0]  # probabilities, or the prediction
    model = _load(saved)
    monkeypatch.setattr(onnx_loader, "ONNX_CPU_CALL_ROWS", 17)
    assert rows.shape[0] > 3 * 17
    got = model.predict(rows, output="raw")
    assert_array_equal(got, np.asarray(expected, dtype=np.float64).reshape(rows.shape[0], -1))


@pytest.mark.skipif(not onnx_cuda_available(),
                    reason="no CUDA GPU with onnxruntime's CUDA provider (onnxruntime-gpu) here")
@pytest.mark.parametrize("name", ["onnx_mlp_regression", "onnx_mlp_multiclass"])
def test_onnx_runs_on_cuda(saved_models: dict[str, SavedModel], name: str) -> None:
    saved = saved_models[name]
    model = _load(saved)
    cpu = model.predict(saved.X, device="cpu")
    assert model.place("cuda") == "cuda"
    gpu = model.predict(saved.X, device="cuda")
    # float32 kernels on both; the GPU's sums run in another order
    np.testing.assert_allclose(gpu, cpu, rtol=1e-4, atol=1e-5 * max(1.0, np.abs(cpu).max()))
    assert model.place("cpu") == "cpu"


def test_arguments_are_reconciled(saved_models: dict[str, SavedModel]) -> None:
    saved = saved_models["xgboost_binary_json"]
    assert _load(saved, classes=["no", "yes"]).classes == ["no", "yes"]
    with pytest.raises(InvalidModel, match="3 classes"):
        _load(saved, classes=["a", "b", "c"])
    with pytest.raises(InvalidModel, match="binary"):
        _load(saved, task="regression")
    with pytest.raises(InvalidModel, match="names stored"):
        _load(saved, feature_names=["a", "b", "c", "d", "e"])
    onnx_model = _load(saved_models["onnx_mlp_regression"], feature_names=list("abcde"))
    assert onnx_model.feature_names == list("abcde")


def test_tree_ensemble_is_cached_and_refused_for_neural(
    saved_models: dict[str, SavedModel],
) -> None:
    model = _load(saved_models["xgboost_binary_json"])
    assert model.tree_ensemble() is model.tree_ensemble()
    assert model.tree_ensemble().n_trees == 8
    with pytest.raises(NotATreeModel):
        _load(saved_models["onnx_mlp_regression"]).tree_ensemble()


# ------------------------------------------------------------------ hostile files


@pytest.mark.parametrize("name", ["xgboost_binary_json", "xgboost_binary_ubj"])
def test_truncated_xgboost_is_invalid(
    saved_models: dict[str, SavedModel], name: str, tmp_path: Path
) -> None:
    raw = saved_models[name].path.read_bytes()
    path = tmp_path / "cut"
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InvalidModel, match="XGBoost"):
        load_model(path, format="xgboost")


def test_text_that_is_not_lightgbm(tmp_path: Path) -> None:
    path = tmp_path / "model.txt"
    path.write_text("tree\nthis is a shopping list\n")
    with pytest.raises(InvalidModel, match="LightGBM"):
        load_model(path, format="lightgbm")


def _edit(saved: SavedModel, tmp_path: Path, old: str, new: str) -> Path:
    text = saved.path.read_text()
    assert re.search(old, text, flags=re.MULTILINE)
    path = tmp_path / "edited"
    path.write_text(re.sub(old, new, text, count=1, flags=re.MULTILINE))
    return path


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (r"^num_leaves=\d+$", "num_leaves=2000000000"),  # crashes LightGBM's parser unchecked
        (
            r"^tree_sizes=.*$",
            "tree_sizes=" + " ".join(["999999999"] * 18),
        ),  # segfaults it unchecked
        (r"^num_class=3$", "num_class=2000000000"),
    ],
)
def test_lightgbm_size_claims_are_refused(
    saved_models: dict[str, SavedModel], tmp_path: Path, old: str, new: str
) -> None:
    path = _edit(saved_models["lightgbm_multiclass"], tmp_path, old, new)
    with pytest.raises(InvalidModel, match="claims"):
        load_model(path, format="lightgbm")


@pytest.mark.parametrize("key", ["num_nodes", "num_trees"])
def test_xgboost_size_claims_are_refused(
    saved_models: dict[str, SavedModel], tmp_path: Path, key: str
) -> None:
    model = json.loads(saved_models["xgboost_binary_json"].path.read_text())
    booster = model["learner"]["gradient_booster"]["model"]
    if key == "num_nodes":
        booster["trees"][0]["tree_param"]["num_nodes"] = "2000000000"
    else:
        booster["gbtree_model_param"]["num_trees"] = "2000000000"
    path = tmp_path / "huge.json"
    path.write_text(json.dumps(model))
    with pytest.raises(InvalidModel):
        load_model(path, format="xgboost")


def test_lightgbm_linear_tree_loads_and_says_so(model_data: tuple, tmp_path: Path) -> None:
    X, y = model_data
    booster = lightgbm.train(
        {
            "objective": "regression",
            "linear_tree": True,
            "num_leaves": 4,
            "num_threads": 1,
            "verbose": -1,
        },
        lightgbm.Dataset(X, y["regression"]),
        3,
    )
    path = tmp_path / "linear.txt"
    booster.save_model(path)
    model = load_model(path, format="lightgbm")
    assert model.details["linear_tree"] is True
    assert_array_equal(model.predict(X, output="label"), booster.predict(X))


class Marker:
    """A type no allowlist knows: a skops file holding it must be refused."""


def test_skops_untrusted_type_is_named(model_data: tuple, tmp_path: Path) -> None:
    X, y = model_data
    forest = RandomForestRegressor(n_estimators=2, max_depth=2, random_state=0).fit(
        X, y["regression"]
    )
    forest.marker_ = Marker()
    path = tmp_path / "custom.skops"
    skops.io.dump(forest, path)
    with pytest.raises(UntrustedType) as info:
        load_model(path, format="sklearn")
    assert info.value.types == [f"{__name__}.Marker"]
    assert f"{__name__}.Marker" in str(info.value)


def test_skops_function_is_refused(tmp_path: Path) -> None:
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    # Never fitted: the file is refused before anything in it could run.
    pipe = make_pipeline(FunctionTransformer(eval), RandomForestRegressor(n_estimators=2))
    path = tmp_path / "fn.skops"
    skops.io.dump(pipe, path)
    with pytest.raises(UntrustedType, match="builtins.eval"):
        load_model(path, format="sklearn")


@pytest.mark.parametrize("fmt", ["pickle", "joblib", "torchscript"])
def test_code_running_formats_are_refused_untrusted(
    model_data: tuple, tmp_path: Path, fmt: str
) -> None:
    X, y = model_data
    path = tmp_path / "model.bin"
    joblib.dump(RandomForestRegressor(n_estimators=2).fit(X, y["regression"]), path, compress=3)
    with pytest.raises(UntrustedFormat) as info:
        load_model(path, format=fmt)
    assert (
        info.value.status == 415
        and "skops.io.dump" in str(info.value)
        and "ONNX" in str(info.value)
    )


def test_trusted_pickle_loads_an_estimator(model_data: tuple, tmp_path: Path) -> None:
    X, y = model_data
    forest = RandomForestRegressor(n_estimators=3, max_depth=3, random_state=0).fit(
        X, y["regression"]
    )
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(forest))
    model = load_model(path, format="pickle", trust_uploads=True)
    assert_array_equal(model.predict(X, output="label"), forest.predict(X))
    path.write_bytes(pickle.dumps({"not": "an estimator"}))
    with pytest.raises(InvalidModel, match="scikit-learn"):
        load_model(path, format="pickle", trust_uploads=True)


def test_trusted_torchscript_without_torch(tmp_path: Path) -> None:
    pytest.importorskip("models.formats")
    try:
        import torch  # noqa: F401
    except ImportError:
        path = tmp_path / "module.pt"
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("module/constants.pkl", b"\x80\x02).")
            archive.writestr("module/code/__torch__.py", "")
        from models.formats import detect_format

        assert detect_format(path) == "torchscript"
        with pytest.raises(UnsupportedModelFormat, match="torch"):
            load_model(path, format="torchscript", trust_uploads=True)
    else:
        pytest.skip("torch is installed: the missing-torch message cannot be checked")


def _onnx_file(tmp_path: Path, inputs: list, outputs: list, nodes: list) -> Path:
    graph = helper.make_graph(nodes, "g", inputs, outputs)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    path = tmp_path / "graph.onnx"
    onnx.save(proto, path)
    return path


def test_onnx_two_inputs_is_invalid(tmp_path: Path) -> None:
    path = _onnx_file(
        tmp_path,
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None, 3]) for n in ("a", "b")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])],
        [helper.make_node("Add", ["a", "b"], ["y"])],
    )
    with pytest.raises(InvalidModel, match="2 inputs"):
        load_model(path, format="onnx")


def test_onnx_string_input_is_invalid(tmp_path: Path) -> None:
    path = _onnx_file(
        tmp_path,
        [helper.make_tensor_value_info("s", TensorProto.STRING, [None, 3])],
        [helper.make_tensor_value_info("y", TensorProto.STRING, [None, 3])],
        [helper.make_node("Identity", ["s"], ["y"])],
    )
    with pytest.raises(InvalidModel, match="tensor\\(string\\)"):
        load_model(path, format="onnx")


def test_onnx_multi_column_output_needs_task(tmp_path: Path) -> None:
    path = _onnx_file(
        tmp_path,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])],
        [helper.make_node("Softmax", ["x"], ["y"], axis=1)],
    )
    with pytest.raises(InvalidModel, match="task="):
        load_model(path, format="onnx")
    model = load_model(path, format="onnx", task="multiclass")
    X = np.array([[0.0, 1.0, 2.0]])
    assert_array_equal(model.predict(X, output="probability"), model.predict(X))  # already softmax
    assert model.predict(X, output="label").tolist() == [2]


def test_onnx_zipmap_is_explained(model_data: tuple, tmp_path: Path) -> None:
    from skl2onnx import to_onnx
    from sklearn.tree import DecisionTreeClassifier

    X, y = model_data
    tree = DecisionTreeClassifier(max_depth=2).fit(X, y["binary"])
    path = tmp_path / "zipmap.onnx"
    path.write_bytes(to_onnx(tree, X[:1].astype(np.float32), target_opset=17).SerializeToString())
    with pytest.raises(InvalidModel, match="zipmap"):
        load_model(path, format="onnx")


@pytest.mark.parametrize("objective", ["reg:squarederror", "reg:logistic", "count:poisson",
                                       "binary:logistic", "multi:softprob", "multi:softmax"])
def test_xgboost_predictions_from_margins_are_the_models_own(objective, tmp_path):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(500, 6))
    X[rng.random(X.shape) < 0.05] = np.nan
    z = np.nan_to_num(X)
    y = {"reg:squarederror": 2 * z[:, 0], "reg:logistic": (z[:, 0] > 0) * 1.0,
         "count:poisson": np.exp(z[:, 0]).round(), "binary:logistic": (z[:, 0] > 0) * 1,
         }.get(objective, (z[:, 0] > 0) * 1 + (z[:, 1] > 0.5))
    params = {"objective": objective, "max_depth": 3, "nthread": 1}
    if objective.startswith("multi:"):
        params["num_class"] = 3
    booster = xgboost.train(params, xgboost.DMatrix(X, y), 15)
    booster.save_model(tmp_path / "model.json")
    model = load_model(tmp_path / "model.json", format="xgboost", n_threads=1)
    margin = booster.inplace_predict(X, predict_type="margin").astype(np.float32)
    outputs = ["raw", "label"] + ([] if model.task == "regression" else ["probability"])
    for output in outputs:
        assert_array_equal(model.predict_from_margin(margin, output=output),
                           model.predict(X, output=output))
    # a different margin gives different predictions: the margin is really used
    assert not np.array_equal(model.predict_from_margin(2 * margin + 1, output=outputs[-1]),
                              model.predict(X, output=outputs[-1]))


def test_predictions_from_margins_are_refused_for_other_libraries(tmp_path):
    X = np.random.default_rng(0).normal(size=(100, 3))
    est = lightgbm.LGBMRegressor(n_estimators=3, verbose=-1).fit(X, X[:, 0])
    est.booster_.save_model(tmp_path / "model.txt")
    model = load_model(tmp_path / "model.txt", format="lightgbm", n_threads=1)
    with pytest.raises(UnsupportedOutput, match="call predict"):
        model.predict_from_margin(np.zeros((100, 1), dtype=np.float32))


def _mlp_cases(X: np.ndarray, y: dict[str, np.ndarray]) -> dict[str, tuple[object, str]]:
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier, MLPRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def mlp(kind: type, *hidden: int) -> object:
        return kind(hidden_layer_sizes=hidden, max_iter=60, random_state=0)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return {
            "mlp_regressor": (mlp(MLPRegressor, 8).fit(X, y["regression"]), "regression"),
            "scaled_mlp_regressor": (make_pipeline(StandardScaler(), mlp(MLPRegressor, 16, 8))
                                     .fit(X * 30 + 5, y["regression"]), "regression"),
            "two_outputs": (mlp(MLPRegressor, 8).fit(
                X, np.column_stack([y["regression"], -y["regression"]])), "regression"),
            "scaled_binary": (make_pipeline(StandardScaler(), StandardScaler(with_mean=False),
                                            mlp(MLPClassifier, 8))
                              .fit(X * 30 + 5, y["binary"]), "binary"),
            "scaled_multiclass": (make_pipeline(StandardScaler(with_std=False),
                                                mlp(MLPClassifier, 8))
                                  .fit(X, y["multiclass"]), "multiclass"),
        }


def test_scikit_learn_mlps_predict_bit_for_bit_without_per_call_checks(
        model_data: tuple, tmp_path: Path) -> None:
    """The unchecked path for MLPs (and StandardScaler pipelines of them) gives exactly
    scikit-learn's predict and predict_proba, and NaN rows still get scikit-learn's error."""
    import sklearn

    from models.loaders.sklearn import _unchecked_methods

    X, y = model_data
    rows = np.random.default_rng(1).normal(size=(500, X.shape[1])) * 30 + 5
    for name, (estimator, task) in _mlp_cases(X, y).items():
        methods = _unchecked_methods(estimator)
        assert "predict" in methods, name
        path = tmp_path / f"{name}.skops"
        skops.io.dump(estimator, path)
        model = load_model(path, format="sklearn", task=task)
        assert model._predictor._unchecked, name  # the loaded model takes the path
        for output, method in (("label", "predict"), ("probability", "predict_proba")):
            if output == "probability" and task == "regression":
                continue
            assert method in methods, (name, method)
            expected = getattr(estimator, method)(rows)
            assert_array_equal(methods[method](rows), expected, err_msg=f"{name} {method}")
            got = model.predict(rows, output=output)
            if output == "label" and task != "regression":
                expected = np.searchsorted(estimator.classes_, expected)
            assert_array_equal(got, expected.reshape(got.shape), err_msg=f"{name} {output}")
        bad = rows.copy()
        bad[3, 1] = np.nan
        with pytest.raises(ValueError, match="NaN"):
            model.predict(bad, output="label")
        with sklearn.config_context(assume_finite=True):  # the caller vouches: unchecked
            assert np.isnan(model.predict(bad, output="label")).any() or task != "regression"


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_other_scikit_learn_models_are_called_as_they_are(model_data: tuple) -> None:
    from sklearn.neural_network import MLPRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import MinMaxScaler

    from models.loaders.sklearn import _unchecked_methods

    X, y = model_data

    class MyMLP(MLPRegressor):
        pass

    assert _unchecked_methods(RandomForestRegressor(n_estimators=2).fit(X, y["regression"])) == {}
    assert _unchecked_methods(make_pipeline(MinMaxScaler(), MLPRegressor(max_iter=5))
                              .fit(X, y["regression"])) == {}
    assert _unchecked_methods(MyMLP(max_iter=5).fit(X, y["regression"])) == {}
