"""Permutation importance with scikit-learn's numbers, computed from predictions.

The score of a model drops when one feature's values are shuffled across rows; the drop
is that feature's importance (Breiman 2001). This module reproduces
``sklearn.inspection.permutation_importance`` exactly — the same permutations for the same
``random_state``, the same row subsample, the same scorer arithmetic — on any
:class:`models.capabilities.PredictiveModel`, without wrapping it as a scikit-learn
estimator:

- ``random_state`` seeds a ``RandomState`` that draws ONE seed; every feature starts a
  fresh ``RandomState(seed)``, draws its row subsample (when ``max_samples`` is below the
  number of rows) and then shuffles one index array in place per repeat, permuting the
  already-permuted column again. So every feature sees the same permutations, which this
  module computes once.
- a scorer name is resolved with ``sklearn.metrics.get_scorer``; its score function,
  sign, keyword arguments and response method are applied to our predictions the way
  ``sklearn.utils._response._get_response_values`` applies them to an estimator's.

Groups of features (which scikit-learn does not have) get one row permutation applied
to all their columns together.

Speed: features run in threads (predict calls release the GIL) unless the model declares
``serial_predict``; each thread owns one working copy of the rows and restores a column
after its repeats. The paths beyond plain prediction follow the model's declared
capabilities (``models.capabilities``), never the library it came from. A model with
``tree_subsets`` and ``predict_from_margin`` (XGBoost gbtree regressors and classifiers)
re-scores a feature that only some trees split on by evaluating those trees alone, in one
call, and re-adding every tree's output in the library's own float32 order, with the
objective applied by the library itself; the result is checked bit for bit against the
model's predictions first and abandoned for the plain path when it does not match. Other
tree models (LightGBM, forests) declare neither and take the plain path: they sum trees
in float64 in an order this module does not reproduce. A model with ``permuted_predictor``
(an ONNX graph) placed on a GPU gets the rows and the permutations once and builds each
permuted copy there, in nodes put in front of its graph (``models.onnx_permuted``), every
repeat of a feature in one call; on the CPU it gets its working copy in its
``input_dtype`` (float32 for most graphs), the dtype it computes in.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import sklearn
from sklearn.metrics import get_scorer, get_scorer_names
from sklearn.utils.random import sample_without_replacement

from explainers.progress import ProgressCallback, no_progress
from models.capabilities import (
    PredictiveModel,
    TreeSubsetModel,
    has_permuted_predictor,
    has_tree_subsets,
)
from models.loaded import Device
from models.tree_subsets import TreeSubsets
from models.versions import installed_versions

__all__ = [
    "PermutationParams",
    "PermutationResult",
    "PermutationParamsError",
    "UnknownScorer",
    "ScorerNotApplicable",
    "UnknownFeature",
    "validate_permutation_params",
    "permutation_importance",
    "run_permutation_importance",
]

logger = logging.getLogger(__name__)

Task = Literal["regression", "binary", "multiclass"]
Output = Literal["raw", "probability", "label"]


class PermutationParamsError(ValueError):
    """The permutation importance parameters cannot be used."""


class UnknownScorer(PermutationParamsError):
    """The scoring name is not a scikit-learn scorer."""


class ScorerNotApplicable(PermutationParamsError):
    """The scorer does not apply to this model (task or available outputs)."""


class UnknownFeature(PermutationParamsError):
    """A requested feature is not one of the model's features."""


@dataclass(frozen=True)
class PermutationParams:
    """Checked parameters.

    scoring: the scorer name (the task's default filled in).
    response_method: the scikit-learn response method the scorer will use.
    groups: column indices permuted together, one tuple per importance row.
    names: display name of each group ("a" or "a+b").
    """

    scoring: str
    response_method: str
    groups: tuple[tuple[int, ...], ...]
    names: tuple[str, ...]
    group_features: tuple[tuple[str, ...], ...]
    n_repeats: int
    random_state: int
    max_samples: float | int

    @classmethod
    def resolve(
        cls,
        *,
        task: str,
        feature_names: Sequence[str],
        scoring: str | None = None,
        n_repeats: int = 5,
        random_state: int = 0,
        max_samples: float | int = 1.0,
        features: Sequence[str] | Sequence[Sequence[str]] | None = None,
        response_methods: frozenset[str] | None = None,
    ) -> PermutationParams:
        """The params :func:`validate_permutation_params` accepted for this task and these
        features, with the task's defaults filled in, built without checking them again
        (a service stores the params it checked and builds them here where they run)."""
        scoring = _default_scoring(scoring, task)
        index = {name: i for i, name in enumerate(feature_names)}
        requested = ([(name,) for name in feature_names] if features is None else
                     [(f,) if isinstance(f, str) else tuple(f) for f in features])
        return cls(
            scoring=scoring,
            response_method=_response_method(scoring, task, response_methods),
            groups=tuple(tuple(index[n] for n in g) for g in requested),
            names=tuple("+".join(g) for g in requested),
            group_features=tuple(requested),
            n_repeats=int(n_repeats),
            random_state=int(random_state),
            max_samples=max_samples,
        )


def validate_permutation_params(
    *,
    task: str,
    feature_names: Sequence[str],
    scoring: str | None = None,
    n_repeats: int = 5,
    random_state: int = 0,
    max_samples: float | int = 1.0,
    features: Sequence[str] | Sequence[Sequence[str]] | None = None,
    classes: Sequence[Any] | None = None,
    response_methods: frozenset[str] | None = None,
    n_rows: int | None = None,
) -> PermutationParams:
    """Check every parameter before any work; needs no data (``n_rows`` is optional).

    Returns them as :meth:`PermutationParams.resolve` builds them. Raises a
    :class:`PermutationParamsError` subclass with a sentence a person can act on.
    """
    if task not in ("regression", "binary", "multiclass"):
        raise PermutationParamsError(
            f"task must be 'regression', 'binary' or 'multiclass', got {task!r}.")
    if isinstance(n_repeats, bool) or not isinstance(n_repeats, (int, np.integer)) \
            or n_repeats < 1:
        raise PermutationParamsError(f"n_repeats must be an integer >= 1, got {n_repeats!r}.")
    if isinstance(random_state, bool) or not isinstance(random_state, (int, np.integer)) \
            or not 0 <= random_state < 2**32:
        raise PermutationParamsError(
            f"random_state must be an integer in [0, 2**32), got {random_state!r}.")
    _check_max_samples(max_samples, n_rows)

    scoring = _default_scoring(scoring, task)
    if not isinstance(scoring, str) or scoring not in get_scorer_names():
        examples = ", ".join(repr(s) for s in (
            "r2", "neg_mean_squared_error", "neg_mean_absolute_error", "accuracy",
            "balanced_accuracy", "roc_auc", "neg_log_loss", "f1"))
        raise UnknownScorer(
            f"scoring {scoring!r} is not a scikit-learn scorer; use one of "
            f"sklearn.metrics.get_scorer_names(), for example {examples}.")
    _check_scorer(scoring, task, response_methods)
    if task == "binary" and classes is not None:
        _positive_label(get_scorer(scoring), np.asarray(classes))

    names = list(feature_names)
    index = {name: i for i, name in enumerate(names)}
    if len(index) != len(names):
        raise PermutationParamsError("feature_names must be unique.")
    requested: list[tuple[str, ...]]
    if features is None:
        requested = [(name,) for name in names]
    else:
        if isinstance(features, str) or len(features) == 0:
            raise PermutationParamsError(
                "features must be a non-empty list of feature names or of lists of names.")
        requested = [(f,) if isinstance(f, str) else tuple(f) for f in features]
    for group in requested:
        if len(group) == 0:
            raise PermutationParamsError("a feature group must name at least one feature.")
        for name in group:
            if not isinstance(name, str) or name not in index:
                known = ", ".join(repr(n) for n in names[:5])
                raise UnknownFeature(
                    f"feature {name!r} is not a feature of the model; its features are "
                    f"{known}{', …' if len(names) > 5 else ''}.")
        if len(set(group)) != len(group):
            raise PermutationParamsError(f"feature group {list(group)} repeats a feature.")
    return PermutationParams.resolve(
        task=task, feature_names=names, scoring=scoring, n_repeats=n_repeats,
        random_state=random_state, max_samples=max_samples, features=features,
        response_methods=response_methods)


@dataclass(frozen=True, eq=False)
class PermutationResult:
    """Permutation importances.

    importances: float64 [n_groups, n_repeats], baseline score minus the score with the
        group permuted, rows in the order the features (or groups) were requested.
    names / group_features: per row, the display name and the features permuted.
    baseline_score: the score on all rows, unpermuted (scikit-learn's baseline).
    """

    scoring: str
    baseline_score: float
    importances: npt.NDArray[np.float64]
    names: tuple[str, ...]
    group_features: tuple[tuple[str, ...], ...]
    n_repeats: int
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def importances_mean(self) -> npt.NDArray[np.float64]:
        return self.importances.mean(axis=1)

    @property
    def importances_std(self) -> npt.NDArray[np.float64]:
        return self.importances.std(axis=1)

    def summary(self) -> dict[str, Any]:
        """JSON-able summary; importances sorted by mean, largest first (NaN → None).

        Each entry's ``index`` is its row in ``arrays()["importances"]``.
        """
        means, stds = self.importances_mean, self.importances_std
        order = sorted(range(len(self.names)),
                       key=lambda i: (-means[i] if np.isfinite(means[i]) else np.inf, i))
        entries = []
        for i in order:
            entry: dict[str, Any] = {
                "feature": self.names[i], "index": i, "mean": _json_float(means[i]),
                "std": _json_float(stds[i]),
                "values": [_json_float(v) for v in self.importances[i]]}
            if len(self.group_features[i]) > 1:
                entry["features"] = list(self.group_features[i])
            entries.append(entry)
        return {"scoring": self.scoring, "baseline_score": _json_float(self.baseline_score),
                "n_repeats": self.n_repeats, "importances": entries,
                "provenance": dict(self.provenance)}

    def arrays(self) -> dict[str, np.ndarray]:
        """``importances``: float64 [n_groups, n_repeats] in request order."""
        return {"importances": self.importances}


def permutation_importance(
    model: PredictiveModel,
    X: npt.NDArray[np.float64],
    y: npt.ArrayLike,
    *,
    scoring: str | None = None,
    n_repeats: int = 5,
    random_state: int = 0,
    max_samples: float | int = 1.0,
    feature_names: Sequence[str],
    features: Sequence[str] | Sequence[Sequence[str]] | None = None,
    n_jobs: int = -1,
    device: Device = "cpu",
    path: Literal["auto", "plain", "tree_subset", "graph"] = "auto",
    progress: ProgressCallback = no_progress,
) -> PermutationResult:
    """Permutation importance of each feature (or group) of ``model`` on ``X``, ``y``.

    model: any :class:`models.capabilities.PredictiveModel` (``LoadedModel`` is one); its
        declared capabilities choose the faster paths. An optional ``response_methods``
        attribute names the scikit-learn response methods the original estimator has
        ({"predict", "predict_proba", "decision_function"}); it decides which one a
        scorer such as ``roc_auc`` uses, as in scikit-learn. Default: {"predict"} for
        regressors, {"predict", "predict_proba"} for classifiers. "decision_function"
        maps to ``output="raw"``.
    X: float64 [n_rows, n_features], columns in the model's feature order.
    y: [n_rows] true targets: numbers for regression; for classifiers the true class
        LABELS, values of ``model.classes`` (as scikit-learn's ``y``), not class indices.
    scoring: a scikit-learn scorer name; default "r2" for regression, "accuracy" else.
    n_repeats: permutations per feature (>= 1). random_state: seed as in scikit-learn.
    max_samples: rows per feature's repeats, a fraction in (0, 1] or a count <= n_rows;
        the baseline score always uses every row (as scikit-learn does).
    features: names, or lists of names permuted together; default every feature.
    n_jobs: threads over features; -1 means every core. A model declaring
        ``serial_predict`` (ONNX) takes one feature at a time whatever n_jobs says: its
        library runs each call on its own threads.
    device: passed to ``model.predict``.
    path: "auto" re-evaluates only the trees that split on a permuted feature where that
        is exact and measured to be cheaper (a model with ``tree_subsets``); "tree_subset"
        uses that path wherever it is exact (for tests); for a model with
        ``permuted_predictor`` placed on a GPU it builds the permuted copies on the GPU,
        in front of the model's graph ("graph" does that on the CPU too, for tests);
        "plain" always calls ``model.predict``. The numbers are the same on
        every path (on a GPU, to the GPU's float32 rounding of larger calls).
    progress: called after each feature with the fraction done; may raise Cancelled.

    Equal to ``sklearn.inspection.permutation_importance(estimator, X, y, scoring=...,
    n_repeats=..., random_state=..., max_samples=...)`` on the matching estimator.
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != len(feature_names):
        raise PermutationParamsError(
            f"X must be 2-D with {len(feature_names)} columns (one per feature name), "
            f"got shape {X.shape}.")
    y = np.asarray(y)
    if y.shape[0] != X.shape[0]:
        raise PermutationParamsError(
            f"y has {y.shape[0]} rows but X has {X.shape[0]}; they must match.")
    params = validate_permutation_params(
        task=model.task, feature_names=feature_names, scoring=scoring, n_repeats=n_repeats,
        random_state=random_state, max_samples=max_samples, features=features,
        classes=model.classes,
        response_methods=getattr(model, "response_methods", None), n_rows=X.shape[0])
    return _run(model, X, y, params, n_jobs=n_jobs, device=device, path=path,
                progress=progress)


def run_permutation_importance(
    model: PredictiveModel,
    X: npt.ArrayLike,
    y: npt.ArrayLike,
    params: PermutationParams,
    *,
    n_jobs: int = -1,
    device: Device = "cpu",
    path: Literal["auto", "plain", "tree_subset", "graph"] = "auto",
    progress: ProgressCallback = no_progress,
) -> PermutationResult:
    """:func:`permutation_importance` with params already checked for this model by
    :func:`validate_permutation_params` (or built from such by
    :meth:`PermutationParams.resolve`): they are not checked again. X has the model's
    columns in its feature order; only the rows are checked (``y`` has as many,
    ``params.max_samples`` selects some)."""
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y)
    if X.ndim != 2 or y.shape[0] != X.shape[0]:
        raise PermutationParamsError(
            f"X must be 2-D with a row per value of y, got shapes {X.shape} and {y.shape}.")
    _check_max_samples(params.max_samples, X.shape[0])
    return _run(model, X, y, params, n_jobs=n_jobs, device=device, path=path,
                progress=progress)


def _run(model: PredictiveModel, X: npt.NDArray[np.float64], y: np.ndarray,
         params: PermutationParams, *, n_jobs: int, device: Device, path: str,
         progress: ProgressCallback) -> PermutationResult:
    # a library that spreads one call over every core (onnxruntime) runs no faster with
    # two callers sharing its threads (10.6 ms against 6.0 ms per call, 50k-row MLP): the
    # model declares it
    workers = 1 if model.serial_predict else _n_workers(n_jobs, len(params.groups))
    started = time.perf_counter()
    scorer = _PredictionScorer(model, params, device)

    baseline_score = scorer.score_predictions(scorer.predict(X), y)
    rows, permutations = _permutations(X.shape[0], params)
    X_rows = X if rows is None else X[rows]
    y_rows = y if rows is None else y[rows]
    if path not in ("auto", "plain", "tree_subset", "graph"):
        raise PermutationParamsError(
            f"path must be 'auto', 'plain', 'tree_subset' or 'graph', got {path!r}.")
    engine = _TreeSubset.build(model, X_rows, params, scorer, device, path)
    permuted = None if engine is not None else _in_graph(
        model, X, rows, permutations, scorer, device, path)
    used_path = ("tree_subset" if engine is not None
                 else "graph" if permuted is not None else "plain")
    # Rows in the dtype the model computes in (float32 for ONNX): the values predict would
    # convert them to, without converting every permuted copy (0.61 s against 0.89 s for
    # 150 calls of a 50k-row MLP).
    work_dtype = np.dtype(model.input_dtype) if engine is None else np.dtype(np.float64)

    scores = np.empty((len(params.groups), params.n_repeats), dtype=np.float64)
    stop = threading.Event()
    local = threading.local()

    def run(g: int) -> None:
        cols = list(params.groups[g])
        if permuted is not None:
            # Scoring on the host while the GPU made the next group's predictions (a
            # thread ahead) was measured no faster on an H200: 108-139 ms against 105-137.
            for r, preds in enumerate(permuted(cols)):
                scores[g, r] = scorer.score_predictions(preds, y_rows)
            return
        if not hasattr(local, "work"):
            # one working copy per thread, restored per group
            local.work = X_rows.astype(work_dtype)
        work: np.ndarray = local.work
        original = work[:, cols].copy()
        try:
            for r, perm in enumerate(permutations):
                if stop.is_set():
                    return
                work[:, cols] = original[perm]
                preds = (engine.predict(work, cols) if engine is not None
                         else scorer.predict(work))
                scores[g, r] = scorer.score_predictions(preds, y_rows)
        finally:
            work[:, cols] = original

    _run_groups(run, len(params.groups), workers, stop, progress)
    importances = baseline_score - scores
    provenance = {
        "library_versions": _versions(), "device": device, "n_rows": int(X.shape[0]),
        "n_rows_permuted": int(X_rows.shape[0]), "random_state": params.random_state,
        "max_samples": params.max_samples, "response_method": params.response_method,
        "path": used_path, "n_jobs": workers,
        "seconds": round(time.perf_counter() - started, 3)}
    logger.info("permutation importance done", extra={
        "event": "permutation_importance", "path": used_path, "n_groups": len(params.groups),
        "seconds": provenance["seconds"]})
    return PermutationResult(
        scoring=params.scoring, baseline_score=float(baseline_score),
        importances=importances, names=params.names,
        group_features=params.group_features, n_repeats=params.n_repeats,
        provenance=provenance)


# Rows reaching the model per call when the permuted copies are built in its graph: on a
# GPU, large calls (a 30-feature MLP's 5 repeats of 50,000 rows in one); on the CPU (only
# when asked for, path="graph") calls small enough for the hidden layers to stay in cache.
GRAPH_ROWS = {"cuda": 400_000, "cpu": 10_000}
GRAPH_BYTES = {"cuda": 256 << 20, "cpu": 8 << 20}
# The rows and the permutations stay on the device for the whole run; larger inputs take
# the host path, which sends a bounded batch at a time.
GRAPH_MAX_RESIDENT_BYTES = 2 << 30


def _in_graph(model: PredictiveModel, X: np.ndarray, rows: npt.NDArray[np.intp] | None,
              permutations: list[npt.NDArray[np.intp]], scorer: _PredictionScorer,
              device: Device, path: str) -> Callable[[Sequence[int]], list[np.ndarray]] | None:
    """Predictions with the permuted copies built next to the model (a model with
    ``permuted_predictor``: ONNX), or None.

    "auto" takes this path on a GPU only: on the CPU the float32 working copy costs less
    (the bench's 50,000-row MLP: 0.45-0.47 s against 0.83 s, both in 10,000-row calls).
    """
    if path not in ("auto", "graph") or not has_permuted_predictor(model) \
            or (path == "auto" and model.place(device) != "cuda"):
        return None
    base = np.arange(X.shape[0]) if rows is None else np.asarray(rows)
    itemsize = np.dtype(model.input_dtype).itemsize
    resident = X.shape[0] * X.shape[1] * itemsize + 8 * base.shape[0] * (len(permutations) + 1)
    if resident > GRAPH_MAX_RESIDENT_BYTES:
        return None
    where = "cuda" if device == "cuda" else "cpu"
    rows_per_call = max(1, min(GRAPH_ROWS[where],
                               GRAPH_BYTES[where] // (3 * itemsize * X.shape[1])))
    return model.permuted_predictor(X, base, [base[order] for order in permutations],
                                    output=scorer.output, device=device,
                                    rows_per_call=rows_per_call)


def _run_groups(run: Callable[[int], None], n_groups: int, workers: int,
                stop: threading.Event, progress: ProgressCallback) -> None:
    """Run ``run(g)`` for every group, reporting progress; stop all on Cancelled."""
    progress(0.0, "permuting")
    if workers == 1:
        for g in range(n_groups):
            run(g)
            progress((g + 1) / n_groups, "permuting")
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: set[Future[None]] = {pool.submit(run, g) for g in range(n_groups)}
        done_count = 0
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:  # one report per group, however many finished together
                    future.result()
                    done_count += 1
                    progress(done_count / n_groups, "permuting")
        except BaseException:
            stop.set()
            for future in pending:
                future.cancel()
            raise


def _permutations(n_rows: int, params: PermutationParams
                  ) -> tuple[npt.NDArray[np.intp] | None, list[npt.NDArray[np.intp]]]:
    """The row subsample (None for all rows) and the row order of each repeat.

    scikit-learn permutes the already permuted column again with an index array shuffled
    in place, so repeat r uses the composition of the first r shuffles.
    """
    seed = np.random.RandomState(params.random_state).randint(np.iinfo(np.int32).max + 1)
    rng = np.random.RandomState(seed)
    n_used = _n_samples(params.max_samples, n_rows)
    rows = None
    if n_used < n_rows:
        rows = sample_without_replacement(n_rows, n_used, random_state=rng)
    shuffling = np.arange(n_used)
    order = np.arange(n_used)
    permutations = []
    for _ in range(params.n_repeats):
        rng.shuffle(shuffling)
        order = order[shuffling]
        permutations.append(order)
    return rows, permutations


class _PredictionScorer:
    """A scikit-learn scorer evaluated on a model's outputs instead of an estimator."""

    def __init__(self, model: PredictiveModel, params: PermutationParams,
                 device: Device) -> None:
        self.model = model
        self.device = device
        self.scorer = get_scorer(params.scoring)
        self.method = params.response_method
        self.classes = None if model.task == "regression" else np.asarray(model.classes)
        self.pos_index: int | None = None
        if model.task == "binary":
            assert self.classes is not None
            pos_label = _positive_label(self.scorer, self.classes)
            self.pos_index = int(np.flatnonzero(self.classes == pos_label)[0])
        # XGBClassifier.predict_proba returns float32, and scikit-learn's log loss clips
        # and sums in the dtype it is given: score what the estimator would return.
        self.probability_dtype = np.dtype(model.probability_dtype)
        self.output: Output = {"predict": "label", "predict_proba": "probability",
                               "decision_function": "raw"}[self.method]  # type: ignore[assignment]

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.model.predict(X, output=self.output, device=self.device)

    def response(self, raw: np.ndarray) -> np.ndarray:
        """What the estimator's response method would have returned, from ``predict``."""
        raw = np.asarray(raw)
        if self.method == "predict":
            if self.classes is None:
                return raw.reshape(-1) if raw.ndim == 2 and raw.shape[1] == 1 else raw
            return self.classes[np.asarray(raw).reshape(-1).astype(np.intp)]
        if self.method == "predict_proba":
            if self.probability_dtype != np.float64:  # lossless: computed in that dtype
                raw = raw.astype(self.probability_dtype)
            raw = _within_unit_interval(raw)
            return raw[:, self.pos_index] if self.pos_index is not None else raw
        if self.pos_index is not None:  # binary decision_function: 1-D, sign for classes[1]
            margin = raw.reshape(-1) if raw.ndim == 1 or raw.shape[1] == 1 else raw[:, -1]
            return -margin if self.pos_index == 0 else margin
        return raw

    def score_predictions(self, predictions: np.ndarray, y: np.ndarray) -> float:
        s = self.scorer
        # The metric's own argument checks (not its data checks): 151 r2 scores of 50,000
        # rows took 46 ms with them, 32 ms without; the arguments here are always valid.
        with sklearn.config_context(skip_parameter_validation=True):
            return float(s._sign * s._score_func(y, self.response(predictions), **s._kwargs))


# float32 rounding: a sigmoid on a GPU gives 1.0000001 (scikit-learn's log loss refuses
# probabilities above 1); anything further out is left for the metric to refuse.
_PROBABILITY_ROUNDING = 1e-6


def _within_unit_interval(p: np.ndarray) -> np.ndarray:
    """Probabilities off [0, 1] by float32 rounding only, clipped back into it; others as
    they are (the same array when nothing is off)."""
    if p.size == 0:
        return p
    low, high = float(np.min(p)), float(np.max(p))
    if low >= 0.0 and high <= 1.0:
        return p
    if low >= -_PROBABILITY_ROUNDING and high <= 1.0 + _PROBABILITY_ROUNDING:
        return np.clip(p, 0.0, 1.0)
    return p


class _TreeSubset:
    """Re-scores a permuted feature by re-evaluating only the trees that split on it.

    XGBoost starts every row at the base margin and adds each tree's leaf value to its
    output group's float32 accumulator in tree order. We keep every tree's float32 output
    on the unpermuted rows and each accumulator's value before every tree. For a group of
    permuted columns, the trees that split on them are evaluated in ONE call of a booster
    that holds just those trees, one output per tree (so each output is that tree's leaf
    value, exactly); every accumulator is then re-added from the first changed tree in the
    library's own order — the same float32 operations as the library, so the same bits —
    and the model's objective is applied by XGBoost itself
    (``predict_from_margin``). Models declaring ``tree_subsets`` (XGBoost gbtree) whose
    trees have scalar leaves, on the CPU; the whole construction is checked bit for bit
    against the model's predictions on the unpermuted rows and abandoned for the plain
    path when it does not match.

    Cost: a call with k trees costs a fixed part (reading each row's features, the
    objective) plus a part per tree (its evaluation, and writing, transposing and
    re-adding its own output column), so wide data, where each tree uses few of the
    columns, gains most; where most trees use the column (30 features, 200 trees of
    depth 6: three in four trees per feature) the per-output work makes the subset path
    slower than a plain predict. Where every group touches more than half the trees the
    path is not built at all; else both paths are timed on the rows before the run, and a
    group whose subset call would cost more than 0.9 of a full predict takes the plain
    path.
    """

    # per-tree outputs and running sums: two float32 per row and tree
    MAX_BYTES = 512 << 20
    # trees evaluated per call while reading every tree's outputs (bounds that call's
    # base margin, output and transpose to 3 x rows x this many float32)
    BUILD_TREES = 64

    def __init__(self, model: TreeSubsetModel, scorer: _PredictionScorer, trees: TreeSubsets,
                 values: np.ndarray, prefix: np.ndarray, margin: np.ndarray,
                 forced: bool) -> None:
        self.model = model
        self.scorer = scorer
        self.trees = trees
        self.values = values  # float32 [n_trees, n_rows]: each tree's leaf values
        self.prefix = prefix  # float32 [n_trees, n_rows]: its group's sum before the tree
        self.margin = margin  # float32 [n_rows, n_outputs]: the unpermuted margins
        # the measured costs (see _measure): plain predict, subset call = per call + per tree
        self.seconds_full = self.seconds_per_call = self.seconds_per_tree = 0.0
        self.forced = forced

    @classmethod
    def build(cls, model: PredictiveModel, X: np.ndarray, params: PermutationParams,
              scorer: _PredictionScorer, device: Device, path: str) -> _TreeSubset | None:
        if path == "plain" or device != "cpu" or not has_tree_subsets(model):
            return None
        trees = model.tree_subsets()
        n_outputs = int(model.n_outputs)
        if trees is None or max(trees.groups, default=0) >= n_outputs:
            return None
        n = X.shape[0]
        if 2 * trees.n_trees * n * 4 > cls.MAX_BYTES or trees.n_trees == 0:
            return None
        # A subset call costs more per tree than a full predict (one output per tree):
        # where every group touches more than half the trees, none can gain, and building
        # and timing the path would only add to the run (30 features, 200 trees: each
        # feature in 117-192 trees; the build and timing took 0.9 s of a 7 s run).
        if path != "tree_subset" and \
                2 * min(len(trees.touched(cols)) for cols in params.groups) > trees.n_trees:
            return None
        expected = scorer.predict(X)
        values = np.empty((trees.n_trees, n), dtype=np.float32)
        for first in range(0, trees.n_trees, cls.BUILD_TREES):
            chunk = tuple(range(first, min(first + cls.BUILD_TREES, trees.n_trees)))
            values[first:first + len(chunk)] = trees.evaluate(X, chunk, cache=False).T
        base = trees.base_margin(n_outputs)
        prefix = np.empty_like(values)
        margin = np.empty((n, n_outputs), dtype=np.float32)
        for g in range(n_outputs):
            acc = np.full(n, base[g], dtype=np.float32)
            for t in trees.of_group[g]:
                prefix[t] = acc
                acc += values[t]
            margin[:, g] = acc
        engine = cls(model, scorer, trees, values, prefix, margin, forced=path == "tree_subset")
        if not _same_bits(engine._from_margin(margin), expected):
            logger.info("tree subset path disabled: it does not reproduce the model's "
                        "predictions bit for bit", extra={"event": "permutation_tree_path"})
            return None
        if not engine.forced:
            engine._measure(X, params.groups)
            if not any(engine.worth_it(group) for group in params.groups):
                return None
        return engine

    def _measure(self, X: np.ndarray, groups: Sequence[Sequence[int]]) -> None:
        """Time both paths on the rows: a full predict, and the subset path (XGBoost
        call, transposition, re-accumulation, objective) for the group touching the
        median number of trees and for the group touching the fewest (at least one);
        best of two each. A subset call then costs per call + k * per tree."""

        def best_of_two(call: Callable[[], object]) -> float:
            best = float("inf")
            for _ in range(2):
                started = time.perf_counter()
                call()
                best = min(best, time.perf_counter() - started)
            return best

        self.seconds_full = best_of_two(lambda: self.scorer.predict(X))
        by_count = sorted(groups, key=lambda cols: len(self.trees.touched(cols)))
        median = by_count[len(by_count) // 2]
        k = len(self.trees.touched(median))
        one = next((cols for cols in by_count if self.trees.touched(cols)), None)
        if k == 0 or one is None:
            return  # no group touches a tree: the subset path costs nothing (both stay 0)
        k_one = len(self.trees.touched(one))
        t_one = best_of_two(lambda: self._predict_subset(X, one))
        t_median = best_of_two(lambda: self._predict_subset(X, median))
        if k > k_one:
            self.seconds_per_tree = max(0.0, (t_median - t_one) / (k - k_one))
        else:
            self.seconds_per_tree = t_median / k
        self.seconds_per_call = max(0.0, t_median - k * self.seconds_per_tree)

    def worth_it(self, cols: Sequence[int]) -> bool:
        if self.forced:
            return True
        touched = self.trees.touched(cols)
        cost = self.seconds_per_call + len(touched) * self.seconds_per_tree
        return cost < 0.9 * self.seconds_full

    def predict(self, X: np.ndarray, cols: Sequence[int]) -> np.ndarray:
        if not self.worth_it(cols):
            return self.scorer.predict(X)
        return self._predict_subset(X, cols)

    def _predict_subset(self, X: np.ndarray, cols: Sequence[int]) -> np.ndarray:
        touched = self.trees.touched(cols)
        margin = self.margin.copy()
        if touched:
            new = np.ascontiguousarray(self.trees.evaluate(X, touched).T)
            changed = dict(zip(touched, new, strict=True))
            for g, group_trees in enumerate(self.trees.of_group):
                first = next((i for i, t in enumerate(group_trees) if t in changed), None)
                if first is None:
                    continue
                acc = self.prefix[group_trees[first]].copy()
                for t in group_trees[first:]:
                    acc += changed[t] if t in changed else self.values[t]
                margin[:, g] = acc
        return self._from_margin(margin)

    def _from_margin(self, margin: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict_from_margin(margin, output=self.scorer.output))


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(
        a, b, equal_nan=a.dtype.kind == "f")


def _default_scoring(scoring: str | None, task: str) -> str:
    return scoring if scoring is not None else ("r2" if task == "regression" else "accuracy")


def _check_scorer(scoring: str, task: str, response_methods: frozenset[str] | None
                  ) -> None:
    """Refuse a scorer for the other task, or one whose response method the model lacks."""
    scorer = get_scorer(scoring)
    is_regression_metric = scorer._score_func.__module__ == "sklearn.metrics._regression"
    if task == "regression" and not is_regression_metric:
        raise ScorerNotApplicable(
            f"scoring {scoring!r} is for classifiers but the model is a regressor; use a "
            f"regression scorer such as 'r2' or 'neg_mean_squared_error'.")
    if task != "regression" and is_regression_metric:
        raise ScorerNotApplicable(
            f"scoring {scoring!r} is for regressors but the model is a {task} classifier; "
            f"use a classification scorer such as 'accuracy' or 'neg_log_loss'.")
    _response_method(scoring, task, response_methods)


def _response_method(scoring: str, task: str, response_methods: frozenset[str] | None
                     ) -> str:
    """The response method scikit-learn would call for this scorer on this model: the
    first one the scorer can use that the model has."""
    scorer = get_scorer(scoring)
    available = response_methods if response_methods is not None else (
        frozenset({"predict"}) if task == "regression"
        else frozenset({"predict", "predict_proba"}))
    wanted = scorer._response_method
    candidates = [wanted] if isinstance(wanted, str) else list(wanted)
    for method in candidates:
        if method in available:
            return method
    raise ScorerNotApplicable(
        f"scoring {scoring!r} needs {' or '.join(candidates)} but the model only "
        f"provides {', '.join(sorted(available))}; choose a scorer on predicted labels "
        f"such as 'accuracy'.")


def _positive_label(scorer: Any, classes: np.ndarray) -> Any:
    """scikit-learn's positive class for a binary scorer (its ``pos_label`` or classes[-1])."""
    pos_label = scorer._get_pos_label()
    if pos_label is None:
        return classes[-1]
    if pos_label not in classes.tolist():
        raise ScorerNotApplicable(
            f"the scorer's positive label {pos_label!r} is not one of the model's classes "
            f"{classes.tolist()}; use a scorer that does not need a positive label, such "
            f"as 'accuracy' or 'roc_auc'.")
    return pos_label


def _check_max_samples(max_samples: float | int, n_rows: int | None) -> None:
    if isinstance(max_samples, bool):
        raise PermutationParamsError("max_samples must be a number, not a boolean.")
    if isinstance(max_samples, (int, np.integer)):
        if max_samples < 1:
            raise PermutationParamsError(f"max_samples must be >= 1, got {max_samples}.")
        if n_rows is not None and max_samples > n_rows:
            raise PermutationParamsError(
                f"max_samples={max_samples} is more than the {n_rows} rows available.")
    elif isinstance(max_samples, (float, np.floating)):
        if not 0.0 < max_samples <= 1.0:
            raise PermutationParamsError(
                f"a fractional max_samples must be in (0, 1], got {max_samples}.")
        if n_rows is not None and int(max_samples * n_rows) < 1:
            raise PermutationParamsError(
                f"max_samples={max_samples} of {n_rows} rows selects no row.")
    else:
        raise PermutationParamsError(
            f"max_samples must be an integer count or a fraction, got {max_samples!r}.")


def _n_samples(max_samples: float | int, n_rows: int) -> int:
    if isinstance(max_samples, (int, np.integer)):
        return int(max_samples)
    return int(max_samples * n_rows)


def _n_workers(n_jobs: int, n_groups: int) -> int:
    if n_jobs == 0 or n_jobs < -1:
        raise PermutationParamsError(f"n_jobs must be -1 or a positive integer, got {n_jobs}.")
    cores = os.cpu_count() or 1
    return max(1, min(cores if n_jobs == -1 else n_jobs, n_groups))


def _json_float(value: float) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None


def _versions() -> dict[str, str]:
    found = installed_versions("numpy", "scikit-learn", "xgboost", "lightgbm", "onnxruntime")
    return {name: v for name, v in found.items() if v is not None}
