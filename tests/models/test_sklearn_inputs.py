"""scikit-learn models that take text columns: HistGradientBoosting with categorical
features, and Pipelines whose ColumnTransformer selects columns by name.

Each is saved with skops, loaded through the allowlist, fed a matrix built from an Arrow
table of strings (models.features) and compared with the estimator's own predict on a
DataFrame of the same values.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import skops.io
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

from explainers.tree_shap import TreeShap
from models.errors import UntrustedType
from models.features import build_matrix
from models.inspection import describe_model
from models.loading import load_model
from tests.explainers.test_tree_shap import oracle

COLORS = ["red", "green", "blue", "white"]


def text_frame(seed: int, n: int) -> pd.DataFrame:
    """Float32-representable numbers (what TreeSHAP reads exactly), an integer column and
    a text column with missing values, as pandas reads them from a CSV."""
    rng = np.random.default_rng(seed)
    color = rng.choice(COLORS, n).astype(object)
    color[rng.random(n) < 0.08] = np.nan
    return pd.DataFrame({
        "a": rng.normal(size=n).astype(np.float32).astype(np.float64),
        "color": color,
        "k": rng.integers(0, 4, n),
        "b": rng.normal(size=n).astype(np.float32).astype(np.float64),
    })


def target(frame: pd.DataFrame) -> np.ndarray:
    return (frame["a"] + 2.0 * (frame["color"] == "red") - 0.8 * (frame["color"] == "blue")
            + 0.4 * frame["k"] + frame["b"] * (frame["color"] == "green")).to_numpy(float)


def arrow_table(frame: pd.DataFrame) -> pa.Table:
    """The table as a CSV upload reads it: text column with nulls, int64, float64."""
    color = [None if v is None or v != v else str(v) for v in frame["color"]]
    return pa.table({"a": frame["a"].to_numpy(), "color": pa.array(color, pa.string()),
                     "k": frame["k"].to_numpy(np.int64), "b": frame["b"].to_numpy()})


def saved(estimator: object, path: Path) -> Path:
    skops.io.dump(estimator, path)
    return path


def test_hist_gradient_boosting_with_categorical_features_passes_the_allowlist(
        tmp_path: Path) -> None:
    frame = text_frame(0, 300)
    X = frame[["a", "k", "b"]].to_numpy(np.float64)
    model = HistGradientBoostingRegressor(max_iter=15, categorical_features=[1],
                                          random_state=0).fit(X, target(frame))
    path = saved(model, tmp_path / "hgb.skops")
    # What the file holds beyond plain types: the preprocessor's validation partial.
    assert sorted(skops.io.get_untrusted_types(file=path)) == [
        "functools.partial",
        "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
        "sklearn.utils.validation.check_array",
    ]
    loaded = load_model(path, format="sklearn")
    assert_array_equal(loaded.predict(X, output="label"), model.predict(X))
    info = describe_model(str(path))
    assert info.kind == "tree" and info.details["capabilities"]["tree_shap"] is True
    # shap's TreeExplainer reads categorical HistGradientBoosting splits as numeric ones
    # (its values do not add up to predict here); the oracle is brute force.
    ensemble = loaded.tree_ensemble()
    explainer = TreeShap(ensemble)
    values, _ = explainer.explain(X)
    assert_allclose(values.sum(axis=1) + explainer.base_values[0], model.predict(X),
                    atol=1e-5)
    for i in range(5):
        assert_allclose(values[i], oracle(ensemble, X[i])[0][0], atol=1e-5)


@pytest.mark.parametrize("function", [os.system, np.save, eval])
def test_a_partial_of_any_other_function_is_still_refused(tmp_path: Path,
                                                          function: object) -> None:
    pipe = make_pipeline(FunctionTransformer(functools.partial(function, "x")),
                         LinearRegression())
    path = saved(pipe, tmp_path / "partial.skops")
    with pytest.raises(UntrustedType) as error:
        load_model(path, format="sklearn")
    assert error.value.types == [t for t in skops.io.get_untrusted_types(file=path)
                                 if t != "functools.partial"]


@pytest.mark.parametrize("task", ["regression", "binary"])
def test_hist_gradient_boosting_on_text_categories(tmp_path: Path, task: str) -> None:
    frame = text_frame(1, 400)
    train = frame.assign(color=pd.Categorical(frame["color"], categories=COLORS))
    y = target(frame)
    if task == "regression":
        model = HistGradientBoostingRegressor(max_iter=15, random_state=0)
    else:
        model = HistGradientBoostingClassifier(max_iter=15, random_state=0)
        y = (y > 0.5).astype(np.int64)
    model.fit(train, y)  # categorical_features="from_dtype"
    path = saved(model, tmp_path / "hgb.skops")
    info = describe_model(str(path))
    assert info.categories == {"color": sorted(COLORS)}
    assert info.details["input"] == "dataframe"

    rows = text_frame(2, 60)
    rows.loc[3, "color"] = "purple"  # unseen: scikit-learn treats it as missing
    X = build_matrix(arrow_table(rows), info, target=None)
    loaded = load_model(path, format="sklearn")
    raw = "predict" if task == "regression" else "decision_function"
    assert_array_equal(loaded.predict(X, output="raw")[:, 0], getattr(model, raw)(rows))
    if task == "binary":
        assert_array_equal(loaded.predict(X, output="probability"), model.predict_proba(rows))

    ensemble = loaded.tree_ensemble()
    assert any(tree.has_categorical for tree in ensemble.trees)
    explainer = TreeShap(ensemble)
    values, _ = explainer.explain(X)
    margin = getattr(model, raw)(rows)
    assert_allclose(values.sum(axis=1) + explainer.base_values[0], margin, atol=1e-5)
    for i in (0, 3, 5):  # exact Shapley values of the ensemble, by brute force
        assert_allclose(values[i], oracle(ensemble, X[i])[0][0], atol=1e-5)


def one_hot_pipeline(task: str, handle_unknown: str = "ignore") -> Pipeline:
    columns = ColumnTransformer([
        ("text", OneHotEncoder(handle_unknown=handle_unknown), ["color"]),
        ("numbers", StandardScaler(), ["a", "b", "k"]),
    ])
    final = LinearRegression() if task == "regression" else LogisticRegression()
    return make_pipeline(columns, final)


def test_column_transformer_pipeline_gets_a_dataframe(tmp_path: Path) -> None:
    frame = text_frame(3, 300).dropna()
    pipe = one_hot_pipeline("binary").fit(frame, target(frame) > 0.5)
    path = saved(pipe, tmp_path / "pipe.skops")
    info = describe_model(str(path))
    assert info.feature_names == ["a", "color", "k", "b"]
    assert info.categories == {"color": sorted(COLORS)}
    assert info.details["input"] == "dataframe"

    rows = text_frame(4, 80)
    rows.loc[7, "color"] = "purple"  # unseen: ignored by the encoder, as missing is
    X = build_matrix(arrow_table(rows), info, target=None)
    loaded = load_model(path, format="sklearn")
    assert_array_equal(loaded.predict(X, output="probability"), pipe.predict_proba(rows))
    assert_array_equal(loaded.predict(X, output="label"), pipe.predict(rows).astype(np.int64))


def test_column_transformer_by_name_needs_the_frame_even_without_text(
        tmp_path: Path) -> None:
    frame = text_frame(5, 200)[["a", "k", "b"]]
    pipe = make_pipeline(ColumnTransformer([("s", StandardScaler(), ["b", "a"])]),
                         LinearRegression()).fit(frame, frame["a"] * 2 - frame["b"])
    path = saved(pipe, tmp_path / "names.skops")
    info = describe_model(str(path))
    assert info.details["input"] == "dataframe" and info.categories == {}
    loaded = load_model(path, format="sklearn")
    assert_array_equal(loaded.predict(frame.to_numpy(np.float64), output="label"),
                       pipe.predict(frame))
