"""Job kind ``rashomon_interactions``: feature-interaction clouds across a Rashomon set."""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Literal

import numpy as np
import sklearn
from pydantic import BaseModel, ConfigDict, Field, field_validator
from threadpoolctl import threadpool_limits

from explainers.rashomon import (
    RashomonParams,
    RashomonParamsError,
    RashomonResult,
    estimate_checked_cost,
    run_rashomon_interactions,
)
from explainers.rashomon_figures import draw_halo, draw_search_trace, draw_swarm, draw_swarm_main
from models.loaded import Output
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
    stage_progress,
)
from service.results.arrays import result_size

# Rows per predict call on the CPU: large enough to amortize the call's fixed cost, small
# enough that a call's intermediate arrays stay in the cache (a hidden layer of 64 floats
# per row is 5 MB at 10k rows). On 2 cores, with the copies written by the threads that
# predict, the diabetes MLP case of bench/rashomon.py took 6.6 s with 10k-row calls, 7.3 s
# with 20k, 8.8-8.9 s with 40k, 7.6 s with 7k and 8.3 s with 5k.
BATCH_ROWS = 10_000
BATCH_BYTES = 8 << 20
# On a GPU a call costs a launch and two transfers whatever its size: far larger calls.
GPU_BATCH_ROWS = 400_000
GPU_BATCH_BYTES = 128 << 20

# The share of a job's progress given to loading the data and the model.
LOADING_SHARE = 0.02
# Accepted search steps per budget step, feature and direction, for the estimate of the
# search trace's size: 7.4 in the searches of the tests' data (delta 0.5, lr 0.1).
TRACE_STEPS = 8


def batch_rows_for(n_features: int, device: str = "cpu") -> int:
    """Rows per predict call for data with ``n_features`` columns on ``device``."""
    rows, size = (GPU_BATCH_ROWS, GPU_BATCH_BYTES) if device == "cuda" else \
        (BATCH_ROWS, BATCH_BYTES)
    return max(1_000, min(rows, size // (8 * max(1, n_features))))


class RashomonJobParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    loss: str | None = Field(None, description="mse, rmse, mae, r2, log_loss, "
                             "zero_one_loss, accuracy, roc_auc; default log_loss or mse.")
    epsilon_rate: float = Field(0.1, description="Rashomon tolerance, a fraction of L*.")
    epsilon: float | None = Field(None, description="Absolute tolerance; overrides the rate.")
    delta: float = 0.1
    shuffle_times: int = Field(30, ge=1, le=10_000)
    permutation: Literal["independent", "joint"] = "independent"
    order: int = 2
    radii: list[float] = Field(default_factory=lambda: [1.0])
    features: list[str] | None = None
    lr: float = Field(0.1, gt=0)
    max_refinements: int = Field(4, ge=0, le=20)
    patience: int = Field(20, ge=1)
    m_max: float = Field(1000.0, gt=0)
    insensitive_tol: float = Field(1e-9, ge=0)
    max_rows: int = Field(2000, ge=2)
    random_state: int = Field(0, ge=0, lt=2**32)
    label_map: LabelMap | None = Field(
        None, description="Classifiers: which class of the model each label of the target "
        "column stands for, e.g. {\"no\": 0, \"yes\": 1}; labels not named are used as "
        "they are.")

    @field_validator("radii")
    @classmethod
    def _some_radius(cls, radii: list[float]) -> list[float]:
        if not radii:
            raise ValueError("give at least one radius")
        return radii

    def method_params(self) -> RashomonParams:
        """The params as the method takes them (explainers.rashomon), built as they are:
        ``check`` validates them against the model once, at POST; ``estimate`` and the
        job process build the params it stored without validating them again."""
        names = {f.name for f in fields(RashomonParams)}
        return RashomonParams(**{k: v for k, v in self.model_dump().items() if k in names})


def check(ctx: CheckContext[RashomonJobParams]) -> RashomonJobParams:
    """Validates the params against the model and stores them resolved: ``loss`` is the
    task's default when not given."""
    check_target(ctx, ctx.params.label_map)
    model = require_model(ctx)
    names = feature_names(model, model_columns(ctx))
    params = ctx.params.method_params()
    try:
        params.validate(len(names), names, task=model.task)  # type: ignore[arg-type]
    except (RashomonParamsError, ValueError) as exc:
        raise Unprocessable(str(exc), code="invalid_params") from exc
    return ctx.params.model_copy(
        update={"loss": params.resolved_loss(model.task)})  # type: ignore[arg-type]


def estimate(ctx: CheckContext[RashomonJobParams]) -> dict[str, Any]:
    model = require_model(ctx)
    params = ctx.params.method_params()
    n_features = len(feature_names(model, model_columns(ctx)))
    cost = estimate_checked_cost(ctx.dataset.n_rows, n_features, params)
    rows = int(cost["rows_to_predict"])
    return {"rows_to_predict": rows, "rows_by_stage": cost.get("rows_by_stage"),
            "seconds": round(rows / rows_per_second(ctx.model, n_threads=1) + 1.0, 1),
            **result_size(result_arrays(cost, n_features, params))}


def result_arrays(cost: dict[str, Any], p: int, params: RashomonParams
                  ) -> dict[str, tuple[tuple[int, ...], str]]:
    """Shape and dtype of every array of a result on ``p`` features, from the method's
    ``estimate_cost``. The search trace's length depends on the data: counted as
    TRACE_STEPS accepted steps per budget step, feature and direction (a few hundred
    kB at most: little next to the other arrays of a large result)."""
    d, o = params.n_steps + 1, params.order
    s, k = int(cost["n_subsets"]), int(cost["models_per_subset"])
    steps = 2 * int(cost["n_features_explored"]) * d * TRACE_STEPS
    floats = {"masks": (p, d, 2), "mask_losses": (p, d, 2), "main_effect_clouds": (p, d, 2),
              "main_effect_losses": (p, d, 2), "reference_main_effects": (p,),
              "reference_fis": (s,), "combo_radius": (k,), "fis_masks": (s, k, o),
              "fis_clouds": (s, k), "fis_losses": (s, k), "fis_in_set": (s, k),
              "fis_joint_effects": (s, k), "fis_main_effects": (s, k, o),
              "halo": (s, k, 2, o), "grid": (d,), "search_trace": (steps, 4)}
    integers = {"subsets": (s, o), "combo_steps": (k, o), "combo_signs": (k, o),
                "row_index": (int(cost["n_rows"]),)}
    return {**{name: (shape, "float32") for name, shape in floats.items()},
            **{name: (shape, "int64") for name, shape in integers.items()}}


def run(ctx: RunContext[RashomonJobParams]) -> JobOutput:
    assert ctx.model is not None
    params = ctx.params.method_params()
    ctx.progress(0.0, "loading")
    # The method samples max_rows itself (seeded, file order); load only what it needs
    # when the dataset is far larger.
    X, y = model_inputs(ctx, None, with_target=True)
    assert y is not None
    names = feature_names(ctx.model, model_columns(ctx))
    model = ctx.load_model()
    output: Output = "label" if model.task == "regression" else "probability"
    # Every row the method predicts is a masked (scaled) or permuted copy of rows of X:
    # when X is finite, so are they, and scikit-learn's finiteness check on each call (a
    # pass over the batch, twice for a pipeline) can be skipped. Its config is per thread.
    finite = bool(np.isfinite(X).all())

    def predict(rows: np.ndarray) -> np.ndarray:
        with sklearn.config_context(assume_finite=finite):
            return model.predict(rows, output=output, device=ctx.device)
    # Where the model runs (a scikit-learn model on a GPU worker stays on the CPU) sets
    # the size of the calls.
    device_used = model.place(ctx.device)
    # The predict calls are many and small: BLAS threads inside one call only add
    # hand-offs, so the worker's cores run whole calls side by side instead (the numbers
    # do not depend on it).
    # The method reports each of its four stages from 0 to 1: the job's progress gives
    # each the share of the rows it predicts.
    cost = estimate_checked_cost(len(X), X.shape[1], params)
    progress = stage_progress(ctx.progress, cost["rows_by_stage"], start=LOADING_SHARE)
    with threadpool_limits(limits=1, user_api="blas"):
        result = run_rashomon_interactions(
            predict, X, y, task=model.task,  # type: ignore[arg-type]
            feature_names=names, params=params,
            batch_rows=batch_rows_for(X.shape[1], device_used),
            n_jobs=max(1, ctx.n_threads), dtype=model.input_dtype,
            progress=progress)
    summary = result.summary()
    summary["provenance"] = {**summary.get("provenance", {}),
                             **provenance(seed=params.random_state)}
    return JobOutput(summary=summary, arrays=result.arrays(), array_dims=array_dims(result),
                     device_used=device_used)


def array_dims(result: RashomonResult) -> dict[str, list[Axis]]:
    """The axes of every array of ``result``, each labelled but the rows and steps."""
    names = result.feature_names
    feature = Axis("feature", names)
    budget = Axis("budget", [f"{t:g}" for t in result.grid])
    direction = Axis("direction", ["up", "down"])
    subset = Axis("subset", [":".join(names[f] for f in sub) for sub in result.subsets])
    order = result.subsets.shape[1]
    member = Axis("member", [f"member_{i + 1}" for i in range(order)])
    combo = Axis("combo", [
        f"r={r:g} a={'/'.join(str(int(a)) for a in steps)} "
        f"s={''.join('+' if sign > 0 else '-' for sign in signs)}"
        for r, steps, signs in zip(result.combo_radius, result.combo_steps,
                                   result.combo_signs, strict=True)])
    per_mask = [feature, budget, direction]
    per_combo = [subset, combo]
    return {
        "masks": per_mask, "mask_losses": per_mask, "main_effect_clouds": per_mask,
        "main_effect_losses": per_mask, "reference_main_effects": [feature],
        "subsets": [subset, member], "reference_fis": [subset], "combo_radius": [combo],
        "combo_steps": [combo, member], "combo_signs": [combo, member],
        "fis_masks": [*per_combo, member], "fis_clouds": per_combo, "fis_losses": per_combo,
        "fis_in_set": per_combo, "fis_joint_effects": per_combo,
        "fis_main_effects": [*per_combo, member],
        "halo": [*per_combo, Axis("point", ["empirical", "expected"]), member],
        "grid": [budget],
        "search_trace": [Axis("step"),
                         Axis("column", ["feature", "direction", "m", "loss_gap"])],
        "row_index": [Axis("row")],
    }



class HaloOptions(BaseModel):
    pair: str | None = Field(None, description="Two feature names, comma-separated.")


def _draw_halo(summary: dict[str, Any], arrays: dict[str, np.ndarray],
               pair: str | None = None) -> Any:
    chosen = None
    if pair:
        parts = [p.strip() for p in pair.split(",")]
        if len(parts) != 2:
            raise ValueError("pair must be two feature names separated by a comma, "
                             "e.g. ?pair=age,income.")
        chosen = (parts[0], parts[1])
    return draw_halo(summary, arrays, pair=chosen)


_ALL = ("masks", "mask_losses", "main_effect_clouds", "fis_clouds", "fis_losses",
        "fis_in_set", "halo", "search_trace", "subsets", "combo_radius", "combo_steps",
        "combo_signs", "main_effect_losses")

KIND = JobKind(
    name="rashomon_interactions",
    params_model=RashomonJobParams,
    result_advice=("explore fewer features (features), a lower order, fewer radii or a "
                   "larger delta"),
    needs_model=True,
    check=check,
    estimate=estimate,
    run=run,
    plots={
        "swarm": PlotSpec(draw=draw_swarm, arrays=_ALL, max_rows=100_000),
        "swarm_main": PlotSpec(draw=draw_swarm_main, arrays=_ALL, max_rows=100_000),
        "halo": PlotSpec(draw=_draw_halo, arrays=_ALL, max_rows=100_000, options=HaloOptions),
        "search_trace": PlotSpec(draw=draw_search_trace, arrays=_ALL, max_rows=100_000),
    },
)
