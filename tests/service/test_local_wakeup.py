"""The named-pipe wake-up of SQLite workers (service.jobs.local_wakeup), on its own."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

from service.jobs.local_wakeup import LocalWakeup, announce, wakeup_dir


class Counter:
    def __init__(self) -> None:
        self.event = threading.Event()
        self.count = 0

    def notify(self) -> None:
        self.count += 1
        self.event.set()


def test_announce_wakes_a_reading_worker_and_the_pipe_goes_when_it_stops(tmp_path: Path):
    pipe = LocalWakeup(tmp_path)
    assert pipe.open()
    counter, stop = Counter(), threading.Event()
    thread = threading.Thread(target=pipe.run, args=(counter, stop), daemon=True)
    thread.start()
    try:
        announce(tmp_path)
        assert counter.event.wait(5.0), "the worker was not woken"
    finally:
        stop.set()
        thread.join(5.0)
    assert not thread.is_alive()
    assert not pipe.path.exists()


def test_announce_never_blocks_or_raises(tmp_path: Path):
    announce(tmp_path / "nowhere")  # no wake-up folder: nothing to do
    directory = wakeup_dir(tmp_path)
    directory.mkdir(parents=True)
    os.mkfifo(directory / "worker-1-1.fifo")  # nobody reads it
    (directory / "worker-2-2.fifo").write_text("not a pipe")
    announce(tmp_path)
    # a pipe whose reader never reads: announcing again and again does not block
    pipe = LocalWakeup(tmp_path)
    assert pipe.open()
    try:
        for _ in range(100_000 // 4096 + 20):
            announce(tmp_path)
    finally:
        pipe.close()


def test_a_starting_worker_removes_the_pipes_of_dead_workers(tmp_path: Path):
    directory = wakeup_dir(tmp_path)
    directory.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    stale = directory / f"worker-{int(dead.stdout)}-7.fifo"
    os.mkfifo(stale)
    alive = directory / f"worker-{os.getppid()}-7.fifo"
    os.mkfifo(alive)
    pipe = LocalWakeup(tmp_path)
    assert pipe.open()
    pipe.close()
    assert not stale.exists()
    assert alive.exists()
