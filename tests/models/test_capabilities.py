"""The model boundary: what each format declares, where ``place`` puts a model, and the
tree-subset capability against XGBoost's own per-tree outputs."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import get_args

import joblib
import numpy as np
import onnx
import pytest
import xgboost
from numpy.testing import assert_array_equal
from onnx import TensorProto, helper

from models.capabilities import CAPABILITIES, Capability
from models.errors import UnsupportedOutput
from models.gpu import gpu_visible
from models.loaded import LoadedModel
from models.loading import load_model
from models.readers import NotATreeModel
from tests.model_files import SavedModel

TREES = frozenset({"tree_ensemble"})
XGBOOST_GBTREE = frozenset({"tree_ensemble", "tree_subsets", "predict_from_margin"})

# saved model -> (format, capabilities, serial_predict, probability dtype, input dtype)
DECLARED = {
    "xgboost_regression_json": ("xgboost", XGBOOST_GBTREE, False, np.float32, np.float64),
    "xgboost_binary_ubj": ("xgboost", XGBOOST_GBTREE, False, np.float32, np.float64),
    "xgboost_multiclass_json": ("xgboost", XGBOOST_GBTREE, False, np.float32, np.float64),
    "lightgbm_categorical": ("lightgbm", TREES, False, np.float64, np.float64),
    "lightgbm_multiclass": ("lightgbm", TREES, False, np.float64, np.float64),
    "sklearn_rf_multiclass": ("sklearn", TREES, False, np.float64, np.float64),
    "sklearn_gbm_binary": ("sklearn", TREES, False, np.float64, np.float64),
    "onnx_mlp_regression": ("onnx", frozenset({"permuted_predictor"}), True, np.float64,
                            np.float32),
    "onnx_mlp_multiclass": ("onnx", frozenset({"permuted_predictor"}), True, np.float64,
                            np.float32),
}

NO_GPU_NEEDED = "a GPU is visible here: place('cuda') may really run there"


def _load(saved: SavedModel, fmt: str) -> LoadedModel:
    return load_model(saved.path, format=fmt, n_threads=1)


def test_capabilities_are_the_declared_names() -> None:
    assert set(CAPABILITIES) == set(get_args(Capability))


@pytest.mark.parametrize("name", sorted(DECLARED))
def test_each_format_declares_its_capabilities(saved_models: dict[str, SavedModel],
                                               name: str) -> None:
    fmt, capabilities, serial, probability_dtype, input_dtype = DECLARED[name]
    model = _load(saved_models[name], fmt)
    assert model.capabilities == capabilities
    assert model.serial_predict is serial
    assert model.probability_dtype == probability_dtype
    assert model.input_dtype == input_dtype
    # what is not declared answers None, or refuses with a sentence
    if "tree_subsets" not in capabilities:
        assert model.tree_subsets() is None
    X = saved_models[name].X
    if "permuted_predictor" not in capabilities:
        base = np.arange(len(X))
        assert model.permuted_predictor(X, base, [base[::-1]], rows_per_call=10) is None
    if "predict_from_margin" not in capabilities:
        with pytest.raises(UnsupportedOutput, match="call predict"):
            model.predict_from_margin(np.zeros((len(X), model.n_outputs), dtype=np.float32))
    if "tree_ensemble" not in capabilities:
        with pytest.raises(NotATreeModel):
            model.tree_ensemble()


@pytest.mark.parametrize("fmt", ["pickle", "joblib"])
def test_pickled_scikit_learn_declares_its_trees(saved_models: dict[str, SavedModel],
                                                 fmt: str, tmp_path: Path) -> None:
    saved = saved_models["sklearn_rf_multiclass"]
    path = tmp_path / f"model.{fmt}"
    if fmt == "pickle":
        path.write_bytes(pickle.dumps(saved.native))
    else:
        joblib.dump(saved.native, path)
    model = load_model(path, format=fmt, trust_uploads=True)
    assert model.capabilities == TREES and not model.serial_predict
    assert model.tree_ensemble().n_trees == len(saved.native.estimators_)


@pytest.mark.filterwarnings("ignore:.*booster=dart. is deprecated")  # dart on purpose
@pytest.mark.parametrize("params", [
    {"booster": "dart", "rate_drop": 0.2},
    {"multi_strategy": "multi_output_tree", "objective": "multi:softprob", "num_class": 3}])
def test_xgboost_trees_whose_output_is_not_their_leaf_value_give_no_subsets(
        params: dict, tmp_path: Path) -> None:
    """DART scales its trees' outputs and a vector-leaf tree gives several: the model
    (gbtree in its file) declares the capability, and ``tree_subsets()`` answers None."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(100, 4))
    y = (X[:, 0] > 0) * 1 + (X[:, 1] > 0.5) if "num_class" in params else X[:, 0]
    trained = xgboost.train({**params, "nthread": 1, "max_depth": 2},
                            xgboost.DMatrix(X, y), 5)
    trained.save_model(tmp_path / "model.json")
    model = load_model(tmp_path / "model.json", format="xgboost", n_threads=1)
    assert model.capabilities == XGBOOST_GBTREE
    assert model.tree_subsets() is None
    margin = np.asarray(trained.inplace_predict(X, predict_type="margin"), dtype=np.float32)
    assert_array_equal(model.predict_from_margin(margin, output="label"),
                       model.predict(X, output="label"))


@pytest.mark.filterwarnings("ignore:.*booster=gblinear. is deprecated")  # on purpose
@pytest.mark.parametrize("objective", ["reg:squarederror", "binary:logistic"])
def test_xgboost_linear_model_loads_predicts_and_declares_no_trees(
        objective: str, tmp_path: Path) -> None:
    """A gblinear booster has no trees (XGBoost refuses to list its categories or to
    predict in place): it loads as a model of kind "other", predicts as XGBoost does,
    and declares nothing."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 4))
    y = 2 * X[:, 0] - X[:, 1]
    trained = xgboost.train({"booster": "gblinear", "nthread": 1, "objective": objective},
                            xgboost.DMatrix(X, y > 0 if objective.startswith("binary") else y),
                            10)
    trained.save_model(tmp_path / "model.json")
    model = load_model(tmp_path / "model.json", format="xgboost", n_threads=1)
    assert model.kind == "other" and model.capabilities == frozenset()
    expected = trained.predict(xgboost.DMatrix(X))
    assert_array_equal(model.predict(X)[:, 0],
                       trained.predict(xgboost.DMatrix(X), output_margin=True))
    if objective.startswith("binary"):
        assert_array_equal(model.predict(X, output="probability")[:, 1], expected)
        assert_array_equal(model.predict(X, output="label"), (expected > 0.5).astype(int))
    else:
        assert_array_equal(model.predict(X, output="label"), expected)
    with pytest.raises(NotATreeModel):
        model.tree_ensemble()


def test_onnx_graph_with_a_fixed_batch_declares_no_permuted_predictor(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=1)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 1])],
        [helper.make_tensor("axes", TensorProto.INT64, [1], [1])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    onnx.save(proto, tmp_path / "fixed.onnx")
    model = load_model(tmp_path / "fixed.onnx", format="onnx")
    assert model.capabilities == frozenset() and model.serial_predict
    X = np.arange(15.0).reshape(5, 3)
    assert_array_equal(model.predict(X), X.sum(axis=1, keepdims=True))


def test_torchscript_declares_nothing(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch", reason="torch is not installed (the 'torch' extra)")
    module = torch.jit.script(torch.nn.Sequential(torch.nn.Linear(3, 1)))
    torch.jit.save(module, str(tmp_path / "module.pt"))
    model = load_model(tmp_path / "module.pt", format="torchscript", trust_uploads=True)
    assert model.capabilities == frozenset() and not model.serial_predict
    assert model.place("cuda") in ("cpu", "cuda")


@pytest.mark.skipif(gpu_visible(), reason=NO_GPU_NEEDED)
@pytest.mark.parametrize("name", sorted(DECLARED))
def test_place_cuda_without_a_gpu_returns_cpu(saved_models: dict[str, SavedModel],
                                              name: str) -> None:
    saved = saved_models[name]
    model = _load(saved, DECLARED[name][0])
    on_cpu = model.predict(saved.X)
    assert model.place("cuda") == "cpu"
    assert_array_equal(model.predict(saved.X, device="cuda"), on_cpu)
    assert model.place("cpu") == "cpu"
    assert not hasattr(model, "device_used")  # the answer is returned, not stored
    with pytest.raises(ValueError, match="device"):
        model.place("gpu")  # type: ignore[arg-type]


def _trained(objective: str, tmp_path: Path) -> tuple[xgboost.Booster, LoadedModel,
                                                       np.ndarray]:
    rng = np.random.default_rng(7)
    X = rng.normal(size=(300, 6))
    X[rng.random(X.shape) < 0.05] = np.nan
    z = np.nan_to_num(X)
    params = {"objective": objective, "max_depth": 3, "nthread": 1, "seed": 0}
    if objective.startswith("multi:"):
        params["num_class"] = 3
        y = (z[:, 0] > 0) * 1 + (z[:, 1] > 0.5)
    elif objective.startswith("binary:"):
        y = (z[:, 0] + z[:, 2] > 0) * 1
    else:
        y = 2 * z[:, 0] + z[:, 1] * z[:, 3]
    booster = xgboost.train(params, xgboost.DMatrix(X, y), 12)
    booster.save_model(tmp_path / "model.json")
    return booster, load_model(tmp_path / "model.json", format="xgboost", n_threads=1), X


@pytest.mark.parametrize("objective", ["reg:squarederror", "binary:logistic",
                                       "multi:softprob"])
def test_tree_subsets_are_xgboosts_own_per_tree_outputs(objective: str,
                                                        tmp_path: Path) -> None:
    booster, model, X = _trained(objective, tmp_path)
    trees = model.tree_subsets()
    assert trees is not None
    doc = json.loads(bytes(booster.save_raw("json")))["learner"]["gradient_booster"]["model"]
    assert trees.n_trees == len(doc["trees"]) == booster.num_boosted_rounds() * model.n_outputs
    assert trees.groups == [int(g) for g in doc["tree_info"]]
    values = trees.evaluate(X, tuple(range(trees.n_trees)))
    assert values.dtype == np.float32 and values.shape == (len(X), trees.n_trees)
    # XGBoost's own leaf for each row and tree, and that leaf's stored value
    leaves = booster.predict(xgboost.DMatrix(X), pred_leaf=True).reshape(len(X), -1)
    leaf_values = np.column_stack([
        np.asarray(tree["split_conditions"], dtype=np.float32)[leaves[:, t].astype(np.intp)]
        for t, tree in enumerate(doc["trees"])])
    assert_array_equal(values, leaf_values)
    # any subset, in any order, is those columns
    assert_array_equal(trees.evaluate(X, (5, 1, 3)), values[:, [5, 1, 3]])
    # base margin plus every tree, in tree order in float32, is XGBoost's margin bit for
    # bit, and predict_from_margin turns it into the model's predictions
    margin = np.tile(trees.base_margin(model.n_outputs), (len(X), 1))
    for t, group in enumerate(trees.groups):
        margin[:, group] += values[:, t]
    assert_array_equal(margin.reshape(len(X), -1),
                       np.asarray(booster.inplace_predict(X, predict_type="margin"),
                                  dtype=np.float32).reshape(len(X), -1))
    for output in ("raw", "label") if model.task == "regression" else ("probability", "label"):
        assert_array_equal(model.predict_from_margin(margin, output=output),
                           model.predict(X, output=output))


def test_tree_subsets_name_the_trees_a_column_reaches(tmp_path: Path) -> None:
    """Permuting a column changes the outputs of the trees ``touched`` names, and of no
    other tree."""
    booster, model, X = _trained("reg:squarederror", tmp_path)
    trees = model.tree_subsets()
    assert trees is not None
    every = tuple(range(trees.n_trees))
    values = trees.evaluate(X, every)
    frame = booster.trees_to_dataframe()
    for j in range(X.shape[1]):
        touched = trees.touched([j])
        split_on = sorted(set(frame.loc[frame["Feature"] == f"f{j}", "Tree"]))
        assert list(touched) == split_on
        moved = X.copy()
        moved[:, j] = X[::-1, j]
        untouched = [t for t in every if t not in touched]
        assert_array_equal(trees.evaluate(moved, every)[:, untouched], values[:, untouched])
    assert trees.touched([0, 1]) == tuple(sorted(set(trees.touched([0]))
                                                 | set(trees.touched([1]))))
