"""Turning a dataset and a model into the arrays a method takes, and the shared checks."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from explainers.sampling import sample_rows as sample_rows  # re-exported for older callers
from models.dtypes import NUMERIC_DTYPES
from models.errors import TargetMismatch
from models.features import _label_key, build_matrix, check_compatible, target_vector
from models.inspection import ModelInfo
from models.versions import installed_versions
from service.catalog.tabular import Column
from service.errors import Unprocessable
from service.registry import CheckContext, DatasetInfo, RunContext

# Rows of the table converted at a time (about 26 MB of float64 for 50 features).
_BLOCK_ROWS = 65_536
# Target values read at POST to compare a classifier's classes with the labels: enough
# to see every label of an ordinary target; fewer when they span more than 16 MB of the
# stored file (service.catalog.column_head). Labels first seen past them are still
# refused when the job runs (target_mismatch).
LABEL_SAMPLE_ROWS = 100_000
_LABELS_SHOWN = 10

LabelMap = dict[str, bool | int | float | str]
"""Dataset label -> the model's class it stands for, e.g. {"no": 0, "yes": 1}."""


def require_model(ctx: CheckContext[Any]) -> ModelInfo:
    if ctx.model is None:
        raise Unprocessable("This kind of job needs a model; send model_id.",
                            code="model_required")
    return ctx.model


def require_target(dataset: DatasetInfo) -> str:
    if dataset.target is None:
        raise Unprocessable(
            f"Dataset {dataset.id} has no target column, and this method scores the model "
            "against it; upload the table again with target=<column>.", code="no_target")
    return dataset.target


def require_complete_target(dataset: DatasetInfo) -> Column:
    """The target column, refused (TargetMismatch) when it has missing values."""
    target = require_target(dataset)
    column = next((c for c in dataset.columns if c.name == target), None)
    if column is None:
        raise TargetMismatch(f"The dataset has no target column {target!r}.")
    if column.n_missing:
        raise TargetMismatch(
            f"The target column {target!r} has {column.n_missing} missing values, and a "
            "model cannot be scored (or trained) on rows without a label; drop or fill "
            "those rows and upload the table again.")
    return column


def check_target(ctx: CheckContext[Any], label_map: Mapping[str, Any] | None = None
                 ) -> None:
    """At POST: the model can be scored against the dataset's target, as a job would.

    From the stored column facts: a target with missing values, or a non-numeric target
    for a regression model, is refused. For a classifier the labels of the first
    ``LABEL_SAMPLE_ROWS`` rows, mapped through ``label_map``, must all be classes of the
    model; TargetMismatch names the labels found and the classes expected.
    """
    column = require_complete_target(ctx.dataset)
    target = column.name
    model = require_model(ctx)
    if model.task == "regression":
        if label_map:
            raise Unprocessable("label_map says which class each label is, for a "
                                "classifier; this is a regression model, so leave it out.",
                                code="invalid_params")
        if column.dtype not in NUMERIC_DTYPES:
            raise TargetMismatch(
                f"The target column {target!r} holds {column.dtype} values and the model is "
                "a regression model, scored against numbers; upload the table with a "
                "numeric target, or use a classifier.")
        return
    classes = list(model.classes or [])
    class_keys = {_label_key(c) for c in classes}
    if label_map:
        wrong = {k: v for k, v in label_map.items() if _label_key(v) not in class_keys}
        if wrong:
            raise Unprocessable(
                f"label_map maps {_shown(f'{k!r}: {v!r}' for k, v in wrong.items())} to "
                f"values that are not classes of the model; its classes are "
                f"{_listed(classes)}.",
                code="invalid_params")
    if ctx.column_head is None:
        return
    head = ctx.column_head(target, LABEL_SAMPLE_ROWS)
    labels = [v for v in pc.unique(head).to_pylist() if v is not None]
    to_class = label_lookup(label_map)
    unknown = sorted((v for v in labels if _label_key(to_class(v)) not in class_keys), key=repr)
    if not unknown:
        return
    found = _shown(repr(v) for v in unknown)
    if label_map:
        raise TargetMismatch(
            f"The target column {target!r} holds the labels {found}, which label_map does "
            f"not map to classes of the model; its classes are {_listed(classes)}. Add "
            "them to label_map.")
    example = ""
    if len(labels) == len(classes):
        pairs = zip(sorted(labels, key=repr), classes, strict=True)
        example = ", e.g. " + json.dumps({str(label): c for label, c in pairs})
    raise TargetMismatch(
        f"The target column {target!r} holds the labels {found}, which are not classes of "
        f"the model; its classes are {_listed(classes)}. Send params.label_map to say "
        f"which class each label is{example}.")


def label_lookup(label_map: Mapping[str, Any] | None) -> Callable[[Any], Any]:
    """``f(label)``: the class ``label_map`` names for a dataset label, else the label.

    Keys are compared as the classes are (models.features): "1", "1.0" and 1 match, and
    so do "true" and True.
    """
    if not label_map:
        return lambda value: value
    table: dict[Any, Any] = {}
    for key, value in label_map.items():
        table[_label_key(key)] = value
        if key.strip().lower() in ("true", "false"):
            table.setdefault(_label_key(key.strip().lower() == "true"), value)
        with contextlib.suppress(ValueError):
            table.setdefault(_label_key(float(key)), value)
    return lambda value: table.get(_label_key(value), value)


def target_codes(table: pa.Table, target: str, model: ModelInfo,
                 label_map: Mapping[str, Any] | None = None) -> npt.NDArray[Any]:
    """The target as the model sees it (models.features.target_vector), with the
    dataset's labels first mapped to classes through ``label_map``."""
    if not label_map or target not in table.column_names:
        return target_vector(table, target, model)
    to_class = label_lookup(label_map)
    mapped = pa.array([None if v is None else _label_key(to_class(v))
                       for v in table.column(target).to_pylist()], pa.string())
    return target_vector(pa.table({target: mapped}), target, model)


def _listed(classes: list[Any]) -> str:
    if len(classes) <= _LABELS_SHOWN:
        return str(classes)
    return f"{str(classes[:_LABELS_SHOWN])[:-1]}, … ({len(classes)} classes)]"


def _shown(items: Any) -> str:
    items = list(items)
    more = f" and {len(items) - _LABELS_SHOWN} more" if len(items) > _LABELS_SHOWN else ""
    return ", ".join(items[:_LABELS_SHOWN]) + more


def model_columns(ctx: CheckContext[Any] | RunContext[Any]) -> list[str]:
    """The dataset columns that feed the model, in model order (FeatureMismatch if not)."""
    if ctx.model is None:
        raise Unprocessable("This kind of job needs a model; send model_id.",
                            code="model_required")
    return check_compatible(ctx.dataset.column_types(), ctx.model, target=ctx.dataset.target)


def feature_names(model: ModelInfo, columns: list[str]) -> list[str]:
    """The names results use: the model's own, else the dataset columns matched to it."""
    return list(model.feature_names) if model.feature_names else list(columns)


def model_inputs(ctx: RunContext[Any], rows: npt.NDArray[np.int64] | None = None,
                 *, with_target: bool = False, dtype: type[np.floating[Any]] = np.float64
                 ) -> tuple[npt.NDArray[np.floating[Any]], npt.NDArray[Any] | None]:
    """X (model column order, float64 unless ``dtype`` is np.float32) and, when asked,
    the target as the model sees it (float64 for regression, class index int64 for
    classifiers; labels mapped through the job's ``label_map`` param when it has one).

    X is built a block of rows at a time: the peak is the table plus X, not X again in
    float64. A float32 X equals the float64 one cast to float32, for a method whose
    engine computes in float32 anyway (XGBoost).
    """
    assert ctx.model is not None
    table: pa.Table = ctx.load_dataset()
    if rows is not None and len(rows) != table.num_rows:
        table = table.take(pa.array(rows))
    # Memory the Parquet reader or the take freed stays with Arrow's allocator until
    # released; X is allocated by NumPy, which cannot reuse it.
    pa.default_memory_pool().release_unused()
    target = ctx.dataset.target
    X = np.empty((table.num_rows, ctx.model.n_features), dtype=dtype)
    for start in range(0, max(table.num_rows, 1), _BLOCK_ROWS):
        X[start:start + _BLOCK_ROWS] = build_matrix(table.slice(start, _BLOCK_ROWS),
                                                    ctx.model, target=target)
    y = None
    if with_target:
        if target is None:
            raise Unprocessable("The dataset has no target column.", code="no_target")
        y = target_codes(table, target, ctx.model, getattr(ctx.params, "label_map", None))
    del table
    pa.default_memory_pool().release_unused()
    return X, y


def rows_per_second(model: ModelInfo | None, n_threads: int = 2) -> float:
    """Prediction throughput measured when the model was uploaded (one thread), scaled."""
    rate = float((model.details if model else {}).get("predict_rows_per_second") or 1e5)
    return rate * max(1, n_threads)


def provenance(**extra: Any) -> dict[str, Any]:
    # Versions from the installed distributions, not by importing each library: a job
    # that never uses LightGBM does not load it (a GPU host without it ran no job).
    return {"library_versions": installed_versions("numpy", "xgboost", "lightgbm",
                                                   "scikit-learn"),
            **extra}
