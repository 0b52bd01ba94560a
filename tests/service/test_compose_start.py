"""The start-up path of docker-compose.yml, run as real processes without Docker.

The test reads docker-compose.yml and the Dockerfile, gives each service's command the
environment the container would have (the image's ENV, then the service's, with
``${VAR:-default}`` as Compose resolves it with nothing set), points the database at the
test's (an empty one: no key yet) and the container paths at a temporary folder, then
runs `migrate`, the `api` and a `worker`, and the README's CI recipe's smoke command as
`docker compose exec -T api` would run it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.db import Database

yaml = pytest.importorskip("yaml", reason="PyYAML (the dev extra) reads docker-compose.yml")

ROOT = Path(__file__).resolve().parents[2]
CONTAINER_DATA = "/var/lib/tabxai"
KEY = "tbx_" + "k" * 40


def _image_env() -> dict[str, str]:
    """TABXAI_* of the final stage's ENV instruction in the Dockerfile."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    final = text[text.rindex("\nFROM "):]
    env: dict[str, str] = {}
    for line in final.splitlines():
        if line.startswith("ENV "):
            env.update(re.findall(r"(TABXAI_\w+)=(\S+)", line))
    return env


def _resolve(value: Any, outside: dict[str, str]) -> str:
    def sub(match: re.Match[str]) -> str:
        return outside.get(match.group(1)) or match.group(2)
    return re.sub(r"\$\{(\w+):-([^}]*)\}", sub, str(value))


def _service(name: str, *, tmp: Path, database_url: str, port: int,
             outside: dict[str, str] | None = None) -> tuple[list[str], dict[str, str]]:
    """The command and environment of a compose service, mapped onto this machine."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    service = compose["services"][name]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TABXAI_")}
    declared = {**_image_env(), **{k: _resolve(v, outside or {})
                                   for k, v in service.get("environment", {}).items()}}
    for key, value in declared.items():
        env[key] = value.replace(CONTAINER_DATA, str(tmp))
    # The container's database host and port are this test's.
    assert declared["TABXAI_DATABASE_URL"].startswith("postgresql+psycopg://")
    env.update(TABXAI_DATABASE_URL=database_url, TABXAI_PORT=str(port),
               TABXAI_POLL_SECONDS="0.1", TABXAI_LOG_LEVEL="WARNING")
    command = service["command"]
    assert command[0] == "tabxai"
    return [sys.executable, "-m", "service.cli", *command[1:]], env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _status(url: str, key: str | None = None) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"}
                                     if key else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


class _Processes:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.running: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = (self.tmp / f"{name}.log").open("wb")
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        self.running.append((name, process))
        return process

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    def stop(self) -> None:
        for _, process in self.running:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for _, process in self.running:
            try:
                process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@pytest.fixture
def processes(tmp_path: Path, db: Database) -> Iterator[_Processes]:
    """Processes the test starts, stopped at its end (``db`` empties the database)."""
    running = _Processes(tmp_path)
    yield running
    running.stop()


def _wait_ready(processes: _Processes, api: subprocess.Popen[bytes], url: str) -> None:
    deadline = time.monotonic() + 90
    while True:
        if api.poll() is not None:
            pytest.fail(f"the api exited with {api.returncode}:\n{processes.log('api')}")
        try:
            if _status(f"{url}/readyz") == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"the api was not ready in 90 s:\n{processes.log('api')}")
        time.sleep(0.2)


def _readme_smoke_command() -> list[str]:
    """The smoke line of the README's CI recipe, as `docker compose exec -T api` runs it."""
    readme = (ROOT / "README.md").read_text()
    recipe = readme[readme.index("## Use in CI"):]
    line = next(line for line in recipe.splitlines()
                if line.startswith("docker compose exec -T api tabxai smoke"))
    assert "up -d" in recipe and "--key" not in line
    return line.split(" api ", 1)[1].split()


@pytest.mark.slow
def test_first_compose_up_comes_up_healthy_and_the_ci_recipe_passes(
        processes: _Processes, tmp_path: Path, database_url: str) -> None:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    command, env = _service("migrate", tmp=tmp_path, database_url=database_url, port=port)
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    key_file = Path(env["TABXAI_KEY_FILE"])
    key = key_file.read_text().strip()
    assert key.startswith("tbx_") and key not in done.stdout  # the secret is not logged
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600

    command, api_env = _service("api", tmp=tmp_path, database_url=database_url, port=port)
    assert api_env["TABXAI_HOST"] == "0.0.0.0"
    api = processes.start("api", command, api_env)
    _wait_ready(processes, api, url)
    assert _status(f"{url}/v1/datasets") == 401
    assert _status(f"{url}/v1/datasets", key) == 200

    command, worker_env = _service("worker", tmp=tmp_path, database_url=database_url,
                                   port=port)
    processes.start("worker", command, worker_env)
    smoke = _readme_smoke_command()
    assert smoke[:2] == ["tabxai", "smoke"]
    target = smoke[2].replace("localhost:8000", f"127.0.0.1:{port}")
    done = subprocess.run([sys.executable, "-m", "service.cli", "smoke", target, *smoke[3:]],
                          cwd=ROOT, env=api_env, capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stdout + done.stderr + processes.log("worker")

    # A restart (`docker compose up -d` again) keeps the one key.
    command, env = _service("migrate", tmp=tmp_path, database_url=database_url, port=port)
    again = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=120)
    assert again.returncode == 0 and "created" not in again.stdout, again.stdout
    assert key_file.read_text().strip() == key


def test_a_chosen_bootstrap_key_is_the_key(processes: _Processes, tmp_path: Path,
                                           database_url: str) -> None:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    outside = {"TABXAI_BOOTSTRAP_KEY": KEY}
    command, env = _service("migrate", tmp=tmp_path, database_url=database_url, port=port,
                            outside=outside)
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "created key_" in done.stdout and KEY not in done.stdout
    assert Path(env["TABXAI_KEY_FILE"]).read_text().strip() == KEY
    command, api_env = _service("api", tmp=tmp_path, database_url=database_url, port=port)
    api = processes.start("api", command, api_env)
    _wait_ready(processes, api, url)
    assert _status(f"{url}/v1/datasets", KEY) == 200
    assert _status(f"{url}/v1/datasets", KEY[:-1] + "x") == 401
    listing = subprocess.run([sys.executable, "-m", "service.cli", "keys", "list"], cwd=ROOT,
                             env=api_env, capture_output=True, text=True, timeout=60)
    assert listing.stdout.count("key_") == 1, listing.stdout


def test_a_weak_bootstrap_key_is_refused_with_what_to_do(tmp_path: Path, database_url: str,
                                                         db: Database) -> None:
    command, env = _service("migrate", tmp=tmp_path, database_url=database_url,
                            port=_free_port(), outside={"TABXAI_BOOTSTRAP_KEY": "secret"})
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2
    assert "at least 32 characters" in done.stderr and "token_urlsafe" in done.stderr
    assert not Path(env["TABXAI_KEY_FILE"]).exists()


def test_serve_alone_with_a_bootstrap_key_listens_everywhere(
        processes: _Processes, tmp_path: Path, database_url: str) -> None:
    """`docker run -e TABXAI_BOOTSTRAP_KEY=… tabxai` (the image's CMD, no migrate step)."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TABXAI_")}
    env.update({k: v.replace(CONTAINER_DATA, str(tmp_path)) for k, v in _image_env().items()})
    env.update(TABXAI_DATABASE_URL=database_url, TABXAI_PORT=str(port), TABXAI_WORKERS="0",
               TABXAI_BOOTSTRAP_KEY=KEY)
    assert env["TABXAI_HOST"] == "0.0.0.0"
    api = processes.start("api", [sys.executable, "-m", "service.cli", "serve"], env)
    _wait_ready(processes, api, f"http://127.0.0.1:{port}")
    body = json.dumps({"kind": "nope", "dataset_id": "ds_x"}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/jobs", data=body,
                                     headers={"Authorization": f"Bearer {KEY}",
                                              "Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code in (404, 422)  # authenticated: the body is what is refused
