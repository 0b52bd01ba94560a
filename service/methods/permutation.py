"""Job kind ``permutation_importance``: scikit-learn's definition, any model."""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from explainers.permutation import (
    PermutationParams,
    PermutationParamsError,
    run_permutation_importance,
    validate_permutation_params,
)
from explainers.permutation_figures import draw_importance
from explainers.sampling import sample_rows
from models.inspection import ModelInfo
from service.errors import Unprocessable
from service.methods.inputs import (
    LabelMap,
    check_target,
    feature_names,
    model_columns,
    model_inputs,
    provenance,
    require_model,
    rows_per_second,
)
from service.registry import (
    Axis,
    CheckContext,
    JobKind,
    JobOutput,
    PlotSpec,
    RunContext,
)
from service.results.arrays import result_size


class PermutationImportanceParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scoring: str | None = Field(
        None, description="A scikit-learn scorer name; default r2 (regression) or accuracy.")
    n_repeats: int = Field(5, ge=1, le=1000)
    random_state: int = Field(0, ge=0, lt=2**32)
    max_rows: int | None = Field(None, ge=1, description="Rows to score on (a seeded "
                                 "sample); default all.")
    label_map: LabelMap | None = Field(
        None, description="Classifiers: which class of the model each label of the target "
        "column stands for, e.g. {\"no\": 0, \"yes\": 1}; labels not named are used as "
        "they are.")
    features: list[str | list[str]] | None = Field(
        None, description="Feature names and lists of names permuted together, in any mix "
        "(a bare name is a group of one), e.g. [[\"lat\", \"lon\"], \"age\"]; default all.")

    def method_params(self, model: ModelInfo, names: list[str], *,
                      validate: bool = False) -> PermutationParams:
        """The params as the method takes them (explainers.permutation), for ``model``
        with features ``names``.

        validate: check them against the model first (``check``, once, at POST: a refusal
        is a 422 ``invalid_params``). Without it, params that ``check`` accepted and
        stored are built as they are (``estimate``, and the job process).
        """
        values: dict[str, Any] = {
            "task": model.task, "feature_names": names, "scoring": self.scoring,
            "n_repeats": self.n_repeats, "random_state": self.random_state,
            "features": self.features}
        if not validate:
            return PermutationParams.resolve(**values)
        try:
            return validate_permutation_params(**values, classes=model.classes)
        except PermutationParamsError as exc:
            raise Unprocessable(str(exc), code="invalid_params") from exc


def check(ctx: CheckContext[PermutationImportanceParams]) -> PermutationImportanceParams:
    """Stores the params resolved: ``scoring`` is the task's default when not given."""
    check_target(ctx, ctx.params.label_map)
    model = require_model(ctx)
    checked = ctx.params.method_params(model, feature_names(model, model_columns(ctx)),
                                       validate=True)
    return ctx.params.model_copy(update={"scoring": checked.scoring})


def estimate(ctx: CheckContext[PermutationImportanceParams]) -> dict[str, Any]:
    model = require_model(ctx)
    groups = len(ctx.params.method_params(model,
                                          feature_names(model, model_columns(ctx))).groups)
    rows = min(ctx.dataset.n_rows, ctx.params.max_rows or ctx.dataset.n_rows)
    to_predict = rows * (1 + groups * ctx.params.n_repeats)
    return {"rows_to_predict": to_predict,
            "seconds": round(to_predict / rows_per_second(ctx.model) + 1.0, 1),
            **result_size({"importances": ((groups, ctx.params.n_repeats), "float32")})}


def run(ctx: RunContext[PermutationImportanceParams]) -> JobOutput:
    params = ctx.params
    assert ctx.model is not None
    rows = sample_rows(ctx.dataset.n_rows, params.max_rows, params.random_state)
    ctx.progress(0.0, "loading")
    X, y_index = model_inputs(ctx, rows, with_target=True)
    assert y_index is not None
    # The method takes labels, as scikit-learn's y; the model's classes name them.
    y = np.asarray(ctx.model.classes)[y_index] if ctx.model.classes else y_index
    names = feature_names(ctx.model, model_columns(ctx))
    model = ctx.load_model()
    result = run_permutation_importance(
        model, X, y, params.method_params(ctx.model, names), n_jobs=ctx.n_threads,
        device=ctx.device, progress=lambda p, s: ctx.progress(0.05 + 0.95 * p, s))
    summary = result.summary()
    summary["provenance"] = {**summary.get("provenance", {}),
                             **provenance(seed=params.random_state, rows_scored=len(rows))}
    dims = [Axis("feature", result.names),
            Axis("repeat", [f"repeat_{j}" for j in range(result.n_repeats)])]
    return JobOutput(summary=summary, arrays=result.arrays(),
                     array_dims={"importances": dims})



KIND = JobKind(
    name="permutation_importance",
    params_model=PermutationImportanceParams,
    result_advice="use fewer repeats (n_repeats) or features",
    needs_model=True,
    check=check,
    estimate=estimate,
    run=run,
    plots={"importance": PlotSpec(draw=draw_importance, arrays=("importances",))},
)
