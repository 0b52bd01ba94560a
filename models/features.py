"""Match a dataset's columns to a model's features and build the model's input matrix.

Columns are matched by name when the model stores feature names, else by position with
the target column left out. An ONNX graph carries no column names of its own: without
names, given at upload or stored in its metadata, it is matched by position only when it
was uploaded to be (``details["columns_by_position"]``); a reordered table would otherwise
feed the wrong inputs without any error. Categorical columns are encoded with the categories stored
in the model, the way its library encodes them (LightGBM: pandas category lists, unknown
values become NaN; XGBoost: the category lists it stores, unknown values are refused).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from models.dtypes import DTYPES, NUMERIC_DTYPES, dtype_of, input_clash
from models.errors import FeatureMismatch, FeatureNamesRequired, TargetMismatch
from models.inspection import ModelInfo

__all__ = ["check_compatible", "build_matrix", "target_vector", "POSITION_OPT_IN_FORMATS"]

POSITION_OPT_IN_FORMATS = ("onnx",)
"""Formats whose models, when they have no feature names, are matched to a dataset by
position only if uploaded with ``by_position`` (``details["columns_by_position"]``)."""


def check_compatible(
    columns: Sequence[tuple[str, str]], info: ModelInfo, *, target: str | None
) -> list[str]:
    """Return the dataset column names that feed the model, in the model's column order.

    columns: (name, dtype) of each dataset column, dtype one of models.dtypes.DTYPES.
    target: the dataset's target column, never used as a feature.

    Raises FeatureMismatch naming missing columns and type clashes (a string or category
    column where the model expects a number and has no categories for it; any datetime
    column). Extra dataset columns are ignored; they are listed only in that error.
    Raises FeatureNamesRequired for an ONNX model with no feature names that was not
    uploaded to match by position.
    """
    if (info.feature_names is None and info.format in POSITION_OPT_IN_FORMATS
            and not info.details.get("columns_by_position")):
        raise FeatureNamesRequired(
            f"This {info.format} model has no feature names, so tabxai cannot tell which "
            "dataset column feeds which of its inputs (matching by position gives wrong "
            "results without any error when the columns are in another order). Upload the "
            "model again with feature_names, a JSON list of the dataset's column names in "
            "the order of the model's inputs (or store that list as JSON under the key "
            "'feature_names' in the ONNX file's metadata_props), or with by_position=true "
            "to match the dataset's columns by position, the target column left out."
        )
    for name, dtype in columns:
        if dtype not in DTYPES:
            raise ValueError(f"column {name!r} has dtype {dtype!r}; expected one of {DTYPES}")
    available = [(name, dtype) for name, dtype in columns if name != target]
    dtypes = dict(available)
    missing: list[str] = []
    if info.feature_names is not None:
        chosen = [n for n in info.feature_names if n in dtypes]
        missing = [n for n in info.feature_names if n not in dtypes]
    else:
        chosen = [name for name, _ in available[: info.n_features]]
        missing = [f"column {i}" for i in range(len(chosen), info.n_features)]
    keys = chosen if info.feature_names is not None else [str(i) for i in range(len(chosen))]
    clashes = []
    for key, name in zip(keys, chosen, strict=True):
        clash = input_clash(dtypes[name], has_categories=key in info.categories)
        if clash is not None:
            clashes.append(f"{name} ({clash})")
    if missing or clashes:
        used = set(chosen)
        extra = [name for name, _ in available if name not in used]
        parts = []
        if missing:
            parts.append(f"the dataset lacks the model's features {', '.join(missing)}")
        if clashes:
            parts.append(f"these columns have the wrong type: {', '.join(clashes)}")
        message = "The dataset does not fit the model: " + "; ".join(parts) + "."
        if extra:
            message += f" Columns the model does not use: {', '.join(extra)}."
        if clashes:
            message += (" The model takes numbers: write those columns as numbers (a date or "
                        "time, say, as seconds since 1970), then upload the table again.")
        raise FeatureMismatch(message, missing=missing, extra=extra, type_clashes=clashes)
    return chosen


def build_matrix(
    table: pa.Table, info: ModelInfo, *, target: str | None
) -> npt.NDArray[np.float64]:
    """The model's input: float64 [n_rows, n_features], model column order.

    Numeric columns are cast (nulls -> NaN, bool -> 0/1); a column for which the model
    stores categories is encoded as the code of its value in those categories (nulls ->
    NaN, which the libraries treat as missing). Values outside those categories become
    NaN too, as LightGBM's pandas path makes them, except for models whose library refuses
    them (``info.details["unseen_categories"] == "error"``: XGBoost): then they raise
    FeatureMismatch naming the values, as XGBoost raises on such a DataFrame. Raises
    FeatureMismatch as check_compatible does.
    """
    columns = [(name, dtype_of(table.schema.field(name).type)) for name in table.column_names]
    chosen = check_compatible(columns, info, target=target)
    refuse_unseen = info.details.get("unseen_categories") == "error"
    out = np.empty((table.num_rows, info.n_features), dtype=np.float64)
    unseen: list[str] = []
    for j, name in enumerate(chosen):
        key = info.feature_names[j] if info.feature_names is not None else str(j)
        column = table.column(name)
        if key in info.categories:
            out[:, j], values = _encode(column, info.categories[key])
            if refuse_unseen and values:
                shown = ", ".join(repr(v) for v in values[:10])
                more = f" and {len(values) - 10} more" if len(values) > 10 else ""
                unseen.append(f"{name} ({shown}{more})")
        else:
            out[:, j] = _to_float(column)
    if unseen:
        raise FeatureMismatch(
            "The dataset holds categories the model never saw in training, which "
            f"{info.format} refuses: {'; '.join(unseen)}. Leave those cells empty (missing) "
            "or drop those rows, then upload the table again.",
            type_clashes=unseen)
    return out


def target_vector(table: pa.Table, target: str, info: ModelInfo) -> npt.NDArray[Any]:
    """The target column as the model sees it.

    Regression: float64 [n_rows] (nulls -> NaN). Classification: int64 [n_rows], the
    index of each label in ``info.classes``. Raises TargetMismatch for a missing column,
    null labels or labels the model does not know.
    """
    if target not in table.column_names:
        raise TargetMismatch(f"The dataset has no target column {target!r}.")
    column = table.column(target)
    if info.task == "regression":
        if dtype_of(column.type) not in NUMERIC_DTYPES:
            raise TargetMismatch(
                f"The target column {target!r} is not numeric; the model is a regression model."
            )
        return _to_float(column)
    classes = info.classes or []
    index = {_label_key(c): i for i, c in enumerate(classes)}
    codes = np.empty(len(column), dtype=np.int64)
    unknown: list[Any] = []
    for row, value in enumerate(column.to_pylist()):
        code = index.get(_label_key(value))
        if code is None:
            unknown.append(value)
            codes[row] = -1
        else:
            codes[row] = code
    if unknown:
        shown = sorted({repr(v) for v in unknown})[:10]
        raise TargetMismatch(
            f"The target column {target!r} holds {len(unknown)} values that are not classes of "
            f"the model ({', '.join(shown)}); the model's classes are {classes}."
        )
    return codes


def _to_float(column: pa.ChunkedArray) -> npt.NDArray[np.float64]:
    as_float = pc.cast(column, pa.float64()).fill_null(float("nan"))
    return np.asarray(as_float.to_numpy(), dtype=np.float64)


def _encode(column: pa.ChunkedArray, labels: list[str]
            ) -> tuple[npt.NDArray[np.float64], list[str]]:
    """Codes of the column's values in ``labels`` (NaN for nulls and for other values),
    and the distinct non-null values that are not among the labels (sorted)."""
    if pa.types.is_dictionary(column.type):
        column = pc.cast(column, column.type.value_type)
    if pa.types.is_floating(column.type):
        # Category labels of float categories are written like Python's str(float).
        strings = pa.array([None if v is None else str(v) for v in column.to_pylist()], pa.string())
    else:
        strings = pc.cast(column, pa.string())
    codes = pc.index_in(strings, value_set=pa.array(labels, pa.string()))
    unknown = pc.and_(pc.is_null(codes), pc.is_valid(strings))
    unseen = sorted(pc.unique(pc.filter(strings, unknown)).to_pylist())
    return _to_float(pa.chunked_array([codes]) if isinstance(codes, pa.Array) else codes), unseen


def _label_key(value: Any) -> Any:
    """Compare labels by value: 1, 1.0, True and "1" are the same class."""
    if isinstance(value, bool | np.bool_):
        return str(int(value))
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        return str(int(value)) if float(value).is_integer() else repr(float(value))
    return str(value)
