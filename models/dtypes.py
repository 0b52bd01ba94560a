"""The dtype of a table column, as the API names it, and what a model can take of it.

One mapping for both readers of an Arrow type: the upload, which reports each column's
dtype, and the job, which turns the columns into the model's input. Were they two, a
column accepted when a job is posted could be refused when it runs.
"""

from __future__ import annotations

import pyarrow as pa

__all__ = ["DTYPES", "NUMERIC_DTYPES", "dtype_of", "input_clash"]

DTYPES = ("float", "int", "bool", "category", "string", "datetime")
NUMERIC_DTYPES = ("float", "int", "bool")
"""Dtypes a model takes as numbers (bool as 0/1, nulls as NaN)."""


def dtype_of(arrow_type: pa.DataType) -> str:
    """The API dtype of an Arrow type, one of DTYPES.

    A column of nulls only (an all-empty CSV column) is float: missing numbers. Every
    temporal type (date, timestamp, time of day, duration) is datetime.
    """
    if pa.types.is_boolean(arrow_type):
        return "bool"
    if pa.types.is_integer(arrow_type):
        return "int"
    if pa.types.is_floating(arrow_type) or pa.types.is_decimal(arrow_type) \
            or pa.types.is_null(arrow_type):
        return "float"
    if pa.types.is_dictionary(arrow_type):
        return "category"
    if pa.types.is_temporal(arrow_type):
        return "datetime"
    return "string"


def input_clash(dtype: str, *, has_categories: bool) -> str | None:
    """Why a column of ``dtype`` cannot be a model input, or None when it can.

    Numbers are cast; strings and categories are encoded with the categories the model
    stores for that input (``has_categories``); datetimes never are.
    """
    if dtype in NUMERIC_DTYPES:
        return None
    if dtype in ("string", "category") and has_categories:
        return None
    return f"{dtype}; the model expects a number"
