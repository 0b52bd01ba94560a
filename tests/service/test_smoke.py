"""`tabxai smoke` against a real `tabxai serve` process, and the shipped expected numbers.

The server is a subprocess on a free loopback port with SQLite in a temporary folder and
one worker, as a user's CI would run it; the smoke command is run as a user runs it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.smoke.build_assets import compute_expected
from service.smoke.runner import ASSETS, JOB_MODEL, MODEL_FILES

ROOT = Path(__file__).resolve().parents[2]
SMOKE_SECONDS = 150


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A `tabxai serve` subprocess with one worker; yields its base URL."""
    data = tmp_path_factory.mktemp("smoke-server")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TABXAI_")}
    env.update(TABXAI_DATA_DIR=str(data), TABXAI_HOST="127.0.0.1", TABXAI_PORT=str(port),
               TABXAI_WORKERS="1", TABXAI_POLL_SECONDS="0.1", TABXAI_LOG_LEVEL="WARNING")
    log = (data / "server.log").open("wb")
    # A session of its own, so the teardown can stop the server and its worker together.
    process = subprocess.Popen([sys.executable, "-m", "service.cli", "serve"], cwd=ROOT,
                               env=env, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if process.poll() is not None:
                pytest.fail("tabxai serve exited with "
                            f"{process.returncode}:\n{(data / 'server.log').read_text()}")
            try:
                _get(f"{url}/readyz")
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"tabxai serve not ready in 90 s:\n"
                                f"{(data / 'server.log').read_text()}")
                time.sleep(0.2)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


def _smoke(url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "service.cli", "smoke", url, *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=SMOKE_SECONDS)


def _assert_server_empty(url: str) -> None:
    for collection in ("jobs", "models", "datasets"):
        assert _get(f"{url}/v1/{collection}")["items"] == [], collection


@pytest.mark.slow
def test_smoke_passes_against_a_real_server_and_leaves_nothing(server: str) -> None:
    done = _smoke(server)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr == ""
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["step", "seconds", "result"]
    assert lines[-1].startswith("total") and lines[-1].endswith("all checks passed")
    for kind in JOB_MODEL:
        for part in ("job", "result", "arrays", "plots"):
            row = next(line for line in lines if line.startswith(f"{kind}: {part} "))
            assert "FAILED" not in row
            float(row[len(kind) + len(part) + 2:].split()[0])  # the seconds column
    assert any(line.startswith("tree_shap: result") and "within 1e-4 relative" in line
               for line in lines)
    assert any(line.startswith("cleanup") and "deleted 4 jobs, 4 models, 1 dataset" in line
               for line in lines)
    _assert_server_empty(server)


@pytest.mark.slow
def test_smoke_names_the_kind_and_number_that_differ_and_still_cleans_up(
        server: str, tmp_path: Path) -> None:
    expected = json.loads((ASSETS / "expected.json").read_text())
    true_value = expected["tree_shap"]["mean_abs_shap"]["f2"]
    expected["tree_shap"]["mean_abs_shap"]["f2"] = -true_value
    tampered = tmp_path / "expected.json"
    tampered.write_text(json.dumps(expected))

    done = _smoke(server, "--expected", str(tampered))

    assert done.returncode == 1, done.stdout + done.stderr
    reasons = done.stderr.strip().splitlines()
    assert len(reasons) == 1, done.stderr
    assert reasons[0].startswith("smoke: tree_shap: mean |SHAP| of f2 is 0.38"), reasons[0]
    assert reasons[0].endswith(f"expected {-true_value:.10g} (tol 1e-4 relative)"), reasons[0]
    assert "tree_shap: result" in done.stdout and "FAILED" in done.stdout
    assert "permutation_importance: result" not in done.stdout  # it stopped at the first
    _assert_server_empty(server)


def test_smoke_reports_an_unreachable_server_in_one_line() -> None:
    done = _smoke(f"http://127.0.0.1:{_free_port()}", "--timeout", "10")
    assert done.returncode == 1
    assert done.stderr.strip().startswith("smoke: server: cannot reach http://127.0.0.1:")
    assert len(done.stderr.strip().splitlines()) == 1


def _assert_same(got: Any, want: Any, path: str = "expected") -> None:
    if isinstance(want, dict):
        assert isinstance(got, dict) and sorted(got) == sorted(want), path
        for key in want:
            _assert_same(got[key], want[key], f"{path}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            _assert_same(g, w, f"{path}[{i}]")
    elif isinstance(want, float):
        assert got == pytest.approx(want, rel=1e-9, abs=1e-12), path
    else:
        assert got == want, path


def test_expected_numbers_are_reproduced_from_the_shipped_models() -> None:
    committed = json.loads((ASSETS / "expected.json").read_text())
    _assert_same(compute_expected(ASSETS), committed)


def test_assets_are_small_and_complete() -> None:
    names = {p.name for p in ASSETS.iterdir()}
    assert names >= {"data.csv", "expected.json", *MODEL_FILES.values()}
    assert sum(p.stat().st_size for p in ASSETS.iterdir()) < 300_000
