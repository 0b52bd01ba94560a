"""Feature interaction scores across a Rashomon set of masked models, batched.

Li, Wang, Deng and Barnard, "Exploring the cloud of feature interaction scores in a
Rashomon set" (ICLR 2024), as defined in shared/methods/rashomon_fis.md and as computed
by the authors' package ``generalized-rashomon-set`` 0.2.0, whose numbers this module
reproduces (float64) for the same data, model, features and params:

- the models are input masks ``M_m(x) = f(m * x)`` of a reference model ``f``; a model is
  in the Rashomon set when its loss is at most ``L* + epsilon``;
- main effects ``phi_i`` and joint effects ``phi_I`` are mean losses over ``T``
  permutations minus the unpermuted loss; ``FIS_I = phi_I - sum_i phi_i`` on one model;
- random numbers: stage ``s`` (1 reference mains, 5 reference joints, 3 main-effect
  clouds, 4 interaction clouds) gives job ``q`` of its ``N`` jobs the generator
  ``default_rng(SeedSequence(random_state, spawn_key=(s,)).spawn(N)[q])``; one
  permutation draw is ``rng.permuted(tile(arange(n), (T, 1)), axis=1)``; the draws
  happen in the package's order (per model: the joint draw(s), then each member's);
- losses are scikit-learn's metrics, re-computed on whole batches at once (mean over the
  rows of a copy; log loss clips probabilities to ``[eps, 1 - eps]`` of float64); sums
  over permutations are left to right from 0.0, as the package adds them.

Speed comes from batching, not from approximation: every masked or permuted copy of the
evaluation rows is an ``n``-row *block*; blocks are generated in one canonical order,
stacked into as few ``predict`` calls as ``batch_rows`` allows and scored together, one
loss per block. The greedy searches of all features and both directions run in lock-step
so that each step is one ``predict`` call. With ``n_jobs > 1`` predict calls run in
threads while the next batch is built (predict functions of numpy, scikit-learn and
onnxruntime release the GIL); the numbers never depend on ``batch_rows`` or ``n_jobs``
as long as ``predict`` scores each row independently of the other rows of its call.

Row sampling happens here: with more than ``max_rows`` rows, ``max_rows`` of them are
drawn without replacement by ``default_rng(random_state)`` and kept in file order; else
every row is used in file order. The rows used are returned (``row_index``).
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from itertools import combinations, product
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from explainers.progress import ProgressCallback, no_progress
from explainers.sampling import sample_rows

__all__ = [
    "Task",
    "LOSSES",
    "STAGES",
    "MAX_AUTO_FEATURES",
    "RashomonParams",
    "RashomonParamsError",
    "UnknownRashomonFeature",
    "UnknownLoss",
    "ZeroTolerance",
    "BadPredictions",
    "RashomonResult",
    "estimate_cost",
    "estimate_checked_cost",
    "rashomon_interactions",
    "run_rashomon_interactions",
]

logger = logging.getLogger(__name__)

Task = Literal["regression", "binary", "multiclass"]
Array = npt.NDArray[np.float64]

# Loss name -> the tasks it applies to. Score metrics become 1 - score (lower is better).
LOSSES: dict[str, frozenset[str]] = {
    "mse": frozenset({"regression"}),
    "rmse": frozenset({"regression"}),
    "mae": frozenset({"regression"}),
    "r2": frozenset({"regression"}),
    "log_loss": frozenset({"binary", "multiclass"}),
    "zero_one_loss": frozenset({"binary", "multiclass"}),
    "accuracy": frozenset({"binary", "multiclass"}),
    "roc_auc": frozenset({"binary"}),
}
_TASKS = ("regression", "binary", "multiclass")
# With no explicit feature list, at most this many features (largest |phi_i(f*)|) are
# explored: stage 4 grows with the square of their number.
MAX_AUTO_FEATURES = 12
# The package's absolute slack on every Rashomon bound (numerical ties count as inside).
_BOUND_SLACK = 1e-12
# Seeds per stage, as numbered by the package.
_SEED_REFERENCE_MAINS, _SEED_REFERENCE_JOINTS, _SEED_MAIN_CLOUDS, _SEED_INTERACTIONS = 1, 5, 3, 4
STAGES = ("reference", "search", "main_effects", "interactions")


class RashomonParamsError(ValueError):
    """The parameters of a Rashomon-set job are invalid."""


class UnknownRashomonFeature(RashomonParamsError):
    """A feature named in ``features`` is not a feature of the data."""


class UnknownLoss(RashomonParamsError):
    """The loss is not one of the supported names or does not fit the task."""


class ZeroTolerance(ValueError):
    """The Rashomon tolerance is 0: the reference loss is 0 and no absolute epsilon was
    given, so the set would only hold the reference model."""


class BadPredictions(ValueError):
    """``predict`` returned an array whose shape does not fit the task."""


@dataclass(frozen=True)
class RashomonParams:
    """Parameters of :func:`rashomon_interactions` (defaults of shared/methods/rashomon_fis.md).

    loss: ``mse``, ``rmse``, ``mae``, ``r2`` (regression); ``log_loss``,
        ``zero_one_loss``, ``accuracy``, ``roc_auc`` (binary only) for classifiers.
        None: ``log_loss`` for classifiers, ``mse`` for regression.
    epsilon_rate: Rashomon tolerance as a fraction of the reference loss.
    epsilon: absolute tolerance (loss units); overrides ``epsilon_rate``.
    delta: resolution of the loss budget; must divide 1.
    shuffle_times: permutations averaged per effect estimate (T).
    permutation: ``independent`` (each column of a subset its own permutation) or
        ``joint`` (one permutation for the whole subset).
    order: subset size of the interactions, 2 or 3.
    radii: loss budgets of the joint-masked models, in units of epsilon; positive
        multiples of delta between ``order * delta`` and ``order``.
    features: names of the features to explore; None: every feature the model uses, the
        ``MAX_AUTO_FEATURES`` with the largest reference main effect when more.
    lr, max_refinements, patience, m_max, insensitive_tol: greedy-search controls.
    max_rows: evaluation rows (a seeded sample when the data has more).
    random_state: seed of the row sample and of every permutation.
    """

    loss: str | None = None
    epsilon_rate: float = 0.1
    epsilon: float | None = None
    delta: float = 0.1
    shuffle_times: int = 30
    permutation: Literal["independent", "joint"] = "independent"
    order: int = 2
    radii: tuple[float, ...] = (1.0,)
    features: tuple[str, ...] | None = None
    lr: float = 0.1
    max_refinements: int = 4
    patience: int = 20
    m_max: float = 1000.0
    insensitive_tol: float = 1e-9
    max_rows: int = 2000
    random_state: int = 0

    def __post_init__(self) -> None:
        # Lists arrive from JSON; tuples keep the frozen object hashable.
        object.__setattr__(self, "radii", tuple(float(r) for r in self.radii))
        if self.features is not None and not isinstance(self.features, str):
            object.__setattr__(self, "features", tuple(self.features))

    @property
    def n_steps(self) -> int:
        """Number of budget steps ``1 / delta``."""
        return int(round(1.0 / self.delta))

    def resolved_loss(self, task: Task) -> str:
        """The loss name used for ``task``."""
        if self.loss is not None:
            return self.loss
        return "mse" if task == "regression" else "log_loss"

    def validate(
        self, n_features: int, feature_names: Sequence[str], *, task: Task | None = None
    ) -> None:
        """Raise a :class:`RashomonParamsError` (a ``ValueError``) naming the first problem.

        ``task``, when given, is checked against the loss.
        """
        names = list(feature_names)
        if len(names) != n_features:
            raise RashomonParamsError(
                f"{len(names)} feature names were given for {n_features} features."
            )
        if self.loss is not None and self.loss not in LOSSES:
            raise UnknownLoss(
                f"Unknown loss {self.loss!r}; use one of {', '.join(sorted(LOSSES))}."
            )
        if task is not None:
            if task not in _TASKS:
                raise RashomonParamsError(f"Unknown task {task!r}; use one of {_TASKS}.")
            loss = self.resolved_loss(task)
            if task not in LOSSES[loss]:
                raise UnknownLoss(
                    f"The loss {loss!r} does not apply to a {task} model; use one of "
                    f"{', '.join(k for k, v in LOSSES.items() if task in v)}."
                )
        if not (math.isfinite(self.epsilon_rate) and self.epsilon_rate > 0):
            raise RashomonParamsError(
                f"epsilon_rate must be a positive number, got {self.epsilon_rate}."
            )
        if self.epsilon is not None and not (math.isfinite(self.epsilon) and self.epsilon > 0):
            raise RashomonParamsError(f"epsilon must be a positive number, got {self.epsilon}.")
        if not (math.isfinite(self.delta) and 0 < self.delta <= 1) or abs(
            self.n_steps * self.delta - 1.0
        ) > 1e-9:
            raise RashomonParamsError(
                f"delta must divide 1 (such as 0.1, 0.2, 0.25 or 0.5), got {self.delta}."
            )
        if self.order not in (2, 3):
            raise RashomonParamsError(f"order must be 2 or 3, got {self.order}.")
        if not self.radii:
            raise RashomonParamsError("radii must hold at least one loss budget.")
        for r in self.radii:
            units = r / self.delta
            if not (
                math.isfinite(r)
                and r > 0
                and abs(units - round(units)) <= 1e-9
                and self.order <= round(units) <= self.order * self.n_steps
            ):
                raise RashomonParamsError(
                    f"Every radius must be a positive multiple of delta={self.delta} between "
                    f"{self.order * self.delta:g} and {self.order} for order {self.order}, "
                    f"got {r}."
                )
        if self.shuffle_times < 1:
            raise RashomonParamsError(
                f"shuffle_times must be at least 1, got {self.shuffle_times}."
            )
        if self.permutation not in ("independent", "joint"):
            raise RashomonParamsError(
                f"permutation must be 'independent' or 'joint', got {self.permutation!r}."
            )
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise RashomonParamsError(f"lr must be a positive number, got {self.lr}.")
        if self.max_refinements < 1 or self.patience < 1:
            raise RashomonParamsError("max_refinements and patience must be at least 1.")
        if not self.m_max > 0:
            raise RashomonParamsError(f"m_max must be positive, got {self.m_max}.")
        if not (self.insensitive_tol >= 0 and math.isfinite(self.insensitive_tol)):
            raise RashomonParamsError(
                f"insensitive_tol must be a non-negative number, got {self.insensitive_tol}."
            )
        if self.max_rows < 2:
            raise RashomonParamsError(f"max_rows must be at least 2, got {self.max_rows}.")
        if self.features is not None:
            if isinstance(self.features, str):
                raise RashomonParamsError("features must be a list of feature names.")
            unknown = [f for f in self.features if f not in names]
            if unknown:
                raise UnknownRashomonFeature(
                    f"Unknown feature(s) {unknown}; the data has {names}."
                )
            if len(set(self.features)) != len(self.features):
                raise RashomonParamsError(f"features lists a feature twice: {self.features}.")
            if len(self.features) < self.order:
                raise RashomonParamsError(
                    f"features must name at least order={self.order} features, "
                    f"got {len(self.features)}."
                )
        elif n_features < self.order:
            raise RashomonParamsError(
                f"The data has {n_features} features, fewer than order={self.order}."
            )


# --------------------------------------------------------------------------- cost


def estimate_cost(
    n_rows: int, n_features: int, params: RashomonParams, *, task: Task
) -> dict[str, Any]:
    """Rows that ``predict`` will see for a job on ``n_rows`` x ``n_features`` data.

    Returns ``{"rows_to_predict": int, "rows_by_stage": {stage: int}, "n_rows": int,
    "n_features_explored": int, "n_subsets": int, "models_per_subset": int, "exact":
    {stage: bool}}``. Stages ``reference`` and ``interactions`` are exact when every
    explored feature stays active (a feature the model ignores lowers them); ``search``
    depends on the data and is an estimate (``max_refinements + 1`` trials per budget
    step and direction); ``main_effects`` is an upper bound (distinct masks only).
    """
    params.validate(n_features, _names_for_estimate(n_features, params.features), task=task)
    return estimate_checked_cost(n_rows, n_features, params)


def estimate_checked_cost(n_rows: int, n_features: int, params: RashomonParams
                          ) -> dict[str, Any]:
    """:func:`estimate_cost` for params already validated for data of ``n_features``
    columns (``params.validate``): they are not checked again."""
    n = min(int(n_rows), params.max_rows)
    t = params.shuffle_times
    scored = len(params.features) if params.features is not None else n_features
    explored = scored if params.features is not None else min(scored, MAX_AUTO_FEATURES)
    n_subsets = math.comb(explored, params.order)
    n_combos = len(_interaction_combos(params))
    d = params.n_steps + 1
    rows = {
        "reference": n * (1 + scored * t + n_subsets * t),
        "search": n * 2 * explored * d * (params.max_refinements + 1),
        "main_effects": n * 2 * explored * d * (1 + t),
        "interactions": n * n_subsets * n_combos * (1 + (params.order + 1) * t),
    }
    return {
        "rows_to_predict": int(sum(rows.values())),
        "rows_by_stage": {k: int(v) for k, v in rows.items()},
        "n_rows": n,
        "n_features_explored": explored,
        "n_subsets": n_subsets,
        "models_per_subset": n_combos,
        "exact": {"reference": True, "search": False, "main_effects": False,
                  "interactions": True},
    }


def _names_for_estimate(n_features: int, features: Sequence[str] | None) -> list[str]:
    """Names for validating params when only the size of the data is known: the listed
    features first, placeholders (which no real name equals) for the rest."""
    listed = list(features or ())
    return listed + [f"\0feature{i}" for i in range(max(0, n_features - len(listed)))]


# -------------------------------------------------------------------------- result


@dataclass(frozen=True, eq=False)
class RashomonResult:
    """Everything :func:`rashomon_interactions` computed.

    Shapes: ``p`` features of the data, ``d = 1/delta + 1`` budget steps, ``S`` subsets,
    ``K`` joint-masked models per subset, ``o`` the order. Feature-indexed arrays hold
    NaN for features that were not explored. Direction index 0 is the upper mask
    (``m >= 1``), 1 the lower.
    """

    feature_names: tuple[str, ...]
    task: Task
    loss: str
    params: RashomonParams
    loss_ref: float
    epsilon: float
    scored_features: tuple[int, ...]
    active_features: tuple[int, ...]
    dropped_features: tuple[int, ...]
    unselected_features: tuple[int, ...]
    insensitive_features: tuple[int, ...]
    hit_m_max_features: tuple[int, ...]
    row_index: npt.NDArray[np.int64]  # [n] data rows evaluated, in file order
    n_rows_total: int
    rows_predicted: dict[str, int]  # rows sent to predict, per stage
    reference_main_effects: Array  # [p]
    subsets: npt.NDArray[np.int64]  # [S, o] feature indices, lexicographic
    reference_joint_effects: Array  # [S]
    reference_fis: Array  # [S]
    grid: Array  # [d] budget fractions 0, delta, ..., 1
    masks: Array  # [p, d, 2]
    mask_losses: Array  # [p, d, 2] loss of each searched model
    trace: Array  # [N, 4] accepted search steps: feature, direction, m, loss - L*
    main_effect_clouds: Array  # [p, d, 2] phi_i of the model masked on i
    main_effect_losses: Array  # [p, d, 2] loss of that model (mask rounded to 1e-12)
    combo_radius: Array  # [K]
    combo_steps: npt.NDArray[np.int64]  # [K, o] budget steps a (sum r/delta)
    combo_signs: npt.NDArray[np.int64]  # [K, o] +1 upper mask, -1 lower mask
    fis_masks: Array  # [S, K, o]
    fis_losses: Array  # [S, K]
    fis_joint_effects: Array  # [S, K]
    fis_main_effects: Array  # [S, K, o]
    fis_clouds: Array  # [S, K]
    elapsed_s: dict[str, float] = field(default_factory=dict)

    @property
    def fis_in_set(self) -> npt.NDArray[np.bool_]:
        """[S, K]: the joint-masked model is in the Rashomon set."""
        return self.fis_losses <= self.loss_ref + self.epsilon + _BOUND_SLACK

    @property
    def halo(self) -> Array:
        """[S, K, 2, o]: ``[..., 0, :]`` the empirical point (loss change of the jointly
        masked model) * u * sigma, ``[..., 1, :]`` the expected point r * epsilon * u *
        sigma, with ``u = a / |a|`` and sigma the mask directions."""
        a = self.combo_steps.astype(np.float64)
        u = a / np.linalg.norm(a, axis=1, keepdims=True) * self.combo_signs
        empirical = (self.fis_losses - self.loss_ref)[:, :, None] * u[None]
        expected = np.broadcast_to((self.combo_radius * self.epsilon)[:, None] * u,
                                   empirical.shape)
        return np.stack([empirical, expected], axis=2)

    def summary(self) -> dict[str, Any]:
        """JSON-able summary (shared/methods/rashomon_fis.md, "Result summary")."""
        names = self.feature_names
        mains = []
        for f in self.active_features:
            v = self.main_effect_clouds[f].ravel()
            v = v[np.isfinite(v)]
            mains.append({"feature": names[f], "reference": _num(self.reference_main_effects[f]),
                          **_stats(v), "n_models": int(v.size)})
        in_set = self.fis_in_set
        inter: list[dict[str, Any]] = []
        for s, sub in enumerate(self.subsets):
            v = self.fis_clouds[s]
            vi = v[in_set[s]]
            inter.append({
                "features": [names[f] for f in sub],
                "reference": _num(self.reference_fis[s]),
                **_stats(v),
                "n_models": int(v.size),
                "frac_in_set": float(in_set[s].mean()) if v.size else 0.0,
                "in_set": {"min": _num(vi.min()) if vi.size else None,
                           "max": _num(vi.max()) if vi.size else None,
                           "mean": _num(vi.mean()) if vi.size else None},
            })
        inter.sort(key=lambda r: -((r["max"] or 0.0) - (r["min"] or 0.0)))
        params = asdict(self.params)
        params["loss"] = self.loss
        params["radii"] = list(self.params.radii)
        params["features"] = None if self.params.features is None else list(self.params.features)
        return {
            "loss": self.loss,
            "loss_ref": _num(self.loss_ref),
            "epsilon": _num(self.epsilon),
            "epsilon_rate": (self.params.epsilon_rate if self.params.epsilon is None
                             else _num(self.epsilon / self.loss_ref) if self.loss_ref else None),
            "feature_names": list(names),
            "active_features": [names[f] for f in self.active_features],
            "dropped_features": [names[f] for f in self.dropped_features],
            "unselected_features": [names[f] for f in self.unselected_features],
            "insensitive_features": [names[f] for f in self.insensitive_features],
            "hit_m_max_features": [names[f] for f in self.hit_m_max_features],
            "main_effects": mains,
            "interactions": inter,
            "params": params,
            "provenance": {
                "method": "rashomon_interactions",
                "reference": "Li et al., ICLR 2024; generalized-rashomon-set 0.2.0",
                "task": self.task,
                "numpy": np.__version__,
                "n_rows": int(self.row_index.size),
                "n_rows_total": int(self.n_rows_total),
                "rows_predicted": int(sum(self.rows_predicted.values())),
                "rows_by_stage": {k: int(v) for k, v in self.rows_predicted.items()},
                "random_state": int(self.params.random_state),
                "elapsed_s": {k: round(v, 3) for k, v in self.elapsed_s.items()},
            },
        }

    def arrays(self) -> dict[str, np.ndarray]:
        """Arrays for storage and figures; see the field comments for shapes."""
        trace = self.trace
        return {
            "masks": self.masks,
            "mask_losses": self.mask_losses,
            "main_effect_clouds": self.main_effect_clouds,
            "main_effect_losses": self.main_effect_losses,
            "reference_main_effects": self.reference_main_effects,
            "subsets": self.subsets,
            "reference_fis": self.reference_fis,
            "combo_radius": self.combo_radius,
            "combo_steps": self.combo_steps,
            "combo_signs": self.combo_signs,
            "fis_masks": self.fis_masks,
            "fis_clouds": self.fis_clouds,
            "fis_losses": self.fis_losses,
            "fis_in_set": self.fis_in_set.astype(np.float64),
            "fis_joint_effects": self.fis_joint_effects,
            "fis_main_effects": self.fis_main_effects,
            "halo": self.halo,
            "grid": self.grid,
            "search_trace": trace,
            "row_index": self.row_index,
        }


def _num(x: float) -> float | None:
    """A plain float for JSON, None for NaN/inf."""
    x = float(x)
    return x if math.isfinite(x) else None


def _stats(v: np.ndarray) -> dict[str, float | None]:
    if v.size == 0:
        return {"min": None, "max": None, "mean": None, "std": None}
    return {"min": _num(v.min()), "max": _num(v.max()), "mean": _num(v.mean()),
            "std": _num(v.std())}


# ---------------------------------------------------------------------- the method


def rashomon_interactions(
    predict: Callable[[np.ndarray], np.ndarray],
    X: np.ndarray,
    y: np.ndarray,
    *,
    task: Task,
    feature_names: Sequence[str],
    params: RashomonParams = RashomonParams(),
    batch_rows: int = 1_000_000,
    n_jobs: int = 1,
    dtype: npt.DTypeLike = np.float64,
    progress: ProgressCallback = no_progress,
) -> RashomonResult:
    """Sample a Rashomon set of masked models and the cloud of their interaction scores.

    predict: ``predict(X float64 [m, p])`` returns predictions [m] (regression) or class
        probabilities [m, K] (classifiers; [m] is read as P(class 1) for binary).
    X: [n, p] data; y: [n] targets (regression) or the true class as the index of its
        column in ``predict``'s output (classifiers).
    task: ``regression``, ``binary`` or ``multiclass``.
    feature_names: [p] names, used by ``params.features`` and in the summary.
    batch_rows: most rows per ``predict`` call (at least one n-row block is sent).
    n_jobs: threads running ``predict`` calls; results do not depend on it.
    dtype: of the rows given to ``predict``. ``np.float32`` for a model that computes in
        float32 (an ONNX graph with a float input) writes them once instead of writing
        float64 rows that the model then converts; the values are the same.
    progress: called with (fraction, stage) between batches of every stage; may raise
        :class:`explainers.progress.Cancelled` to stop.

    Raises :class:`RashomonParamsError` for invalid params (before any predict),
    :class:`ZeroTolerance` when the reference loss is 0 and no epsilon is given,
    :class:`BadPredictions` when ``predict`` returns an unexpected shape.
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"X must be a 2-D matrix, got shape {X.shape}.")
    params.validate(X.shape[1], feature_names, task=task)
    return run_rashomon_interactions(predict, X, y, task=task, feature_names=feature_names,
                                     params=params, batch_rows=batch_rows, n_jobs=n_jobs,
                                     dtype=dtype, progress=progress)


def run_rashomon_interactions(
    predict: Callable[[np.ndarray], np.ndarray],
    X: np.ndarray,
    y: np.ndarray,
    *,
    task: Task,
    feature_names: Sequence[str],
    params: RashomonParams,
    batch_rows: int = 1_000_000,
    n_jobs: int = 1,
    dtype: npt.DTypeLike = np.float64,
    progress: ProgressCallback = no_progress,
) -> RashomonResult:
    """:func:`rashomon_interactions` with ``params`` already validated for this task and
    these features (``params.validate(X.shape[1], feature_names, task=task)``): they are
    not checked again; the data and the other arguments are."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"X must be a 2-D matrix, got shape {X.shape}.")
    n_total = X.shape[0]
    if batch_rows < 1 or n_jobs < 1:
        raise ValueError(f"batch_rows and n_jobs must be at least 1, got {batch_rows}, {n_jobs}.")
    y = np.asarray(y)
    if y.shape != (n_total,):
        raise ValueError(f"y must have shape ({n_total},), got {y.shape}.")
    if n_total < 2:
        raise ValueError("At least 2 rows are needed to permute a feature.")
    row_index = sample_rows(n_total, params.max_rows, params.random_state)
    Xs = np.ascontiguousarray(X[row_index])
    ys = _prepare_target(y[row_index], task)
    loss_name = params.resolved_loss(task)
    names = tuple(str(f) for f in feature_names)
    timings: dict[str, float] = {}

    pool = ThreadPoolExecutor(max_workers=n_jobs) if n_jobs > 1 else None
    try:
        engine = _BlockEngine(predict, _batch_loss(loss_name, ys), task, Xs.shape, batch_rows,
                              pool, n_jobs, np.dtype(dtype))
        rows: dict[str, int] = {}

        def finish(stage: str, t0: float, rows_before: int) -> None:
            timings[stage] = time.perf_counter() - t0
            rows[stage] = engine.rows_predicted - rows_before

        t0, r0 = time.perf_counter(), engine.rows_predicted
        ref = _reference_stage(engine, Xs, params, names, progress)
        finish("reference", t0, r0)
        epsilon = params.epsilon if params.epsilon is not None else ref.loss * params.epsilon_rate
        if not epsilon > 0:
            raise ZeroTolerance(
                f"The reference {loss_name} is {ref.loss}, so epsilon_rate gives a tolerance of "
                "0; pass an absolute epsilon instead."
            )
        t0, r0 = time.perf_counter(), engine.rows_predicted
        search = _search_stage(engine, Xs, params, ref, epsilon, progress)
        finish("search", t0, r0)
        t0, r0 = time.perf_counter(), engine.rows_predicted
        clouds, cloud_losses = _main_effect_stage(engine, Xs, params, ref.active, search.masks,
                                                  progress)
        finish("main_effects", t0, r0)
        t0, r0 = time.perf_counter(), engine.rows_predicted
        inter = _interaction_stage(engine, Xs, params, ref.subsets, search.masks, progress)
        finish("interactions", t0, r0)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    logger.info("rashomon_interactions done", extra={"event": "rashomon_done",
                                                     "rows_predicted": rows,
                                                     "elapsed_s": timings})
    combos = _interaction_combos(params)
    return RashomonResult(
        feature_names=names, task=task, loss=loss_name, params=params, loss_ref=ref.loss,
        epsilon=float(epsilon), scored_features=ref.scored, active_features=ref.active,
        dropped_features=ref.dropped, unselected_features=ref.unselected,
        insensitive_features=search.insensitive, hit_m_max_features=search.hit_m_max,
        row_index=row_index, n_rows_total=n_total, rows_predicted=rows,
        reference_main_effects=ref.main_effects,
        subsets=np.array(ref.subsets, dtype=np.int64).reshape(len(ref.subsets), params.order),
        reference_joint_effects=ref.joint_effects, reference_fis=ref.fis, grid=search.grid,
        masks=search.masks, mask_losses=search.losses, trace=search.trace,
        main_effect_clouds=clouds, main_effect_losses=cloud_losses,
        combo_radius=np.array([c[0] for c in combos]),
        combo_steps=np.array([c[1] for c in combos], dtype=np.int64),
        combo_signs=np.array([[1 - 2 * s for s in c[2]] for c in combos], dtype=np.int64),
        fis_masks=inter.masks, fis_losses=inter.losses, fis_joint_effects=inter.joint,
        fis_main_effects=inter.mains, fis_clouds=inter.fis, elapsed_s=timings,
    )


def _prepare_target(y: np.ndarray, task: Task) -> np.ndarray:
    if task == "regression":
        return y.astype(np.float64)
    codes = y.astype(np.int64)
    if not np.array_equal(codes, y) or codes.min() < 0:
        raise ValueError("For classifiers y must hold class indices 0..K-1 (columns of "
                         "predict's output).")
    return codes


# ---------------------------------------------------------------------------- losses


def _batch_loss(name: str, y: np.ndarray) -> Callable[[np.ndarray], Array]:
    """Loss of each block: predictions [B, n] or [B, n, K] -> [B], as scikit-learn's
    metric would give on each block (mean over rows, score metrics as 1 - score)."""
    n = y.shape[0]
    if name in ("mse", "rmse"):
        def mse(pred: np.ndarray) -> Array:
            return np.mean((y - pred) ** 2, axis=1)
        return mse if name == "mse" else (lambda pred: np.sqrt(mse(pred)))
    if name == "mae":
        return lambda pred: np.mean(np.abs(pred - y), axis=1)
    if name == "r2":
        total = np.sum((y - np.mean(y)) ** 2)
        return lambda pred: 1.0 - (1.0 - np.sum((y - pred) ** 2, axis=1) / total)
    rows = np.arange(n)
    if name == "log_loss":
        eps = np.finfo(np.float64).eps

        def log_loss(proba: np.ndarray) -> Array:
            # Fancy indexing may return a column-major [B, n]; each block's mean must see
            # its row contiguous, as a lone block would, so that B never changes a sum.
            p = np.clip(np.ascontiguousarray(proba[:, rows, y]), eps, 1 - eps)
            return np.mean(-np.log(p), axis=1)
        return log_loss
    if name in ("zero_one_loss", "accuracy"):
        return lambda proba: 1.0 - np.mean(np.argmax(proba, axis=2) == y, axis=1)
    if name == "roc_auc":
        from scipy.stats import rankdata

        positive = y == 1
        n_pos = int(positive.sum())
        n_neg = n - n_pos

        def one_minus_auc(proba: np.ndarray) -> Array:
            ranks = rankdata(proba[:, :, 1], axis=1)
            rank_sum = np.ascontiguousarray(ranks[:, positive]).sum(axis=1)
            auc = (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
            return 1.0 - auc
        return one_minus_auc
    raise UnknownLoss(f"Unknown loss {name!r}; use one of {', '.join(sorted(LOSSES))}.")


# ---------------------------------------------------------------------- the engine


class _BlockEngine:
    """Predicts n-row blocks in batches of at most ``batch_rows`` rows and returns one
    loss per block, in the order the blocks were given."""

    def __init__(
        self,
        predict: Callable[[np.ndarray], np.ndarray],
        loss: Callable[[np.ndarray], Array],
        task: Task,
        shape: tuple[int, int],
        batch_rows: int,
        pool: ThreadPoolExecutor | None,
        n_jobs: int,
        dtype: np.dtype,
    ) -> None:
        self._predict = predict
        self._dtype = dtype
        self._loss = loss
        self._task = task
        self._n, self._p = shape
        self._blocks_per_call = max(1, batch_rows // self._n)
        self._pool = pool
        self._in_flight_max = n_jobs
        self.rows_predicted = 0

    def losses(
        self,
        stacks: Iterable[_Copies],
        n_blocks: int,
        report: Callable[[int], None],
    ) -> Array:
        """Losses of ``n_blocks`` blocks arriving in groups of copies (any count >= 1).

        ``report(blocks_done)`` runs between batches, in the calling thread.
        """
        out = np.empty(n_blocks)
        in_flight: deque[tuple[int, int, Future[Array] | Array]] = deque()
        done = 0

        def collect() -> None:
            nonlocal done
            start, count, job = in_flight.popleft()
            out[start:start + count] = job.result() if isinstance(job, Future) else job
            done += count
            report(done)

        try:
            for start, plan in self._batches(stacks):
                count = sum(take for _, _, take in plan)
                self.rows_predicted += count * self._n
                if self._pool is None:
                    in_flight.append((start, count, self._score(plan, count)))
                else:
                    in_flight.append((start, count,
                                      self._pool.submit(self._score, plan, count)))
                while len(in_flight) >= self._in_flight_max:
                    collect()
            while in_flight:
                collect()
        except BaseException:
            for _, _, job in in_flight:
                if isinstance(job, Future):
                    job.cancel()
            raise
        if done != n_blocks:
            raise AssertionError(f"{done} blocks scored, {n_blocks} expected")
        return out

    def _batches(self, stacks: Iterable[_Copies]
                 ) -> Iterator[tuple[int, list[tuple[_Copies, int, int]]]]:
        """Plans of batches of ``_blocks_per_call`` blocks (the last one smaller): for each
        batch, the (group of copies, first copy, count) to write into it, in order; a group
        may straddle two batches. The writing happens in :meth:`_score`, on the thread that
        predicts, so that with ``n_jobs`` threads the copies are written side by side too."""
        cap = self._blocks_per_call
        plan: list[tuple[_Copies, int, int]] = []
        filled = start = 0
        for stack in stacks:
            i = 0
            while i < stack.count:
                take = min(stack.count - i, cap - filled)
                plan.append((stack, i, take))
                filled += take
                i += take
                if filled == cap:
                    yield start, plan
                    start += cap
                    plan, filled = [], 0
        if plan:
            yield start, plan

    def _score(self, plan: list[tuple[_Copies, int, int]], b: int) -> Array:
        batch = np.empty((b, self._n, self._p), dtype=self._dtype)
        at = 0
        for stack, first, take in plan:
            stack.fill(batch[at:at + take], first)
            at += take
        rows = b * self._n
        pred = np.asarray(self._predict(batch.reshape(rows, self._p)), dtype=np.float64)
        if self._task == "regression":
            if pred.shape not in ((rows,), (rows, 1)):
                raise BadPredictions(
                    f"predict returned shape {pred.shape} for {rows} rows; a regression model "
                    f"must return ({rows},)."
                )
            return self._loss(pred.reshape(b, self._n))
        if pred.ndim == 1 and self._task == "binary" and pred.shape[0] == rows:
            pred = np.stack([1.0 - pred, pred], axis=1)
        if pred.ndim != 2 or pred.shape[0] != rows or pred.shape[1] < 2:
            raise BadPredictions(
                f"predict returned shape {pred.shape} for {rows} rows; a classifier must "
                f"return class probabilities ({rows}, K)."
            )
        return self._loss(pred.reshape(b, self._n, pred.shape[1]))


@dataclass(frozen=True)
class _Copies:
    """``count`` n-row blocks, written on demand: copies of ``base`` [n, p] in which each
    of ``columns`` takes its rows from ``perms`` (one [count, n] index array per column)."""

    base: np.ndarray
    columns: tuple[int, ...] = ()
    perms: tuple[npt.NDArray[np.intp], ...] = ()
    count: int = 1

    def fill(self, out: np.ndarray, start: int) -> None:
        """Write copies ``start .. start + len(out)`` into ``out`` [c, n, p]."""
        out[:] = self.base
        stop = start + out.shape[0]
        for f, perm in zip(self.columns, self.perms, strict=True):
            out[:, :, f] = self.base[perm[start:stop], f]


def _stage_report(progress: ProgressCallback, stage: str, total: int, start: float = 0.0,
                  share: float = 1.0) -> Callable[[int], None]:
    def report(done: int) -> None:
        progress(min(1.0, start + share * done / max(total, 1)), stage)
    return report


def _spawn(random_state: int, stage: int, n: int) -> list[np.random.Generator]:
    seeds = np.random.SeedSequence(random_state, spawn_key=(stage,)).spawn(n)
    return [np.random.default_rng(s) for s in seeds]


def _draw(rng: np.random.Generator, n: int, times: int) -> npt.NDArray[np.intp]:
    """``times`` row permutations [times, n], drawn as the package draws them."""
    return rng.permuted(np.tile(np.arange(n), (times, 1)), axis=1)


def _permuted_copies(
    Xm: np.ndarray, columns: Sequence[int], rng: np.random.Generator, times: int, joint: bool
) -> _Copies:
    """``times`` copies of ``Xm`` with ``columns`` permuted: one draw per column, or one
    draw for all when ``joint``. The draws happen now, in the package's order."""
    n = Xm.shape[0]
    if joint:
        perms = _draw(rng, n, times)
        return _Copies(Xm, tuple(columns), tuple(perms for _ in columns), times)
    return _Copies(Xm, tuple(columns), tuple(_draw(rng, n, times) for _ in columns), times)


def _masked(X: np.ndarray, columns: Sequence[int], factors: Sequence[float]) -> np.ndarray:
    Xm = X.copy()
    for f, m in zip(columns, factors, strict=True):
        Xm[:, f] = X[:, f] * m
    return Xm


def _sequential_mean(losses: Array) -> Array:
    """Mean over the last axis, summed left to right from 0.0 like the package."""
    return np.cumsum(losses, axis=-1)[..., -1] / losses.shape[-1]


# ------------------------------------------------------------------- stage 1: reference


@dataclass(frozen=True)
class _Reference:
    loss: float
    scored: tuple[int, ...]
    active: tuple[int, ...]
    dropped: tuple[int, ...]
    unselected: tuple[int, ...]
    main_effects: Array
    subsets: list[tuple[int, ...]]
    joint_effects: Array
    fis: Array


def _reference_stage(engine: _BlockEngine, X: np.ndarray, params: RashomonParams,
                     names: tuple[str, ...], progress: ProgressCallback) -> _Reference:
    n, p = X.shape
    t = params.shuffle_times
    joint = params.permutation == "joint"
    scored = [names.index(f) for f in params.features] if params.features is not None \
        else list(range(p))
    # The joint pass has at most C(len(scored), order) subsets: the fraction is bounded.
    first = 1 + len(scored) * t
    second = math.comb(min(len(scored), MAX_AUTO_FEATURES if params.features is None
                           else len(scored)), params.order) * t
    share = first / (first + second)
    progress(0.0, "reference")
    rngs = _spawn(params.random_state, _SEED_REFERENCE_MAINS, len(scored))

    def main_stacks() -> Iterator[_Copies]:
        yield _Copies(X)
        for f, rng in zip(scored, rngs, strict=True):
            yield _permuted_copies(X, [f], rng, t, joint)

    losses = engine.losses(main_stacks(), first, _stage_report(progress, "reference", first,
                                                                0.0, share))
    loss_ref = float(losses[0])
    main = np.full(p, np.nan)
    main[scored] = _sequential_mean(losses[1:].reshape(len(scored), t)) - loss_ref
    zero = params.insensitive_tol * max(abs(loss_ref), np.finfo(float).tiny)
    dropped = [f for f in scored if abs(main[f]) <= zero]
    active = [f for f in scored if f not in dropped]
    unselected: list[int] = []
    if params.features is None and len(active) > MAX_AUTO_FEATURES:
        keep = set(sorted(active, key=lambda f: -abs(main[f]))[:MAX_AUTO_FEATURES])
        unselected = [f for f in active if f not in keep]
        active = [f for f in active if f in keep]
    subsets = list(combinations(active, params.order))
    joint_losses = np.empty(0)
    if subsets:
        rngs = _spawn(params.random_state, _SEED_REFERENCE_JOINTS, len(subsets))
        stacks = (_permuted_copies(X, s, rng, t, joint)
                  for s, rng in zip(subsets, rngs, strict=True))
        joint_losses = engine.losses(stacks, len(subsets) * t,
                                     _stage_report(progress, "reference", len(subsets) * t,
                                                   share, 1.0 - share))
    joint_effects = _sequential_mean(joint_losses.reshape(len(subsets), t)) - loss_ref
    fis = joint_effects - np.array([sum(main[f] for f in s) for s in subsets])
    progress(1.0, "reference")
    return _Reference(loss_ref, tuple(scored), tuple(active), tuple(dropped), tuple(unselected),
                      main, subsets, joint_effects, fis)


# ---------------------------------------------------------------- stage 2: mask search


@dataclass
class _Walk:
    """State of the greedy search of one feature in one direction."""

    feature: int
    direction: int  # 0 up, 1 down
    m: float
    loss: float
    step: float
    masks: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    fails: int = 0
    stalled: int = 0
    insensitive: bool = False
    hit_m_max: bool = False

    @property
    def sign(self) -> float:
        return 1.0 if self.direction == 0 else -1.0


@dataclass(frozen=True)
class _Search:
    grid: Array
    masks: Array
    losses: Array
    trace: Array
    insensitive: tuple[int, ...]
    hit_m_max: tuple[int, ...]


def _search_stage(engine: _BlockEngine, X: np.ndarray, params: RashomonParams, ref: _Reference,
                  epsilon: float, progress: ProgressCallback) -> _Search:
    """Greedy search of every active feature and direction, in lock-step: each round
    sends one trial mask of every unfinished walk in one batch. Deterministic."""
    p = X.shape[1]
    grid = np.linspace(0.0, 1.0, params.n_steps + 1)
    d = grid.size
    stall_tol = params.insensitive_tol * max(abs(ref.loss), np.finfo(float).tiny)
    walks = [_Walk(f, s, 1.0, ref.loss, params.lr) for f in ref.active for s in (0, 1)]
    trace: list[tuple[float, float, float, float]] = []
    total = len(walks) * d
    progress(0.0, "search")

    def next_trial(w: _Walk) -> float | None:
        """Record finished budget steps; the next mask to try, or None when done."""
        while len(w.masks) < d:
            if w.fails < params.max_refinements and not w.insensitive and not w.hit_m_max:
                return w.m + w.sign * w.step
            w.masks.append(w.m)
            w.losses.append(w.loss)
            w.step, w.fails = params.lr, 0
        return None

    while True:
        trials = [(w, m) for w in walks if (m := next_trial(w)) is not None]
        if not trials:
            break
        stacks = (_Copies(_masked(X, [w.feature], [m])) for w, m in trials)
        losses = engine.losses(stacks, len(trials), lambda _: None)
        for (w, m), loss in zip(trials, losses, strict=True):
            bound = ref.loss + grid[len(w.masks)] * epsilon + _BOUND_SLACK
            loss = float(loss)
            if loss <= bound:
                w.stalled = w.stalled + 1 if abs(loss - w.loss) <= stall_tol else 0
                w.m, w.loss = m, loss
                trace.append((w.feature, w.direction, m, loss - ref.loss))
                w.insensitive = w.insensitive or w.stalled >= params.patience
                w.hit_m_max = w.hit_m_max or abs(m) > params.m_max
            else:
                w.step *= 0.1
                w.fails += 1
        progress(sum(len(w.masks) for w in walks) / total, "search")

    masks = np.full((p, d, 2), np.nan)
    mask_losses = np.full((p, d, 2), np.nan)
    for w in walks:
        masks[w.feature, :, w.direction] = w.masks
        mask_losses[w.feature, :, w.direction] = w.losses
    progress(1.0, "search")
    return _Search(
        grid, masks, mask_losses,
        np.array(trace, dtype=np.float64).reshape(len(trace), 4),
        tuple(sorted({w.feature for w in walks if w.insensitive})),
        tuple(sorted({w.feature for w in walks if w.hit_m_max})),
    )


# ------------------------------------------------------------ stage 3: main-effect clouds


def _main_effect_stage(engine: _BlockEngine, X: np.ndarray, params: RashomonParams,
                       active: Sequence[int], masks: Array,
                       progress: ProgressCallback) -> tuple[Array, Array]:
    """phi_i and the loss of every distinct (feature, mask) model; the mask is rounded to
    12 decimals to find the distinct ones, as the package does."""
    p, d, _ = masks.shape
    t = params.shuffle_times
    joint = params.permutation == "joint"
    models: dict[tuple[int, float], list[tuple[int, int]]] = {}
    for f in active:
        for j in range(d):
            for s in (0, 1):
                models.setdefault((f, float(np.round(masks[f, j, s], 12))), []).append((j, s))
    keys = list(models)
    rngs = _spawn(params.random_state, _SEED_MAIN_CLOUDS, len(keys))
    progress(0.0, "main_effects")

    def stacks() -> Iterator[_Copies]:
        for (f, m), rng in zip(keys, rngs, strict=True):
            Xm = _masked(X, [f], [m])
            yield _Copies(Xm)
            yield _permuted_copies(Xm, [f], rng, t, joint)

    n_blocks = len(keys) * (1 + t)
    losses = engine.losses(stacks(), n_blocks, _stage_report(progress, "main_effects", n_blocks))
    losses = losses.reshape(len(keys), 1 + t)
    own = _sequential_mean(losses[:, 1:])
    clouds = np.full((p, d, 2), np.nan)
    cloud_losses = np.full((p, d, 2), np.nan)
    for q, key in enumerate(keys):
        for j, s in models[key]:
            clouds[key[0], j, s] = own[q] - losses[q, 0]
            cloud_losses[key[0], j, s] = losses[q, 0]
    progress(1.0, "main_effects")
    return clouds, cloud_losses


# ------------------------------------------------------------ stage 4: interaction clouds


def _interaction_combos(
    params: RashomonParams,
) -> list[tuple[float, tuple[int, ...], tuple[int, ...]]]:
    """(radius, budget steps a, directions s) per joint-masked model: radius-major, then
    the splits of r/delta into ``order`` positive parts (lexicographic), then the 2^order
    direction combinations (0 up, 1 down)."""
    steps = params.n_steps
    out: list[tuple[float, tuple[int, ...], tuple[int, ...]]] = []
    for r in params.radii:
        target = int(round(r / params.delta))
        for a in product(range(1, steps + 1), repeat=params.order):
            if sum(a) == target:
                out.extend((float(r), a, s) for s in product((0, 1), repeat=params.order))
    return out


@dataclass(frozen=True)
class _Interactions:
    masks: Array
    losses: Array
    joint: Array
    mains: Array
    fis: Array


def _interaction_stage(engine: _BlockEngine, X: np.ndarray, params: RashomonParams,
                       subsets: list[tuple[int, ...]], masks: Array,
                       progress: ProgressCallback) -> _Interactions:
    """Per subset (one generator each) and joint-masked model, in order: the model's
    loss, T copies with the whole subset permuted, then T copies per member."""
    t = params.shuffle_times
    o = params.order
    joint = params.permutation == "joint"
    combos = _interaction_combos(params)
    k = len(combos)
    tables = np.array([[[masks[f, a_i, s_i] for f, a_i, s_i in zip(sub, a, s, strict=True)]
                        for _, a, s in combos] for sub in subsets]).reshape(len(subsets), k, o)
    rngs = _spawn(params.random_state, _SEED_INTERACTIONS, len(subsets))
    per_model = 1 + (o + 1) * t
    progress(0.0, "interactions")

    def stacks() -> Iterator[_Copies]:
        for sub, table, rng in zip(subsets, tables, rngs, strict=True):
            for row in table:
                Xm = _masked(X, sub, row)
                yield _Copies(Xm)
                yield _permuted_copies(Xm, sub, rng, t, joint)
                for f in sub:
                    yield _permuted_copies(Xm, [f], rng, t, joint)

    n_blocks = len(subsets) * k * per_model
    losses = engine.losses(stacks(), n_blocks, _stage_report(progress, "interactions", n_blocks))
    losses = losses.reshape(len(subsets), k, per_model)
    model_loss = losses[:, :, 0]
    joint_effects = _sequential_mean(losses[:, :, 1:1 + t]) - model_loss
    mains = np.stack([_sequential_mean(losses[:, :, 1 + (a + 1) * t:1 + (a + 2) * t])
                      for a in range(o)], axis=2) - model_loss[:, :, None]
    progress(1.0, "interactions")
    return _Interactions(tables, model_loss, joint_effects, mains,
                         joint_effects - mains.sum(axis=2))
