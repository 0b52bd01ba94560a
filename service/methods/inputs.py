"""Turning a dataset and a model into the arrays a method takes, and the shared checks."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from models.features import build_matrix, check_compatible, target_vector
from models.inspection import ModelInfo
from service.errors import Unprocessable
from service.jobs.kinds import CheckContext, DatasetInfo, RunContext

# Rows of the table converted at a time (about 26 MB of float64 for 50 features).
_BLOCK_ROWS = 65_536


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


def model_columns(ctx: CheckContext[Any] | RunContext[Any]) -> list[str]:
    """The dataset columns that feed the model, in model order (FeatureMismatch if not)."""
    if ctx.model is None:
        raise Unprocessable("This kind of job needs a model; send model_id.",
                            code="model_required")
    return check_compatible(ctx.dataset.column_types(), ctx.model, target=ctx.dataset.target)


def feature_names(model: ModelInfo, columns: list[str]) -> list[str]:
    """The names results use: the model's own, else the dataset columns matched to it."""
    return list(model.feature_names) if model.feature_names else list(columns)


def sample_rows(n_rows: int, max_rows: int | None, random_state: int) -> npt.NDArray[np.int64]:
    """Row indices, in file order: all rows, or a seeded sample of ``max_rows`` of them."""
    if max_rows is None or max_rows >= n_rows:
        return np.arange(n_rows, dtype=np.int64)
    rng = np.random.default_rng(random_state)
    return np.sort(rng.choice(n_rows, size=max_rows, replace=False)).astype(np.int64)


def model_inputs(ctx: RunContext[Any], rows: npt.NDArray[np.int64] | None = None,
                 *, with_target: bool = False, dtype: type[np.floating[Any]] = np.float64
                 ) -> tuple[npt.NDArray[np.floating[Any]], npt.NDArray[Any] | None]:
    """X (model column order, float64 unless ``dtype`` is np.float32) and, when asked,
    the target as the model sees it (float64 for regression, class index int64 for
    classifiers).

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
        y = target_vector(table, target, ctx.model)
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
    return {"library_versions": {"numpy": np.__version__, **{
        name: _installed_version(name) for name in ("xgboost", "lightgbm", "scikit-learn")}},
        **extra}


def _installed_version(distribution: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return None
