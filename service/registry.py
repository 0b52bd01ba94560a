"""Job kinds: how an explanation method plugs into the service, and the registry of the
kinds a process knows.

A method is a module that defines its kind as a constant, ``KIND = JobKind(...)`` (or
several, ``KINDS = [...]``); importing it registers nothing. Each process fills a
:class:`KindRegistry` once, at start-up (``service.startup.register_methods``: the
built-in methods, plus the modules named, comma-separated, in ``TABXAI_EXTRA_KINDS``, for
plug-ins and the test suite's test-only kinds); the API checks jobs against it, the
worker claims the jobs of its kinds, and a job process finds its kind again in the
module the registry names (:func:`find_kind`).

A kind has four parts, each called at a fixed point of a job's life:

- ``params_model``: a pydantic model of the kind's parameters; ``POST /v1/jobs``
  validates ``params`` with it (defaults filled in, echoed in the Job).
- ``check(CheckContext)``: at POST, before anything is queued: does the method apply to
  this model and dataset? Raise ``service.errors.Unprocessable``/``NotFound`` or a
  ``models.errors.ModelError`` (e.g. ``FeatureMismatch``) to refuse. May return the
  params with model-dependent defaults filled in (e.g. a scorer by task), else ``None``.
- ``estimate(CheckContext)``: ``{"rows_to_predict": int, "seconds": float,
  "result_bytes": int, ...}`` for ``?dry_run=true`` and the Job's ``estimate``.
  ``result_bytes`` is what the result's arrays will take (``service.results.arrays.
  result_size`` computes it from their shapes); a job whose estimate exceeds
  ``TABXAI_MAX_RESULT_BYTES`` is refused at POST, with the kind's ``result_advice``.
- ``run(RunContext) -> JobOutput``: in the worker's job process, with memory limits.
  Report progress with ``ctx.progress(fraction, stage)``: ``fraction`` is the share of
  the whole job done (0 to 1, never going back; a lower value is ignored), ``stage`` a
  word for what it is doing. A method that reports each of its stages from 0 to 1
  reports through :func:`stage_progress`. The callback raises
  ``explainers.progress.Cancelled`` when the job is cancelled. Stream large per-row
  arrays with ``ctx.array_writer``; return the summary and any other arrays.

Errors in ``run``: :class:`JobInputError`, ``models.errors.ModelError`` and ``ValueError``
mean bad input and fail the job at once with their code and message; ``MemoryError``
fails it with ``out_of_memory``; anything else is an infrastructure error, retried.

This module is the bottom of the job system: it imports neither the jobs (queue, worker,
HTTP side) nor the methods, so both can depend on it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from pydantic import BaseModel

from explainers.progress import ProgressCallback
from models.inspection import ModelInfo
from models.loaded import Device
from service.catalog.tabular import Column
from service.results.arrays import Axis

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa
    from matplotlib.figure import Figure

    from models.loaded import LoadedModel
    from service.catalog.tables import DatasetRecord
    from service.results.arrays import ArrayWriter

__all__ = [
    "Axis",
    "CheckContext",
    "DatasetInfo",
    "JobInputError",
    "JobKind",
    "JobOutput",
    "KindRegistry",
    "KindRegistryError",
    "PlotSpec",
    "RunContext",
    "RunResources",
    "find_kind",
    "kinds_of_module",
    "stage_progress",
]


class JobInputError(Exception):
    """The job's inputs cannot be explained as asked; the job fails at once, not retried.

    ``code`` is machine-readable (e.g. ``"too_many_rows"``); ``message`` is a sentence a
    person can act on. Both become the Job's ``error``.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __reduce__(self) -> tuple[Any, ...]:
        return (JobInputError, (self.code, self.message))


@dataclass(frozen=True)
class DatasetInfo:
    """What the catalogue knows about a dataset, without reading its rows."""

    id: str
    name: str
    n_rows: int
    target: str | None
    columns: tuple[Column, ...]

    @classmethod
    def of(cls, record: DatasetRecord) -> DatasetInfo:
        return cls(id=record.id, name=record.name, n_rows=record.n_rows, target=record.target,
                   columns=tuple(Column(c["name"], c["dtype"], c["n_missing"])
                                 for c in record.columns))

    def column_types(self) -> list[tuple[str, str]]:
        """(name, dtype) of every column, the form ``models.features.check_compatible``
        takes."""
        return [(c.name, c.dtype) for c in self.columns]


@dataclass(frozen=True)
class CheckContext[P: BaseModel]:
    """What ``check`` and ``estimate`` see at ``POST /v1/jobs``.

    device: as requested, "auto", "cpu" or "cuda". model: None only when the kind's
    ``needs_model`` is "optional" and no ``model_id`` was sent. job_memory_bytes: the
    memory a job process may use (TABXAI_JOB_MEMORY_BYTES).
    """

    params: P
    device: str
    dataset: DatasetInfo
    model: ModelInfo | None
    model_id: str | None
    job_memory_bytes: int
    column_head: Callable[[str, int], pa.ChunkedArray] | None = field(
        default=None, repr=False, compare=False)
    """``column_head(name, max_rows)``: the first ``max_rows`` values of a dataset
    column, read from the stored file (a few MB at most); None where there is none."""


class RunResources(Protocol):
    """The worker's side of a RunContext (service.jobs.worker implements it)."""

    def load_dataset(self) -> pa.Table: ...

    def load_model(self) -> LoadedModel: ...

    def array_writer(self, name: str, dtype: str, row_shape: Sequence[int], *,
                     axes: Sequence[str] | None, labels: Sequence[str] | None,
                     chunk_rows: int | None, dims: Sequence[Axis] | None = None
                     ) -> ArrayWriter: ...


@dataclass(frozen=True)
class RunContext[P: BaseModel]:
    """What ``run`` gets, in the job's own process.

    job_id, attempt (1 for the first run). params: the validated params model.
    device: "cpu" or "cuda", where the worker placed this job. dataset, model: catalogue
    facts (``model`` is None for model-free jobs). n_threads: threads the method may use.
    memory_limit_bytes: memory the process may add (past it, MemoryError).
    tmp_dir: a private scratch directory, removed when the job ends.
    progress: ``progress(fraction, stage)``, fraction of the whole job in [0, 1]
    (monotonic: a lower value than before is ignored); cheap to call often (throttled);
    raises ``explainers.progress.Cancelled`` once the job is cancelled.
    """

    job_id: str
    attempt: int
    params: P
    device: Device
    dataset: DatasetInfo
    model: ModelInfo | None
    n_threads: int
    memory_limit_bytes: int
    tmp_dir: Path
    progress: ProgressCallback
    resources: RunResources = field(repr=False)

    def load_dataset(self) -> pa.Table:
        """The whole dataset as a pyarrow Table, column types as fixed at upload."""
        return self.resources.load_dataset()

    def load_model(self) -> LoadedModel:
        """The model, loaded in this process (raises JobInputError when there is none)."""
        return self.resources.load_model()

    def array_writer(self, name: str, dtype: str, row_shape: Sequence[int] = (), *,
                     axes: Sequence[str] | None = None,
                     labels: Sequence[str] | None = None,
                     chunk_rows: int | None = None,
                     dims: Sequence[Axis] | None = None) -> ArrayWriter:
        """A writer that appends rows of the result array ``name`` to storage as they
        are computed, so that a large array is never held whole.

        dtype: "float32" or "int64"; row_shape: the shape of one row (``()`` for a
        vector, ``(F,)`` for an [N, F] matrix, ``(K, F)`` for [N, K, F]).
        dims: an :class:`Axis` (name, labels) per axis, the row axis first, e.g.
        ``[Axis("row"), Axis("feature", names)]``; labels name the entries of an axis
        (features, outputs) in the array's metadata and as column names (2-D) or values
        (long form) of the Parquet and CSV downloads. Give every axis whose entries
        have names its labels. The shorthand instead of dims: ``axes``, the names of
        the axes after the row axis (default ``axis_1``, ``axis_2``, ...), and
        ``labels``, the labels of the last one.
        chunk_rows: rows per stored chunk; default (and most): as many as fit in about
        4 MiB, at most 65,536.

        Call ``writer.append(rows)`` with arrays of shape ``[n, *row_shape]``; the
        array becomes visible only when the job succeeds. A writer not closed by
        ``run`` is closed when ``run`` returns.
        """
        return self.resources.array_writer(name, dtype, row_shape, axes=axes, labels=labels,
                                           chunk_rows=chunk_rows, dims=dims)


@dataclass(frozen=True)
class JobOutput:
    """What ``run`` returns.

    summary: JSON-able (plain floats/ints/str/lists/dicts, no NaN); the service adds
    ``provenance`` fields (job, versions, device) to any ``summary["provenance"]``.
    Keep it small: large matrices belong in ``arrays``.
    arrays: further per-row arrays, stored like the ones written with
    ``ctx.array_writer`` (floats as float32, integers and booleans as int64).
    array_dims: per array name, as the ``dims`` of ``RunContext.array_writer`` (the
    first axis may have labels too, e.g. the features of an importance matrix).
    array_axes, array_labels: per array name, the shorthand ``axes`` and ``labels``.
    device_used: "cpu" or "cuda" where the method ran elsewhere than ``ctx.device``
    (e.g. a fallback); None means ``ctx.device``.
    """

    summary: dict[str, Any]
    arrays: Mapping[str, np.ndarray] = field(default_factory=dict)
    array_axes: Mapping[str, Sequence[str]] = field(default_factory=dict)
    array_labels: Mapping[str, Sequence[str]] = field(default_factory=dict)
    array_dims: Mapping[str, Sequence[Axis]] = field(default_factory=dict)
    device_used: Device | None = None


@dataclass(frozen=True)
class PlotSpec:
    """A figure of a result: ``draw(summary, arrays, **options) -> Figure``.

    draw: pure, matplotlib's object-oriented API only (``Figure()``, never pyplot).
    arrays: names of the result arrays ``draw`` reads; each is loaded up to ``max_rows``
    rows (the first rows; the method already samples rows at random).
    options: a pydantic model of the plot's query parameters (e.g. ``pair: str`` for
    ``?pair=a,b``), validated and passed to ``draw`` as keyword arguments; None: none.
    available: whether the plot exists for a given summary (e.g. interactions only
    when they were computed); None: always.
    """

    draw: Callable[..., Figure]
    arrays: tuple[str, ...] = ()
    max_rows: int = 5000
    options: type[BaseModel] | None = None
    available: Callable[[dict[str, Any]], bool] | None = None


@dataclass(frozen=True)
class JobKind[P: BaseModel]:
    """One kind of job. ``needs_model``: True, False, or "optional" (model-free mode).
    ``result_advice``: how to ask for a smaller result, completing "Ask for less: ...".
    """

    name: str
    params_model: type[P]
    needs_model: bool | Literal["optional"]
    check: Callable[[CheckContext[P]], P | None]
    estimate: Callable[[CheckContext[P]], dict[str, Any]]
    run: Callable[[RunContext[P]], JobOutput]
    plots: Mapping[str, PlotSpec] = field(default_factory=dict)
    result_advice: str = "explain fewer rows (max_rows)"


def stage_progress(progress: ProgressCallback, weights: Mapping[str, float], *,
                   start: float = 0.0, end: float = 1.0) -> ProgressCallback:
    """A callback for a method that reports each of its stages from 0 to 1, passing on
    the job's overall progress.

    weights: the stages in the order they run, each with its share of the work (e.g. the
    rows it predicts); ``[start, end]`` of the job's progress is divided among them.
    A stage not in ``weights`` reports no further progress.
    """
    total = float(sum(weights.values())) or 1.0
    spans: dict[str, tuple[float, float]] = {}
    done = 0.0
    for stage, weight in weights.items():
        spans[stage] = (done / total, float(weight) / total)
        done += float(weight)
    reached = start

    def report(fraction: float, stage: str) -> None:
        nonlocal reached
        if stage in spans:
            first, share = spans[stage]
            reached = start + (end - start) * (first + share * min(1.0, max(0.0, fraction)))
        progress(reached, stage)

    return report


class KindRegistryError(Exception):
    """A module named as holding job kinds cannot give them, or two give the same name.

    Raised at start-up (a process must not serve with a kind missing); the message names
    the module and what to change.
    """


class KindRegistry:
    """The job kinds one process knows, by name, each with the module that defines it.

    Filled at start-up (``service.startup.register_methods``), then only read: the API
    looks kinds up by name, the worker claims jobs of :meth:`names` and preloads
    :meth:`modules` into the fork server its job processes start from.
    """

    def __init__(self) -> None:
        self._kinds: dict[str, JobKind[Any]] = {}
        self._modules: dict[str, str] = {}

    def register(self, kind: JobKind[Any], *, module: str) -> JobKind[Any]:
        """Add ``kind``, defined as ``KIND`` or in ``KINDS`` of ``module`` (where a job
        process finds it again). Registering a name again from the same module replaces
        it; from another module is an error."""
        if not isinstance(kind, JobKind):
            raise KindRegistryError(f"{module}: {kind!r} is not a JobKind")
        existing = self._modules.get(kind.name)
        if existing is not None and existing != module:
            raise KindRegistryError(f"the job kind {kind.name!r} of {module} is already "
                                    f"registered by {existing}; give it another name")
        self._kinds[kind.name] = kind
        self._modules[kind.name] = module
        return kind

    def register_module(self, module: str) -> tuple[JobKind[Any], ...]:
        """Import ``module`` and register its ``KIND`` / ``KINDS``."""
        kinds = kinds_of_module(module)
        for kind in kinds:
            self.register(kind, module=module)
        return kinds

    def get(self, name: str) -> JobKind[Any] | None:
        return self._kinds.get(name)

    def names(self) -> list[str]:
        """The names of the kinds, sorted."""
        return sorted(self._kinds)

    def module_of(self, name: str) -> str:
        """The module that defines the kind ``name`` (KeyError when there is none)."""
        return self._modules[name]

    def modules(self) -> list[str]:
        """The modules that define the kinds, each once, in registration order."""
        return list(dict.fromkeys(self._modules.values()))

    def __contains__(self, name: object) -> bool:
        return name in self._kinds

    def __len__(self) -> int:
        return len(self._kinds)


def kinds_of_module(module: str) -> tuple[JobKind[Any], ...]:
    """The kinds ``module`` defines: its ``KIND``, then those of its ``KINDS``."""
    try:
        loaded = importlib.import_module(module)
    except ImportError as exc:
        raise KindRegistryError(f"cannot import the job kind module {module!r}: {exc}") \
            from exc
    found: list[Any] = []
    if hasattr(loaded, "KIND"):
        found.append(loaded.KIND)
    kinds = getattr(loaded, "KINDS", ())
    if isinstance(kinds, Mapping):
        kinds = kinds.values()
    if not isinstance(kinds, Iterable):
        raise KindRegistryError(f"KINDS of the module {module!r} is not a list of JobKind")
    found.extend(kinds)
    if not found:
        raise KindRegistryError(f"the module {module!r} defines no job kind: give it "
                                "KIND = JobKind(...) or KINDS = [JobKind(...), ...]")
    for kind in found:
        if not isinstance(kind, JobKind):
            raise KindRegistryError(f"the module {module!r} gives {kind!r} as a job kind, "
                                    "not a JobKind")
    return tuple(found)


def find_kind(module: str, name: str) -> JobKind[Any]:
    """The kind ``name`` of ``module``: how a job process, which has no registry, finds
    the kind it runs (the worker sends it the module the registry names)."""
    for kind in kinds_of_module(module):
        if kind.name == name:
            return kind
    raise KindRegistryError(f"the module {module!r} defines no job kind {name!r}")
