"""Run a function in a fresh child process with an address-space and a time limit.

Parsing an uploaded file is the riskiest thing tabxai does: a crafted file can crash a
native parser, make it allocate without bound or loop forever. :func:`run_isolated`
confines that to a child process and turns every such ending into
:class:`~models.errors.ModelInspectionFailed`.

Children come from a ``forkserver`` context, never from ``fork`` of the (threaded) caller:
the fork server is a clean single-threaded process started once, with the model libraries
imported in advance, so each child starts in milliseconds instead of re-importing them. As with any
multiprocessing start method but fork, the caller's ``__main__`` module is imported in
the child, so it must guard its entry point with ``if __name__ == "__main__":``.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import resource
import signal
import time
from collections.abc import Callable
from typing import Any

from models.errors import ModelError, ModelInspectionFailed

__all__ = ["run_isolated"]

logger = logging.getLogger(__name__)

# Imported once in the fork server so that children inherit them already loaded.
_PRELOAD = [
    "numpy",
    "models.loading",
    "models.inspection",
    "xgboost",
    "lightgbm",
    "sklearn.ensemble",
    "sklearn.tree",
    "sklearn.pipeline",
    "skops.io",
    "onnx",
    "onnxruntime",
]
_context: multiprocessing.context.ForkServerContext | None = None

_MEMORY_MARKERS = ("MemoryError", "bad_alloc", "Cannot allocate memory", "out of memory")


def run_isolated[T](
    fn: Callable[..., T],
    *args: Any,
    memory_limit_bytes: int,
    time_limit_s: float,
    **kwargs: Any,
) -> T:
    """Call ``fn(*args, **kwargs)`` in a child process and return its result.

    fn: a top-level (importable, picklable) function; its arguments and its result must
        pickle.
    memory_limit_bytes: address space the child may add to what it holds when it starts
        (``RLIMIT_AS`` is set to the start-up size plus this; libraries reserve virtual
        address space at import that is not memory in use).
    time_limit_s: wall-clock seconds before the child is killed.

    A :class:`ModelError` raised by ``fn`` is re-raised here. A child that dies (signal,
    abort, nonzero exit), runs out of memory or passes the time limit raises
    :class:`ModelInspectionFailed` with ``reason`` "crashed", "memory" or "timeout".
    Any other exception raised by ``fn`` is reported as "crashed" with its message.
    """
    if memory_limit_bytes <= 0:
        raise ValueError(f"memory_limit_bytes must be positive, got {memory_limit_bytes}")
    if time_limit_s <= 0:
        raise ValueError(f"time_limit_s must be positive, got {time_limit_s}")
    ctx = _forkserver()
    receiver, sender = ctx.Pipe(duplex=False)
    process = ctx.Process(
        target=_child_main,
        args=(sender, memory_limit_bytes, fn, args, kwargs),
        daemon=True,
    )
    started = time.monotonic()
    process.start()
    sender.close()
    try:
        outcome = _receive(receiver, process, time_limit_s)
    finally:
        receiver.close()
        exitcode = _reap(process)
    logger.debug(
        "sandbox run",
        extra={
            "event": "sandbox_run",
            "fn": getattr(fn, "__qualname__", str(fn)),
            "seconds": round(time.monotonic() - started, 3),
            "exitcode": exitcode,
            "outcome": outcome[0],
        },
    )
    status, payload = outcome
    if status == "ok":
        return payload
    if status == "model_error":
        raise payload
    if status == "memory":
        raise ModelInspectionFailed(
            f"Inspecting the model exceeded the memory limit of "
            f"{memory_limit_bytes / 2**20:.0f} MiB ({payload}).",
            reason="memory",
        )
    if status == "timeout":
        raise ModelInspectionFailed(
            f"Inspecting the model did not finish within the time limit of {time_limit_s:g} s.",
            reason="timeout",
        )
    raise ModelInspectionFailed(
        f"Inspecting the model crashed the parser ({payload}).", reason="crashed"
    )


def _forkserver() -> multiprocessing.context.ForkServerContext:
    global _context
    if _context is None:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(_PRELOAD)
        _context = ctx
    return _context


def _receive(
    receiver: multiprocessing.connection.Connection,
    process: multiprocessing.process.BaseProcess,
    time_limit_s: float,
) -> tuple[str, Any]:
    # poll() also returns when the child dies: its end of the pipe closes.
    if not receiver.poll(time_limit_s):
        return "timeout", None
    try:
        return receiver.recv()
    except (EOFError, OSError):
        process.join(1.0)
        return "crashed", _describe_exit(process.exitcode)


def _describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "the child process closed its pipe without a result"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"the child process was killed by {name}"
    return f"the child process exited with status {exitcode} without a result"


def _reap(process: multiprocessing.process.BaseProcess) -> int | None:
    """Wait briefly for the child, kill it if it lingers; return its exit code."""
    process.join(0.5)
    if process.is_alive():
        process.kill()
        process.join(5.0)
    exitcode = process.exitcode
    process.close()
    return exitcode


def _child_main(
    sender: multiprocessing.connection.Connection,
    memory_limit_bytes: int,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> None:
    limit = _address_space_bytes() + memory_limit_bytes
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    # Core dumps of a crashing parser would be slow and fill the disk.
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    try:
        result: tuple[str, Any] = ("ok", fn(*args, **kwargs))
    except ModelError as error:
        # A parser that failed to allocate under the limit reports it as a parse error.
        memory = any(m in error.message for m in _MEMORY_MARKERS)
        result = ("memory", error.message) if memory else ("model_error", error)
    except MemoryError as error:
        result = ("memory", f"MemoryError: {error}")
    except BaseException as error:  # noqa: BLE001 - every failure must reach the parent
        text = f"{type(error).__name__}: {error}"
        result = ("memory", text) if any(m in text for m in _MEMORY_MARKERS) else ("crashed", text)
    try:
        sender.send(result)
    except Exception as error:  # noqa: BLE001 - e.g. an unpicklable result
        sender.send(
            ("crashed", f"the result could not be sent back: {type(error).__name__}: {error}")
        )
    sender.close()
    # Skip interpreter teardown: library destructors under a tight RLIMIT_AS can crash
    # after the result is safely sent.
    os._exit(0)


def _address_space_bytes() -> int:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[0])
    return pages * os.sysconf("SC_PAGE_SIZE")
