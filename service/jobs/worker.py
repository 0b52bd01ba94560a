"""The worker: claims jobs and runs each in a child process under a memory limit.

``tabxai worker`` runs :func:`run_worker`: ``concurrency`` slots (threads), each
claiming a job of the kinds it was given (a ``KindRegistry`` filled at start-up, see
``service.startup``), starting a *job process* for it and supervising it until it ends.

- The job process (from a ``forkserver`` context: a clean single-threaded parent, so no
  lock or connection of the worker leaks into it) sets ``RLIMIT_AS`` to its start-up
  size plus ``TABXAI_JOB_MEMORY_BYTES``, loads the inputs, runs the kind, writes array
  chunks and finally the result, in fenced transactions of its own connection.
- The slot heartbeats the lease while the job computes, writes the progress the job
  process sends it (at most four times a second), passes a cancel request on, and writes
  every ending other than success (failure, cancel, retry, release) itself.
- A job process that dies (killed, or crashed in native code) fails the job with
  ``out_of_memory``: the worker lives on. The job process exits when its worker dies
  (it watches the pipe from the worker), so a killed worker leaves nothing running; its
  job is claimed again once the lease expires.
- SIGTERM/SIGINT: stop claiming, kill the running job processes, give their jobs back
  (queued again, the attempt not counted), exit.
- Wake-up: on PostgreSQL a dedicated connection LISTENs for the NOTIFY sent with each
  new job; on SQLite the worker reads a named pipe that the process queueing a job
  writes to (``service.jobs.local_wakeup``); every slot also polls every
  ``TABXAI_POLL_SECONDS`` (the fallback while either is down). Database errors in the loop are
  logged and retried with backoff, so a database restart pauses the worker, no more.
"""

from __future__ import annotations

import ctypes
import functools
import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import platform
import resource
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from explainers.progress import Cancelled
from models.errors import ModelError
from models.gpu import gpu_visible
from models.inspection import ModelInfo
from models.loaded import Device
from models.versions import installed_versions
from service.catalog.tables import DatasetRecord, ModelRecord
from service.catalog.tabular import TableInfo
from service.config import Settings
from service.db import Database
from service.jobs.local_wakeup import LocalWakeup
from service.jobs.queue import (
    NOTIFY_CHANNEL,
    Lease,
    LeaseLost,
    cancel_job_run,
    claim_next_job,
    complete_job,
    discard_stale_chunks,
    fail_job,
    fenced_transaction,
    heartbeat,
    reap_expired_jobs,
    release_job,
    retry_job,
)
from service.registry import (
    DatasetInfo,
    JobInputError,
    JobOutput,
    KindRegistry,
    RunContext,
    find_kind,
)
from service.results.arrays import ArrayMeta, ArrayWriter, Axis, write_array

log = logging.getLogger("tabxai.jobs.worker")

PROGRESS_WRITE_SECONDS = 0.25
_PROGRESS_SEND_SECONDS = 0.1
_PRELOAD = ["numpy", "pyarrow", "sqlalchemy", "psycopg", "service.jobs.worker"]
# Signals a job process dies of when an allocation fails under RLIMIT_AS inside native
# code (or the kernel's OOM killer picks it): reported as out of memory.
_MEMORY_SIGNALS = (signal.SIGKILL, signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS)
_PARENT_GONE_EXIT = 70
_PR_SET_PDEATHSIG = 1
_PARENT_POLL_SECONDS = 1.0


def run_worker(settings: Settings, kinds: KindRegistry, *, concurrency: int = 1,
               device: Literal["auto", "cpu", "cuda"] = "auto",
               parent_pid: int | None = None) -> int:
    """The ``tabxai worker`` command: migrate, then run jobs of ``kinds`` until SIGTERM or
    SIGINT.

    parent_pid: the process that started this worker (``tabxai serve``); when it dies,
    even by SIGKILL, the worker gets SIGTERM and stops as it does then.
    """
    from service.migrate import upgrade

    if parent_pid is not None:
        _stop_with_parent(parent_pid)
    settings.ensure_dirs()
    db = Database(settings.resolved_database_url)
    upgrade(db.engine)
    resolved: Device = "cuda" if device == "cuda" or (device == "auto" and gpu_visible()) \
        else "cpu"
    if device == "cuda" and not gpu_visible():
        log.warning("no GPU detected; the worker takes gpu jobs as asked",
                    extra={"event": "worker_no_gpu"})
    stop = threading.Event()

    def _stop(signum: int, _frame: object) -> None:
        log.info("stopping", extra={"event": "worker_stopping", "signal": signum})
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    worker = Worker(db, settings, kinds, concurrency=concurrency, device=resolved)
    try:
        worker.run(stop)
    finally:
        db.dispose()
    return 0


def _stop_with_parent(parent_pid: int) -> None:
    """Send this process SIGTERM when ``parent_pid`` is no longer its parent.

    Linux delivers it at once (``PR_SET_PDEATHSIG``); a thread that compares
    ``os.getppid()`` once a second covers other systems and a parent that died before
    the request was made. The job processes follow the worker (they watch its pipe).
    """
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            log.warning("cannot ask to be told of the parent's death", extra={
                "event": "pdeathsig_failed", "errno": ctypes.get_errno()})

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(_PARENT_POLL_SECONDS)
        log.warning("the process that started this worker is gone; stopping",
                    extra={"event": "worker_orphaned", "parent_pid": parent_pid})
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="tabxai-parent-watch", daemon=True).start()


class Wakeup:
    """Lets idle slots sleep until a job may be waiting, without missing a signal that
    arrives between their empty claim and their sleep (a generation counter)."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._generation = 0

    def generation(self) -> int:
        with self._condition:
            return self._generation

    def notify(self) -> None:
        with self._condition:
            self._generation += 1
            self._condition.notify_all()

    def wait(self, since: int, timeout: float) -> None:
        with self._condition:
            self._condition.wait_for(lambda: self._generation != since, timeout)


class Worker:
    """Runs ``concurrency`` job slots against ``db`` until ``stop`` is set.

    kinds: the job kinds it claims and runs (registered at start-up). device: "cpu"
    (takes cpu and auto jobs) or "cuda" (takes gpu jobs first, then auto and cpu jobs).
    name: the worker's name in lease owners and logs.
    """

    def __init__(self, db: Database, settings: Settings, kinds: KindRegistry, *,
                 concurrency: int = 1, device: Device = "cpu", name: str | None = None
                 ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        self.db = db
        self.settings = settings
        self.kinds = kinds
        self.concurrency = concurrency
        self.device: Device = device
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.queues = ("gpu", "any", "cpu") if device == "cuda" else ("cpu", "any")
        self.wakeup = Wakeup()
        self.n_threads = max(1, (os.cpu_count() or 1) // concurrency)
        self._last_reap = 0.0
        self._reap_lock = threading.Lock()
        self._kind_names: list[str] = []

    def run(self, stop: threading.Event) -> None:
        self._kind_names = self.kinds.names()
        if not self._kind_names:
            log.warning("no job kinds are registered; this worker will claim nothing",
                        extra={"event": "worker_without_kinds"})
        _start_forkserver(self.kinds.modules())
        threads = [threading.Thread(target=self._slot, args=(i, stop),
                                    name=f"tabxai-slot-{i}", daemon=True)
                   for i in range(self.concurrency)]
        if not self.db.is_sqlite:
            threads.append(threading.Thread(
                target=_listen, args=(self.settings.resolved_database_url, self.wakeup, stop),
                name="tabxai-listen", daemon=True))
        else:
            pipe = LocalWakeup(self.settings.data_dir)
            if pipe.open():
                threads.append(threading.Thread(target=pipe.run, args=(self.wakeup, stop),
                                                name="tabxai-wakeup", daemon=True))
        log.info("worker started", extra={"event": "worker_started", "worker": self.name,
                                          "device": self.device, "kinds": self._kind_names,
                                          "concurrency": self.concurrency})
        for thread in threads:
            thread.start()
        stop.wait()
        self.wakeup.notify()
        for thread in threads:
            thread.join()
        log.info("worker stopped", extra={"event": "worker_stopped", "worker": self.name})

    # -- the slot loop --------------------------------------------------------------

    def _slot(self, index: int, stop: threading.Event) -> None:
        backoff = 0.0
        while not stop.is_set():
            since = self.wakeup.generation()
            try:
                self._reap_now_and_then()
                lease = claim_next_job(
                    self.db, worker=f"{self.name}:{index}", queues=self.queues,
                    kinds=self._kind_names, prefer_gpu=self.device == "cuda",
                    lease_seconds=self.settings.lease_seconds)
            except SQLAlchemyError as exc:
                backoff = min(10.0, max(0.5, backoff * 2))
                log.warning("database unavailable; retrying",
                            extra={"event": "claim_failed", "error": _first_line(exc),
                                   "retry_in": backoff})
                stop.wait(backoff)
                continue
            backoff = 0.0
            if lease is None:
                self.wakeup.wait(since, self.settings.poll_seconds)
                continue
            try:
                self._execute(lease, stop)
            except Exception:  # noqa: BLE001 - a slot must outlive any one job
                # The job's lease expires and it is claimed again.
                log.exception("job supervision failed", extra={
                    "event": "slot_error", "job_id": lease.job_id})

    def _reap_now_and_then(self) -> None:
        # One slot per worker looks for dead workers' jobs, every half lease.
        now = time.monotonic()
        if now - self._last_reap < self.settings.lease_seconds / 2 or \
                not self._reap_lock.acquire(blocking=False):
            return
        try:
            self._last_reap = now
            reap_expired_jobs(self.db)
        finally:
            self._reap_lock.release()

    # -- one job --------------------------------------------------------------------

    def _execute(self, lease: Lease, stop: threading.Event) -> None:
        # The lease is kept alive from the claim on, whatever the slot is busy with.
        keeper = _LeaseKeeper(self.db, lease, self.settings)
        keeper.start()
        try:
            outcome = self._run_in_process(lease, keeper, stop)
        finally:
            keeper.stop()
        if outcome is not None:
            self._apply(lease, outcome)

    def _run_in_process(self, lease: Lease, keeper: _LeaseKeeper, stop: threading.Event
                        ) -> tuple[Any, ...] | None:
        try:
            spec = self._job_spec(lease)
            discard_stale_chunks(self.db, lease)
        except JobInputError as exc:
            return ("input_error", exc.code, exc.message)
        except LeaseLost:
            return None
        except SQLAlchemyError as exc:
            # The lease expires and the job is claimed again; nothing else to do.
            log.warning("could not start job", extra={"event": "job_start_failed",
                                                      "job_id": lease.job_id,
                                                      "error": _first_line(exc)})
            return None
        context = _job_context()
        events_in, events_out = context.Pipe(duplex=False)
        control_in, control_out = context.Pipe(duplex=False)
        process = context.Process(target=_job_process_main, name=f"tabxai-{lease.job_id}",
                                  args=(spec, events_out, control_in))
        process.start()
        events_out.close()
        control_in.close()
        try:
            return self._supervise(lease, process, events_in, control_out, keeper, stop)
        finally:
            events_in.close()
            control_out.close()
            _reap_process(process)

    def _job_spec(self, lease: Lease) -> JobSpec:
        kind = self.kinds.get(lease.kind)
        if kind is None:  # claims filter by known kinds; this is only a safeguard
            raise JobInputError("unknown_kind", f"No worker knows the job kind {lease.kind}.")
        with self.db.session() as session:
            dataset = session.get(DatasetRecord, lease.dataset_id) if lease.dataset_id \
                else None
            model = session.get(ModelRecord, lease.model_id) if lease.model_id else None
            if lease.dataset_id and dataset is None:
                raise JobInputError("dataset_missing", f"The dataset {lease.dataset_id} "
                                    "was deleted before the job ran; upload it again.")
            if lease.model_id and model is None:
                raise JobInputError("model_missing", f"The model {lease.model_id} was "
                                    "deleted before the job ran; upload it again.")
            from service.catalog.service import table_info

            return JobSpec(
                lease=lease, kind_module=self.kinds.module_of(kind.name),
                database_url=self.settings.resolved_database_url,
                device=self.device if lease.device == "auto" else lease.device,  # type: ignore[arg-type]
                dataset=DatasetInfo.of(dataset) if dataset else None,
                dataset_blob_id=dataset.blob_id if dataset else None,
                dataset_paging_blob_id=dataset.paging_blob_id if dataset else None,
                dataset_sha256=dataset.sha256 if dataset else None,
                table_info=table_info(dataset) if dataset else None,
                model=ModelInfo.from_dict(model.info) if model else None,
                model_blob_id=model.blob_id if model else None,
                model_sha256=model.sha256 if model else None,
                n_threads=self.n_threads,
                memory_limit_bytes=self.settings.job_memory_bytes,
                tmp_dir=self.settings.tmp_dir.resolve(),
                trust_uploads=self.settings.trust_uploads,
                log_level=self.settings.log_level,
            )

    def _supervise(self, lease: Lease, process: multiprocessing.process.BaseProcess,
                   events: multiprocessing.connection.Connection,
                   control: multiprocessing.connection.Connection,
                   keeper: _LeaseKeeper, stop: threading.Event) -> tuple[Any, ...]:
        """Relay progress and cancel until the job process reports its ending."""
        cancel_sent = False
        while True:
            if stop.is_set():
                process.kill()
                return ("released",)
            if keeper.lost.is_set():
                # The job process may have just committed the result itself.
                ending = _final_message(events)
                if ending is not None:
                    return ending
                log.warning("lease lost; stopping the job process",
                            extra={"event": "lease_lost", "job_id": lease.job_id})
                process.kill()
                return ("lost",)
            if keeper.cancel_requested.is_set() and not cancel_sent:
                control.send("cancel")
                cancel_sent = True
            if events.poll(0.05):
                try:
                    message = events.recv()
                except (EOFError, OSError):
                    process.join(5.0)
                    return ("released",) if stop.is_set() else ("died", process.exitcode)
                if message[0] != "progress":
                    return tuple(message)
                keeper.report(message[1], message[2])

    def _apply(self, lease: Lease, outcome: tuple[Any, ...]) -> None:
        what = outcome[0]
        limit_mib = self.settings.job_memory_bytes / 2**20
        memory_message = (
            f"The job needed more memory than its limit of {limit_mib:,.0f} MiB "
            "(TABXAI_JOB_MEMORY_BYTES){}. Explain fewer rows (max_rows), or ask the "
            "operator to raise the limit.")
        if what in ("succeeded", "lost"):
            return
        if what == "cancelled":
            self._write_ending(lease, "cancel")
        elif what == "input_error":
            self._write_ending(lease, "fail", code=outcome[1], message=outcome[2])
        elif what == "memory":
            self._write_ending(lease, "fail", code="out_of_memory",
                               message=memory_message.format(""))
        elif what == "died":
            exitcode = outcome[1]
            if exitcode is not None and exitcode < 0 and -exitcode in _MEMORY_SIGNALS:
                name = signal.Signals(-exitcode).name
                self._write_ending(lease, "fail", code="out_of_memory", message=(
                    memory_message.format(f", or crashed: its process was killed by {name}")))
            else:
                self._write_ending(lease, "retry",
                                   reason=f"the job process exited with status {exitcode}")
        elif what == "error":
            self._write_ending(lease, "retry", reason=outcome[1])
        elif what == "released":
            self._write_ending(lease, "release")

    def _write_ending(self, lease: Lease, action: str, **details: str) -> None:
        """Write the job's ending, retrying while the database is unavailable for up to
        a lease (after that the lease expires and the job is claimed again anyway)."""
        deadline = time.monotonic() + self.settings.lease_seconds
        delay = 0.25
        while True:
            try:
                if action == "fail":
                    fail_job(self.db, lease, code=details["code"], message=details["message"])
                elif action == "cancel":
                    cancel_job_run(self.db, lease)
                elif action == "retry":
                    retry_job(self.db, lease, reason=details["reason"])
                else:
                    release_job(self.db, lease)
                return
            except LeaseLost:
                return
            except SQLAlchemyError as exc:
                if time.monotonic() + delay > deadline:
                    log.error("could not record the job's ending",
                              extra={"event": "ending_lost", "job_id": lease.job_id,
                                     "action": action, "error": _first_line(exc)})
                    return
                time.sleep(delay)
                delay = min(2.0, delay * 2)


class _LeaseKeeper(threading.Thread):
    """Heartbeats one job's lease and writes its progress (at most every
    PROGRESS_WRITE_SECONDS), from the claim until the job's ending is known.

    ``lost`` is set when the lease turns out to be gone, ``cancel_requested`` when a
    cancel was asked for. Database errors are logged and retried at the next beat: the
    lease may well outlast a database restart, and the fenced writes decide in the end.
    """

    def __init__(self, db: Database, lease: Lease, settings: Settings) -> None:
        super().__init__(name=f"tabxai-lease-{lease.job_id}", daemon=True)
        self.db, self.lease, self.settings = db, lease, settings
        self.lost = threading.Event()
        self.cancel_requested = threading.Event()
        self._finished = threading.Event()
        self._lock = threading.Lock()
        self._progress: tuple[float, str] | None = None
        self._dirty = False

    def report(self, fraction: float, stage: str) -> None:
        with self._lock:
            self._progress, self._dirty = (fraction, stage), True

    def stop(self) -> None:
        self._finished.set()
        self.join()

    def run(self) -> None:
        last_beat = last_write = time.monotonic()
        while not self._finished.wait(0.05):
            now = time.monotonic()
            with self._lock:
                progress, dirty = self._progress, self._dirty
            if now - last_beat < self.settings.heartbeat_seconds and not (
                    dirty and now - last_write >= PROGRESS_WRITE_SECONDS):
                continue
            try:
                cancel = heartbeat(self.db, self.lease,
                                   lease_seconds=self.settings.lease_seconds,
                                   progress=progress[0] if progress else None,
                                   stage=progress[1] if progress else None)
            except LeaseLost:
                self.lost.set()
                return
            except SQLAlchemyError as exc:
                log.warning("heartbeat failed", extra={"event": "heartbeat_failed",
                                                       "job_id": self.lease.job_id,
                                                       "error": _first_line(exc)})
                last_beat = now
                continue
            with self._lock:
                if self._progress == progress:
                    self._dirty = False
            last_beat = last_write = now
            if cancel:
                self.cancel_requested.set()


# -- the job process ----------------------------------------------------------------

@dataclass(frozen=True)
class JobSpec:
    """Everything the job process needs, sent to it pickled."""

    lease: Lease
    kind_module: str
    database_url: str
    device: Device
    dataset: DatasetInfo | None
    dataset_blob_id: str | None
    dataset_paging_blob_id: str | None  # the Parquet copy a CSV is read from, if any
    dataset_sha256: str | None
    table_info: TableInfo | None
    model: ModelInfo | None
    model_blob_id: str | None
    model_sha256: str | None
    n_threads: int
    memory_limit_bytes: int
    tmp_dir: Path
    trust_uploads: bool
    log_level: str = "INFO"


def _job_process_main(spec: JobSpec, events: multiprocessing.connection.Connection,
                      control: multiprocessing.connection.Connection) -> None:
    # Ctrl-C reaches the whole process group; the worker decides what happens to jobs.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=spec.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    limit = address_space_limit(spec.device, spec.memory_limit_bytes)
    if limit is not None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    cancelled = threading.Event()
    threading.Thread(target=_watch_worker, args=(control, cancelled), daemon=True).start()
    db = Database(spec.database_url)
    outcome: tuple[Any, ...]
    try:
        outcome = _run_job(spec, db, events, cancelled)
    except LeaseLost:
        outcome = ("lost",)
    except Cancelled:
        outcome = ("cancelled",)
    except JobInputError as exc:
        outcome = ("input_error", exc.code, exc.message)
    except ModelError as exc:
        outcome = ("input_error", exc.code, str(exc))
    except MemoryError as exc:
        outcome = ("memory", f"{type(exc).__name__}: {exc}")
    except ValueError as exc:
        outcome = ("input_error", "invalid_input", _first_line(exc))
    except Exception as exc:  # noqa: BLE001 - every other failure is retried by the worker
        log.exception("job failed", extra={"event": "job_error", "job_id": spec.lease.job_id})
        outcome = ("error", f"{type(exc).__name__}: {_first_line(exc)}")
    db.dispose()
    try:
        events.send(outcome)
    finally:
        # Skip interpreter teardown: native libraries' destructors under a tight
        # RLIMIT_AS can crash after the outcome is safely sent.
        os._exit(0)


def _watch_worker(control: multiprocessing.connection.Connection,
                  cancelled: threading.Event) -> None:
    """Relay a cancel; exit at once when the worker is gone (its pipe end closed)."""
    while True:
        try:
            if control.recv() == "cancel":
                cancelled.set()
        except (EOFError, OSError):
            os._exit(_PARENT_GONE_EXIT)


def _run_job(spec: JobSpec, db: Database, events: multiprocessing.connection.Connection,
             cancelled: threading.Event) -> tuple[Any, ...]:
    lease = spec.lease
    # The module is preloaded in the fork server: finding the kind costs no import.
    kind = find_kind(spec.kind_module, lease.kind)
    if spec.dataset is None:
        raise JobInputError("no_dataset", "This job has no dataset.")
    params = kind.params_model.model_validate(lease.params)
    spec.tmp_dir.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f"{lease.job_id}-", dir=spec.tmp_dir))
    try:
        resources = _JobResources(spec, db, tmp_dir)
        context: RunContext[Any] = RunContext(
            job_id=lease.job_id, attempt=lease.attempt, params=params, device=spec.device,
            dataset=spec.dataset, model=spec.model, n_threads=spec.n_threads,
            memory_limit_bytes=spec.memory_limit_bytes, tmp_dir=tmp_dir,
            progress=_ProgressSender(events, cancelled), resources=resources)
        output = kind.run(context)
        if not isinstance(output, JobOutput):
            raise TypeError(f"kind {lease.kind} returned {type(output).__name__}, "
                            "not a JobOutput")
        metas = resources.finish(output)
        device_used = output.device_used or spec.device
        summary = _with_provenance(output.summary, spec, device_used)
        complete_job(db, lease, summary=summary, arrays=metas, device_used=device_used)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return ("succeeded",)


class _ProgressSender:
    """The job's progress callback: throttled messages to the worker; raises Cancelled
    once the worker relays a cancel request.

    The progress it sends never goes back: a fraction below one already reported is
    sent as the one reported (a method that restarts at 0 in each stage must map its
    stages onto the whole job, with ``service.registry.stage_progress``).
    """

    def __init__(self, events: multiprocessing.connection.Connection,
                 cancelled: threading.Event) -> None:
        self._events = events
        self._cancelled = cancelled
        self._last_sent = 0.0
        self._stage = ""
        self._reached = 0.0

    def __call__(self, fraction: float, stage: str) -> None:
        if self._cancelled.is_set():
            raise Cancelled("the job was cancelled")
        if fraction == fraction:  # not NaN
            self._reached = max(self._reached, min(1.0, float(fraction)))
        now = time.monotonic()
        if stage != self._stage or self._reached >= 1.0 or \
                now - self._last_sent >= _PROGRESS_SEND_SECONDS:
            self._events.send(("progress", self._reached, str(stage)))
            self._last_sent, self._stage = now, stage


@dataclass
class _JobResources:
    """The job process's side of RunContext: inputs from blobs, fenced array writers."""

    spec: JobSpec
    db: Database
    tmp_dir: Path
    writers: dict[str, ArrayWriter] = field(default_factory=dict)

    def load_dataset(self) -> Any:
        """The dataset as a pyarrow Table. A CSV is read from its Parquet paging copy
        when it has one (the same values and types, without parsing text again)."""
        from service.catalog.paging import read_paging_copy
        from service.catalog.tabular import read_table
        from service.storage import copy_blob_to_file

        assert self.spec.dataset_blob_id and self.spec.table_info
        paging_blob_id = (self.spec.dataset_paging_blob_id
                          if self.spec.table_info.format == "csv" else None)
        path = self.tmp_dir / "dataset"
        copy_blob_to_file(self.db, paging_blob_id or self.spec.dataset_blob_id, path)
        try:
            if paging_blob_id is not None:
                return read_paging_copy(path)
            return read_table(path, self.spec.table_info)
        finally:
            path.unlink(missing_ok=True)

    def load_model(self) -> Any:
        from models.loading import load_model
        from service.storage import copy_blob_to_file

        info = self.spec.model
        if info is None or self.spec.model_blob_id is None:
            raise JobInputError("no_model", "This job has no model; send model_id.")
        path = self.tmp_dir / "model"
        copy_blob_to_file(self.db, self.spec.model_blob_id, path)
        try:
            return load_model(path, format=info.format, feature_names=info.feature_names,
                              task=info.task, classes=info.classes,
                              trust_uploads=self.spec.trust_uploads,
                              n_threads=self.spec.n_threads)
        finally:
            path.unlink(missing_ok=True)

    def array_writer(self, name: str, dtype: str, row_shape: Sequence[int], *,
                     axes: Sequence[str] | None, labels: Sequence[str] | None,
                     chunk_rows: int | None, dims: Sequence[Axis] | None = None
                     ) -> ArrayWriter:
        if name in self.writers:
            raise ValueError(f"the job already writes an array named {name!r}")
        writer = ArrayWriter(self._transaction, job_id=self.spec.lease.job_id,
                             owner=self.spec.lease.owner, name=name, dtype=dtype,
                             row_shape=row_shape, axes=axes, labels=labels,
                             chunk_rows=chunk_rows, dims=dims)
        self.writers[name] = writer
        return writer

    def finish(self, output: JobOutput) -> list[ArrayMeta]:
        """Close the writers and store the output's in-memory arrays."""
        metas = [writer.close() for writer in self.writers.values()]
        for name, values in output.arrays.items():
            if name in self.writers:
                raise ValueError(f"the job returned array {name!r} and also wrote it")
            metas.append(write_array(
                self._transaction, job_id=self.spec.lease.job_id,
                owner=self.spec.lease.owner, name=name, values=values,
                axes=output.array_axes.get(name), labels=output.array_labels.get(name),
                dims=output.array_dims.get(name)))
        return metas

    def _transaction(self) -> Any:
        return fenced_transaction(self.db, self.spec.lease)


def _with_provenance(summary: dict[str, Any], spec: JobSpec, device_used: str
                     ) -> dict[str, Any]:
    """The summary with the service's provenance merged under the kind's own."""
    own = dict(summary.get("provenance") or {})
    provenance = {
        "job_id": spec.lease.job_id, "kind": spec.lease.kind, "attempt": spec.lease.attempt,
        "device": device_used, "dataset_id": spec.lease.dataset_id,
        "dataset_sha256": spec.dataset_sha256, "model_id": spec.lease.model_id,
        "model_sha256": spec.model_sha256, **own,
        "versions": {**_versions(), **(own.get("versions") or {})},
    }
    result = {**summary, "provenance": provenance}
    try:
        json.dumps(result, allow_nan=False)
    except (TypeError, ValueError) as exc:
        # A kind's bug, not the user's input: reported as an internal error.
        raise RuntimeError(f"the summary of kind {spec.lease.kind} is not JSON: {exc}") \
            from None
    return result


@functools.cache
def _versions() -> dict[str, str | None]:
    # Once per process, and once in the fork server for all job processes (see the end
    # of this module).
    found = installed_versions("tabxai", "numpy", "pyarrow")
    return {"tabxai": found["tabxai"], "python": platform.python_version(),
            "numpy": found["numpy"], "pyarrow": found["pyarrow"]}


# -- processes, wake-up --------------------------------------------------------------

def _job_context() -> multiprocessing.context.ForkServerContext:
    return multiprocessing.get_context("forkserver")


def _start_forkserver(kind_modules: Sequence[str]) -> None:
    """Start the fork server now, with the kinds' modules imported, so that job
    processes start in milliseconds (and find their kind without importing it).

    (Each job process also runs the worker's main module again, as multiprocessing does
    for every child; ``tabxai worker``'s main imports nothing beyond this preload.)
    """
    modules = list(dict.fromkeys([*_PRELOAD, *kind_modules]))
    context = _job_context()
    context.set_forkserver_preload(modules)
    # A first process waits until the server has imported everything.
    warm_up = context.Process(target=_warm_up, name="tabxai-warm-up")
    warm_up.start()
    warm_up.join()
    warm_up.close()


def _warm_up() -> None:
    """Nothing: run once so that the fork server is ready before the first claim."""


def _final_message(events: multiprocessing.connection.Connection
                   ) -> tuple[Any, ...] | None:
    """The job process's ending if it is already on its way (within a second)."""
    deadline = time.monotonic() + 1.0
    try:
        while events.poll(max(0.0, deadline - time.monotonic())):
            message = events.recv()
            if message[0] != "progress":
                return tuple(message)
    except (EOFError, OSError):
        return None
    return None


def _reap_process(process: multiprocessing.process.BaseProcess) -> None:
    process.join(2.0)
    if process.is_alive():
        process.kill()
        process.join(5.0)
    process.close()


def _listen(url: str, wakeup: Wakeup, stop: threading.Event) -> None:
    """LISTEN for new jobs on a dedicated connection, reconnecting as needed."""
    import psycopg

    conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    delay = 0.5
    while not stop.is_set():
        try:
            with psycopg.connect(conninfo, autocommit=True) as connection:
                connection.execute(f"LISTEN {NOTIFY_CHANNEL}")
                delay = 0.5
                # Jobs queued while this connection was down were not announced.
                wakeup.notify()
                while not stop.is_set():
                    for _ in connection.notifies(timeout=1.0):
                        wakeup.notify()
        except psycopg.Error as exc:
            log.warning("LISTEN connection lost; polling meanwhile",
                        extra={"event": "listen_failed", "error": _first_line(exc)})
            stop.wait(delay)
            delay = min(10.0, delay * 2)


def address_space_limit(device: Device, memory_limit_bytes: int) -> int | None:
    """The RLIMIT_AS of a job process on ``device``: its start-up size plus its memory
    cap on the CPU; none on a GPU. The CUDA driver reserves virtual address space for the
    GPU's memory and the host's when it starts (over 100 GiB on an H200 machine): under
    a cap it fails to start, and XGBoost and onnxruntime fall back to the CPU (measured:
    a 200,000-row TreeSHAP job took 27.5 s under the cap, 2.9 s without, on an H200).
    A GPU job's host memory is then bounded only by its method's chunking."""
    if device == "cuda":
        return None
    return _address_space_bytes() + memory_limit_bytes


def _address_space_bytes() -> int:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[0])
    return pages * os.sysconf("SC_PAGE_SIZE")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


# The fork server preloads this module; job processes then inherit the versions.
_versions()
