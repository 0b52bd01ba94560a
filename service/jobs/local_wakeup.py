"""Wake idle workers on this machine when a job is queued, for SQLite (it has no NOTIFY).

PostgreSQL workers LISTEN for the NOTIFY each queued job sends. On SQLite every process
shares one file on one machine, so each worker makes a named pipe (FIFO) in
``<data_dir>/wakeup/`` and reads it; the process that queues a job writes one byte into
every pipe there once its transaction has committed. Best effort by design: a worker
still polls every ``TABXAI_POLL_SECONDS``, so a lost byte (a full pipe, a worker just
starting) costs at most one poll interval. Before this, a job waited 0.14-0.19 s for an
idle worker's next poll (0.2 s interval).

Pipes of dead workers (their pid is gone) are removed by the next worker that starts.
POSIX only; elsewhere workers poll as before.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import stat
import threading
from pathlib import Path
from typing import Protocol

__all__ = ["LocalWakeup", "announce", "wakeup_dir"]

log = logging.getLogger("tabxai.jobs.wakeup")


class _Notifiable(Protocol):
    def notify(self) -> None: ...


def wakeup_dir(data_dir: Path) -> Path:
    return data_dir / "wakeup"


def announce(data_dir: Path) -> None:
    """Write one byte into every worker's pipe under ``data_dir`` (never blocks, never
    raises: a worker that misses it finds the job at its next poll)."""
    directory = wakeup_dir(data_dir)
    if not hasattr(os, "mkfifo"):
        return
    try:
        pipes = [p for p in directory.iterdir() if p.suffix == ".fifo"]
    except OSError:
        return
    for pipe in pipes:
        try:
            fd = os.open(pipe, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # ENXIO: nobody reads it (a worker starting or gone); ENOENT
            continue
        try:
            os.write(fd, b"\n")
        except OSError as error:  # EAGAIN: the pipe is full, its worker is awake anyway
            if error.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EPIPE):
                log.debug("wake-up not written", extra={"event": "wakeup_failed",
                                                        "pipe": pipe.name})
        finally:
            os.close(fd)


class LocalWakeup:
    """This worker's pipe: ``run(wakeup, stop)`` calls ``wakeup.notify()`` for every byte
    written into it until ``stop`` is set, then removes the pipe."""

    def __init__(self, data_dir: Path) -> None:
        self.directory = wakeup_dir(data_dir)
        self.path = self.directory / f"worker-{os.getpid()}-{threading.get_ident()}.fifo"
        self._read_fd = self._write_fd = -1

    def open(self) -> bool:
        """Make and open the pipe; False (and workers poll) where that is not possible."""
        if not hasattr(os, "mkfifo"):
            return False
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._remove_dead_workers_pipes()
            os.mkfifo(self.path, 0o600)
            self._read_fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
            # Our own writer keeps the pipe open, so that a writer closing it does not
            # leave the reader at end of file (readable for ever).
            self._write_fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as error:
            log.warning("no wake-up pipe; the worker polls for jobs",
                        extra={"event": "wakeup_unavailable", "error": str(error)})
            self.close()
            return False
        return True

    def run(self, wakeup: _Notifiable, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                readable, _, _ = select.select([self._read_fd], [], [], 1.0)
                if not readable:
                    continue
                try:
                    data = os.read(self._read_fd, 4096)
                except BlockingIOError:
                    continue
                if data:
                    wakeup.notify()
        finally:
            self.close()

    def close(self) -> None:
        for fd in (self._read_fd, self._write_fd):
            if fd >= 0:
                os.close(fd)
        self._read_fd = self._write_fd = -1
        self.path.unlink(missing_ok=True)

    def _remove_dead_workers_pipes(self) -> None:
        for pipe in self.directory.glob("worker-*.fifo"):
            try:
                pid = int(pipe.name.split("-")[1])
                if not stat.S_ISFIFO(pipe.lstat().st_mode):
                    continue
                os.kill(pid, 0)
            except ProcessLookupError:
                pipe.unlink(missing_ok=True)
            except (ValueError, IndexError, OSError):  # not ours, or alive (EPERM)
                continue
