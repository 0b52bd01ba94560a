"""models.dtypes: the one mapping from Arrow types to the API's dtypes."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from models.dtypes import DTYPES, dtype_of, input_clash
from models.features import build_matrix
from models.inspection import ModelInfo


@pytest.mark.parametrize(("arrow_type", "dtype"), [
    (pa.bool_(), "bool"), (pa.int8(), "int"), (pa.uint64(), "int"),
    (pa.float32(), "float"), (pa.decimal128(10, 2), "float"), (pa.null(), "float"),
    (pa.dictionary(pa.int32(), pa.string()), "category"),
    (pa.date32(), "datetime"), (pa.timestamp("s", tz="UTC"), "datetime"),
    (pa.time32("s"), "datetime"), (pa.time64("us"), "datetime"),
    (pa.duration("s"), "datetime"), (pa.string(), "string"), (pa.large_string(), "string"),
])
def test_dtype_of(arrow_type: pa.DataType, dtype: str) -> None:
    assert dtype_of(arrow_type) == dtype in DTYPES


def test_which_dtypes_a_model_takes() -> None:
    for dtype in ("float", "int", "bool"):
        assert input_clash(dtype, has_categories=False) is None
    for dtype in ("string", "category"):
        assert input_clash(dtype, has_categories=True) is None
        assert input_clash(dtype, has_categories=False) == f"{dtype}; the model expects a number"
    assert input_clash("datetime", has_categories=True) is not None


def test_a_column_of_nulls_is_a_column_of_missing_numbers() -> None:
    info = ModelInfo(format="xgboost", kind="tree", task="regression", n_features=2,
                     feature_names=["a", "b"], n_outputs=1, classes=None)
    table = pa.table({"a": pa.array([1.0, 2.0]), "b": pa.nulls(2)})
    X = build_matrix(table, info, target=None)
    np.testing.assert_array_equal(X, [[1.0, np.nan], [2.0, np.nan]])
