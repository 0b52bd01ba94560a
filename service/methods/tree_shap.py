"""Job kind ``tree_shap``: exact path-dependent TreeSHAP values (and interactions)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from explainers.sampling import sample_rows
from explainers.tree_shap import TreeShap, TreeShapSummary
from explainers.tree_shap_figures import draw_importance, draw_interactions, draw_summary
from service.errors import Unprocessable
from service.methods.inputs import (
    feature_names,
    model_columns,
    model_inputs,
    provenance,
    require_model,
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

INTERACTION_ROWS = 10_000
PLOT_ROWS = 5_000
# Mean |interaction| values inlined in the summary at most (100 features, one output);
# past that the summary names the array that holds them.
SUMMARY_MAX_VALUES = 10_000
# The interactions plot draws one output; its array's first axis is the output or the
# feature, so loading this many rows covers either.
MAX_OUTPUTS_PLOTTED = 100_000


class TreeShapParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    interactions: bool = Field(False, description="Also compute SHAP interaction values.")
    max_rows: int | None = Field(
        None, ge=1, description="Rows to explain (a seeded sample); default all, or "
        f"{INTERACTION_ROWS} with interactions.")
    random_state: int = Field(0, ge=0, lt=2**32, description="Seed of the row sample.")
    output: Literal["raw"] = Field("raw", description="Raw model output (margin, log-odds).")


def check(ctx: CheckContext[TreeShapParams]) -> TreeShapParams:
    model = require_model(ctx)
    if model.kind != "tree":
        raise Unprocessable(
            f"TreeSHAP needs a tree model and this is a {model.kind} model; use "
            "permutation_importance or rashomon_interactions, which work with any model.",
            code="not_a_tree_model")
    capabilities = model.details.get("capabilities") or {}
    if not capabilities.get("tree_shap", False):
        raise Unprocessable(
            f"TreeSHAP cannot run on this model: {capabilities.get('reason', 'unknown')}. "
            "permutation_importance works with any model.", code="tree_shap_unsupported")
    model_columns(ctx)
    params = ctx.params
    if params.max_rows is None and params.interactions:
        params = params.model_copy(update={"max_rows": INTERACTION_ROWS})
    return params


def estimate(ctx: CheckContext[TreeShapParams]) -> dict[str, Any]:
    params = ctx.params
    model = require_model(ctx)
    rows = min(ctx.dataset.n_rows, params.max_rows or ctx.dataset.n_rows)
    n_leaves = float(model.details.get("n_leaves") or 1000)
    depth = float(model.details.get("max_depth") or 6)
    # Quadrature TreeSHAP costs about leaves x depth per row per output (values), times
    # the features for interactions; 2e8 such steps a second on one core, measured here.
    steps = rows * n_leaves * depth * model.n_outputs
    if params.interactions:
        steps *= max(1, model.n_features)
    return {"rows_to_predict": rows, "seconds": round(steps / 2e8 + 1.0, 1),
            **result_size(result_arrays(rows, model.n_features, model.n_outputs,
                                        interactions=params.interactions))}


def result_arrays(rows: int, f: int, k: int, *, interactions: bool
                  ) -> dict[str, tuple[tuple[int, ...], str]]:
    """Shape and dtype of every array a job on ``rows`` rows, ``f`` features and ``k``
    outputs stores."""
    per_output = () if k == 1 else (k,)
    arrays = {"shap_values": ((rows, *per_output, f), "float32"),
              "row_index": ((rows,), "int64"),
              "feature_values": ((min(rows, PLOT_ROWS), f), "float32")}
    if interactions:
        arrays["interaction_values"] = ((rows, *per_output, f, f), "float32")
        arrays["interaction_importance"] = ((*per_output, f, f), "float32")
    return arrays


def run(ctx: RunContext[TreeShapParams]) -> JobOutput:
    params = ctx.params
    assert ctx.model is not None
    rows = sample_rows(ctx.dataset.n_rows, params.max_rows, params.random_state)
    ctx.progress(0.0, "loading")
    # XGBoost reads float32: building X in float32 gives the same values with half the
    # memory and no second copy inside the explainer.
    X, _ = model_inputs(ctx, rows, dtype=np.float32)
    names = feature_names(ctx.model, model_columns(ctx))
    ensemble = ctx.load_model().tree_ensemble()
    if ensemble.feature_names is None:
        ensemble = replace(ensemble, feature_names=tuple(names))
    outputs = ([str(c) for c in ctx.model.classes] if ctx.model.classes and
               ensemble.n_outputs == len(ctx.model.classes) else None)
    explainer = TreeShap(ensemble, device=ctx.device, nthread=ctx.n_threads,
                         output_names=outputs)
    k, f = explainer.n_outputs, explainer.n_features
    row_shape = (f,) if k == 1 else (k, f)
    per_output = [] if k == 1 else [Axis("output", explainer.output_names)]
    features = Axis("feature", names)
    values = ctx.array_writer("shap_values", "float32", row_shape,
                              dims=[Axis("row"), *per_output, features])
    index = ctx.array_writer("row_index", "int64")
    index.append(rows)
    pairs = None
    if params.interactions:
        pairs = ctx.array_writer(
            "interaction_values", "float32", (f, f) if k == 1 else (k, f, f),
            dims=[Axis("row"), *per_output, features, Axis("feature_2", names)])
    plotted = ctx.array_writer("feature_values", "float32", (f,), dims=[Axis("row"), features])
    plotted.append(X[:PLOT_ROWS].astype(np.float32))
    accumulator = TreeShapSummary(explainer)
    memory = max(64 << 20, min(ctx.memory_limit_bytes // 4, 1 << 30))
    for chunk in explainer.iter_chunks(X, interactions=params.interactions,
                                       memory_limit_bytes=memory,
                                       progress=lambda p, s: ctx.progress(0.02 + 0.97 * p, s)):
        accumulator.add(chunk)
        values.append(chunk.values)
        if pairs is not None and chunk.interaction_values is not None:
            pairs.append(chunk.interaction_values)
    summary = accumulator.summary()
    summary["feature_names"] = names
    summary["provenance"] = {**summary.get("provenance", {}),
                             **provenance(seed=params.random_state,
                                          rows_in_dataset=ctx.dataset.n_rows)}
    arrays: dict[str, np.ndarray] = {}
    dims: dict[str, list[Axis]] = {}
    mean_pairs = accumulator.mean_abs_interactions
    if mean_pairs is not None:
        # Also an array, and only an array once it is too large to inline: F x F values
        # (per output) would make the summary megabytes for a wide model.
        arrays["interaction_importance"] = mean_pairs[0] if k == 1 else mean_pairs
        dims["interaction_importance"] = [*per_output, features, Axis("feature_2", names)] \
            if k > 1 else [features, Axis("feature_2", names)]
        if mean_pairs.size > SUMMARY_MAX_VALUES:
            summary["interaction_importance"] = None
            summary["interaction_importance_array"] = "interaction_importance"
    device_used = "cuda" if str(explainer.device_used).startswith("cuda") else "cpu"
    return JobOutput(summary=summary, arrays=arrays, array_dims=dims,
                     device_used=device_used)  # type: ignore[arg-type]


def _has_interactions(summary: dict[str, Any]) -> bool:
    return summary.get("interaction_importance") is not None or \
        summary.get("interaction_importance_array") is not None


def _draw_interactions(summary: dict[str, Any], arrays: dict[str, np.ndarray],
                       **options: Any) -> Any:
    if summary.get("interaction_importance") is None and "interaction_importance" in arrays:
        summary = {**summary, "interaction_importance": arrays["interaction_importance"]}
    return draw_interactions(summary, arrays, **options)


def _draw_summary(summary: dict[str, Any], arrays: dict[str, np.ndarray], **_: Any) -> Any:
    return draw_summary(summary, arrays, feature_values=arrays.get("feature_values"))


KIND = JobKind(
    name="tree_shap",
    params_model=TreeShapParams,
    result_advice="explain fewer rows (max_rows) or leave out interactions",
    needs_model=True,
    check=check,
    estimate=estimate,
    run=run,
    plots={
        "summary": PlotSpec(draw=_draw_summary, arrays=("shap_values", "feature_values"),
                            max_rows=PLOT_ROWS),
        "importance": PlotSpec(draw=draw_importance),
        "interactions": PlotSpec(draw=_draw_interactions, arrays=("interaction_importance",),
                                 max_rows=MAX_OUTPUTS_PLOTTED, available=_has_interactions),
    },
)
