"""Matching dataset columns to model features, and building the model's input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from numpy.testing import assert_array_equal

from models.errors import FeatureMismatch, TargetMismatch
from models.features import build_matrix, check_compatible, target_vector
from models.inspection import ModelInfo
from models.loading import load_model
from tests.model_files import SavedModel


def _info(feature_names: list[str] | None, n_features: int = 3, **kwargs: object) -> ModelInfo:
    base = {
        "format": "xgboost",
        "kind": "tree",
        "task": "regression",
        "n_features": n_features,
        "feature_names": feature_names,
        "n_outputs": 1,
        "classes": None,
    }
    return ModelInfo(**{**base, **kwargs})  # type: ignore[arg-type]


def test_matches_by_name_in_model_order() -> None:
    columns = [("c", "float"), ("y", "float"), ("extra", "string"), ("a", "int"), ("b", "bool")]
    assert check_compatible(columns, _info(["a", "b", "c"]), target="y") == ["a", "b", "c"]


def test_matches_by_position_without_the_target() -> None:
    columns = [("y", "float"), ("p", "float"), ("q", "int"), ("r", "float"), ("s", "float")]
    assert check_compatible(columns, _info(None), target="y") == ["p", "q", "r"]


def test_missing_and_clashing_columns_are_named() -> None:
    columns = [("a", "string"), ("b", "datetime"), ("zzz", "float")]
    with pytest.raises(FeatureMismatch) as info:
        check_compatible(columns, _info(["a", "b", "c"]), target=None)
    error = info.value
    assert error.missing == ["c"] and error.extra == ["zzz"]
    assert len(error.type_clashes) == 2
    message = str(error)
    assert (
        "c" in error.missing
        and "a (string" in message
        and "b (datetime" in message
        and "zzz" in message
    )


def test_the_target_is_never_a_feature() -> None:
    with pytest.raises(FeatureMismatch, match="lacks the model's features c"):
        check_compatible(
            [("a", "float"), ("b", "float"), ("c", "float")], _info(["a", "b", "c"]), target="c"
        )


def test_positional_missing_columns() -> None:
    with pytest.raises(FeatureMismatch, match="column 2"):
        check_compatible([("p", "float"), ("q", "float")], _info(None), target=None)


def test_build_matrix_encodes_lightgbm_categories_like_lightgbm(
    saved_models: dict[str, SavedModel],
) -> None:
    saved = saved_models["lightgbm_categorical"]
    model = load_model(saved.path, format="lightgbm")
    info = ModelInfo(
        format="lightgbm",
        kind="tree",
        task=model.task,
        n_features=model.n_features,
        feature_names=model.feature_names,
        n_outputs=model.n_outputs,
        classes=model.classes,
        categories=model.categories,
        details={},
    )
    rng = np.random.default_rng(5)
    n = 50
    colors = rng.choice(["white", "red", "green", "blue", "purple"], size=n).astype(object)
    colors[3] = None
    numeric = rng.normal(size=(n, 4))
    numeric[1, 2] = np.nan
    table = pa.table(
        {
            "color": pa.array(colors, pa.string()),
            "target": rng.integers(0, 2, n),
            **{f"f{i}": numeric[:, i] for i in range(4)},
        }
    )
    X = build_matrix(table, info, target="target")
    assert X.shape == (n, 5) and X.dtype == np.float64
    # The library's own pandas path: categories from the model file, unknown -> NaN.
    frame = pd.DataFrame({f"f{i}": numeric[:, i] for i in range(4)})
    frame["color"] = pd.Series(colors, dtype="category").cat.set_categories(
        ["red", "green", "blue", "white"]
    )
    assert np.isnan(X[colors == "purple", 4]).all() and np.isnan(X[3, 4])
    assert_array_equal(model.predict(X, output="probability")[:, 1], saved.native.predict(frame))


def test_build_matrix_casts_numbers_bools_and_nulls() -> None:
    table = pa.table(
        {"a": pa.array([1, None, 3], pa.int64()), "b": [True, False, None], "c": [0.5, 1.5, None]}
    )
    X = build_matrix(table, _info(["a", "b", "c"]), target=None)
    assert_array_equal(X, np.array([[1, 1, 0.5], [np.nan, 0, 1.5], [3, np.nan, np.nan]]))


def test_string_column_clashes_without_model_categories() -> None:
    table = pa.table({"a": ["x", "y"], "b": [1.0, 2.0], "c": [1.0, 2.0]})
    with pytest.raises(FeatureMismatch, match="a \\(string"):
        build_matrix(table, _info(["a", "b", "c"]), target=None)


def test_target_vector() -> None:
    table = pa.table({"y": ["yes", "no", "yes"], "r": [1.5, None, 2.0], "k": [1, 0, 1]})
    binary = _info(None, task="binary", classes=["no", "yes"], n_outputs=1)
    assert_array_equal(target_vector(table, "y", binary), [1, 0, 1])
    assert target_vector(table, "y", binary).dtype == np.int64
    assert_array_equal(
        target_vector(table, "k", _info(None, task="binary", classes=[0, 1])), [1, 0, 1]
    )
    assert_array_equal(target_vector(table, "r", _info(None)), [1.5, np.nan, 2.0])
    with pytest.raises(TargetMismatch, match="'maybe'"):
        target_vector(pa.table({"y": ["yes", "maybe"]}), "y", binary)
