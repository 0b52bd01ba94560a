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


def model_columns(ctx: CheckContext[Any]) -> list[str]:
    """The dataset columns that feed the model, in model order (FeatureMismatch if not)."""
    model = require_model(ctx)
    return check_compatible(ctx.dataset.column_types(), model, target=ctx.dataset.target)


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
                 *, with_target: bool = False
                 ) -> tuple[npt.NDArray[np.float64], npt.NDArray[Any] | None]:
    """X (float64, model column order) and, when asked, the target as the model sees it
    (float64 for regression, class index int64 for classifiers)."""
    assert ctx.model is not None
    table: pa.Table = ctx.load_dataset()
    if rows is not None and len(rows) != table.num_rows:
        table = table.take(pa.array(rows))
    target = ctx.dataset.target
    X = build_matrix(table, ctx.model, target=target)
    y = None
    if with_target:
        if target is None:
            raise Unprocessable("The dataset has no target column.", code="no_target")
        y = target_vector(table, target, ctx.model)
    return X, y


def rows_per_second(model: ModelInfo | None, n_threads: int = 2) -> float:
    """Prediction throughput measured when the model was uploaded (one thread), scaled."""
    rate = float((model.details if model else {}).get("predict_rows_per_second") or 1e5)
    return rate * max(1, n_threads)


def provenance(**extra: Any) -> dict[str, Any]:
    import lightgbm
    import sklearn
    import xgboost

    return {"library_versions": {"numpy": np.__version__, "xgboost": xgboost.__version__,
                                 "lightgbm": lightgbm.__version__,
                                 "scikit-learn": sklearn.__version__}, **extra}
