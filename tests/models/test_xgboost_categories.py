"""XGBoost models trained on pandas categoricals, fed from a table of text columns.

XGBoost (>= 3.1) stores each categorical feature's category labels in the model; it
re-codes a DataFrame's categories to them (a value's code is its index in the stored
list) and refuses any other value. The model's input built from an Arrow table of
strings must give the predictions and SHAP values XGBoost gives for a DataFrame of the
same values.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import xgboost
from numpy.testing import assert_allclose, assert_array_equal

from explainers.tree_shap import TreeShap
from models.errors import FeatureMismatch
from models.features import build_matrix
from models.inspection import ModelInfo, describe_model
from models.loading import load_model

# Training order differs from sorted order on purpose: codes follow the stored order.
COLORS = ["white", "red", "green", "blue"]
SIZES = ["S", "M", "L", "XL", "XXL"]
LEVELS = [3, 7, 11]


def categorical_frame(seed: int, n: int) -> pd.DataFrame:
    """Numeric, string-categorical (with missing values) and integer-categorical columns."""
    rng = np.random.default_rng(seed)
    color = rng.choice(COLORS, n).astype(object)
    color[rng.random(n) < 0.08] = None
    return pd.DataFrame({
        "a": rng.normal(size=n),
        "color": pd.Categorical(color, categories=COLORS),
        "size": pd.Categorical(rng.choice(SIZES, n), categories=SIZES),
        "level": pd.Categorical(rng.choice(LEVELS, n), categories=LEVELS),
        "b": rng.normal(size=n),
    })


def categorical_targets(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    signal = (frame["a"] + 2.0 * (frame["color"] == "red")
              - 1.5 * frame["size"].isin(["XL", "S"])
              + frame["b"] * (frame["color"] == "blue") + 0.7 * (frame["level"] == 7))
    signal = signal.to_numpy(dtype=np.float64)
    return {"regression": signal, "binary": (signal > 0.5).astype(np.int64),
            "multiclass": np.digitize(signal, [0.0, 1.0]).astype(np.int64)}


def arrow_table(frame: pd.DataFrame) -> pa.Table:
    """The table as a CSV upload reads it: text and integer columns, nulls for blanks."""
    return pa.table({
        "a": pa.array(frame["a"], pa.float64()),
        "color": pa.array(frame["color"].astype(object).where(frame["color"].notna(), None),
                          pa.string()),
        "size": pa.array(frame["size"].astype(str), pa.string()),
        "level": pa.array(frame["level"].astype(np.int64), pa.int64()),
        "b": pa.array(frame["b"], pa.float64()),
    })


def train(task: str, frame: pd.DataFrame, path: Path, *, max_cat_to_onehot: int = 1
          ) -> xgboost.XGBModel:
    """max_cat_to_onehot=1: partition splits (a set of categories goes right) everywhere;
    above a feature's number of categories: one-hot splits (one category goes right)."""
    y = categorical_targets(frame)[task]
    params = {"n_estimators": 15, "max_depth": 4, "enable_categorical": True,
              "max_cat_to_onehot": max_cat_to_onehot, "n_jobs": 1, "random_state": 0}
    model = (xgboost.XGBRegressor(**params) if task == "regression"
             else xgboost.XGBClassifier(**params))
    model.fit(frame, y)
    model.save_model(path)
    return model


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return categorical_frame(0, 400)


def _info(path: Path) -> ModelInfo:
    return describe_model(str(path))


@pytest.mark.parametrize("ext", ["json", "ubj"])
def test_stored_categories_are_read_in_code_order(frame: pd.DataFrame, tmp_path: Path,
                                                  ext: str) -> None:
    path = tmp_path / f"m.{ext}"
    train("regression", frame, path)
    info = _info(path)
    assert info.categories == {"color": COLORS, "size": SIZES,
                               "level": [str(v) for v in LEVELS]}
    assert info.details["unseen_categories"] == "error"
    assert info.details["capabilities"]["tree_shap"] is True


@pytest.mark.parametrize("onehot", [1, 8])
@pytest.mark.parametrize("task", ["regression", "binary", "multiclass"])
def test_text_columns_predict_and_explain_as_xgboost_does(frame: pd.DataFrame,
                                                          tmp_path: Path, task: str,
                                                          onehot: int) -> None:
    path = tmp_path / "m.json"
    booster = train(task, frame, path, max_cat_to_onehot=onehot).get_booster()
    info = _info(path)
    X = build_matrix(arrow_table(frame), info, target=None)
    model = load_model(path, format="xgboost")
    dmatrix = xgboost.DMatrix(frame, enable_categorical=True)

    expected = booster.predict(dmatrix, output_margin=True).reshape(len(frame), -1)
    assert_array_equal(model.predict(X, output="raw"), expected.astype(np.float64))

    ensemble = model.tree_ensemble()
    assert any(tree.has_categorical for tree in ensemble.trees)
    explainer = TreeShap(ensemble)
    values, interactions = explainer.explain(X, interactions=True)
    contribs = booster.predict(dmatrix, pred_contribs=True)
    pairs = booster.predict(dmatrix, pred_interactions=True)
    if task == "multiclass":  # XGBoost: [n, K, F + 1]; ours: [n, K, F]
        contribs, pairs = contribs[:, :, :-1], pairs[:, :, :-1, :-1]
    else:
        contribs, pairs = contribs[:, :-1], pairs[:, :-1, :-1]
    scale = float(np.abs(contribs).max())
    assert_allclose(explainer.explain(X)[0], contribs, atol=1e-6 * scale)
    assert_allclose(values, contribs, atol=1e-5 * scale)
    assert_allclose(interactions, pairs, atol=1e-5 * scale)


def test_categories_of_a_dictionary_column_are_matched_by_label(frame: pd.DataFrame,
                                                                tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    booster = train("regression", frame, path).get_booster()
    table = arrow_table(frame)
    # A Parquet category column: its own dictionary order is not the model's.
    table = table.set_column(2, "size", table.column("size").dictionary_encode())
    X = build_matrix(table, _info(path), target=None)
    assert_array_equal(load_model(path, format="xgboost").predict(X)[:, 0],
                       booster.predict(xgboost.DMatrix(frame, enable_categorical=True),
                                       output_margin=True))


def test_unseen_categories_are_refused_as_xgboost_refuses_them(frame: pd.DataFrame,
                                                               tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    booster = train("regression", frame, path).get_booster()
    new = frame.head(6).copy()
    new["color"] = pd.Categorical(["red", "purple", None, "blue", "green", "purple"])
    with pytest.raises(xgboost.core.XGBoostError, match="not in the training set"):
        booster.inplace_predict(new)
    with pytest.raises(FeatureMismatch, match=r"color \('purple'\)") as error:
        build_matrix(arrow_table(new), _info(path), target=None)
    assert error.value.code == "feature_mismatch"
