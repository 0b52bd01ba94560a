"""Fuzz a real `tabxai serve` with schemathesis: thousands of generated requests.

    .venv/bin/python -m bench.fuzz                                    # SQLite
    .venv/bin/python -m bench.fuzz --database-url postgresql+psycopg:///test
    make fuzz FUZZ_ARGS="--max-examples 300"

The server runs as its own process on a free port with one worker, a fresh SQLite file
or a schema of its own on PostgreSQL (dropped afterwards), and one API key that every
request carries. Before fuzzing it holds real objects — the smoke test's dataset and
XGBoost model, and a succeeded TreeSHAP job on them — whose ids schemathesis uses for
half of the generated path ids (never for DELETE), so result pages, downloads and
plots are reached, not only 404s. schemathesis runs its
examples, coverage and fuzzing phases over every operation of /openapi.json, valid and
invalid requests alike, with two checks: no 5xx (`not_a_server_error`) and no status
the document does not declare for the operation (`status_code_conformance`). Exit
status: schemathesis's (0 when nothing failed). The server's unhandled errors, if any,
are counted from its log.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.job_queue import _database

ROOT = Path(__file__).resolve().parents[1]
CHECKS = "not_a_server_error,status_code_conformance"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", help="PostgreSQL URL (default: a fresh SQLite file)")
    parser.add_argument("--max-examples", type=int, default=100,
                        help="generated requests per operation and phase (default 100)")
    parser.add_argument("--workers", default="2", help="schemathesis's concurrent clients")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report-dir", type=Path, help="keep schemathesis's JUnit report here")
    parser.add_argument("schemathesis_args", nargs=argparse.REMAINDER,
                        help="after --: more options of `schemathesis run`, e.g. "
                             "--continue-on-failure")
    args = parser.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="tabxai-fuzz-"))
    url, drop = _database(args.database_url, tmp)
    server_log = tmp / "server.log"
    try:
        key = _create_key(url)
        port = _free_port()
        env = {**os.environ, "TABXAI_DATA_DIR": str(tmp / "data"), "TABXAI_DATABASE_URL": url,
               "TABXAI_PORT": str(port), "TABXAI_WORKERS": "1", "TABXAI_WORKER_DEVICE": "cpu",
               "TABXAI_LOG_LEVEL": "WARNING"}
        with open(server_log, "wb") as log:
            server = subprocess.Popen([sys.executable, "-m", "service.cli", "serve"], cwd=ROOT,
                                      env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            base = f"http://127.0.0.1:{port}"
            _wait_ready(base, server)
            config = tmp / "schemathesis.toml"
            config.write_text(_config(_seed_objects(base, key)))
            command = [
                str(Path(sys.executable).with_name("schemathesis")),
                "--config-file", str(config), "run",
                f"{base}/openapi.json", "--header", f"Authorization: Bearer {key}",
                "--checks", CHECKS, "--max-examples", str(args.max_examples),
                "--phases", "examples,coverage,fuzzing", "--workers", args.workers,
                "--seed", str(args.seed), "--generation-database", "none",
                "--request-timeout", "60", "--no-color",
            ]
            if args.report_dir:
                command += ["--report", "junit", "--report-dir", str(args.report_dir)]
            command += [a for a in args.schemathesis_args if a != "--"]
            started = time.monotonic()
            status = subprocess.call(command, cwd=tmp)
            elapsed = time.monotonic() - started
        finally:
            server.terminate()
            server.wait(30)
        unhandled = server_log.read_text(errors="replace").count("unhandled error")
        print(f"fuzz: database {'postgresql' if args.database_url else 'sqlite'}, "
              f"{elapsed:.0f} s, schemathesis exit {status}, "
              f"{unhandled} unhandled server errors (log: {server_log})")
        return status or (1 if unhandled else 0)
    finally:
        drop()
        if not server_log.exists() or "unhandled error" not in server_log.read_text(
                errors="replace"):
            shutil.rmtree(tmp, ignore_errors=True)


def _seed_objects(base: str, key: str) -> dict[str, str]:
    """Upload the smoke dataset and model and run a TreeSHAP job; their ids by name."""
    from service.smoke.runner import ASSETS, TARGET

    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"},
                      timeout=60) as client:
        dataset = client.post("/v1/datasets", data={"target": TARGET, "name": "fuzz"},
                              files={"file": ("data.csv", (ASSETS / "data.csv").read_bytes())})
        model = client.post("/v1/models", files={
            "file": ("xgboost.json", (ASSETS / "xgboost.json").read_bytes())})
        dataset.raise_for_status()
        model.raise_for_status()
        ids = {"dataset_id": dataset.json()["id"], "model_id": model.json()["id"]}
        job = client.post("/v1/jobs", json={"kind": "tree_shap", "params": {"interactions": True},
                                            "model_id": ids["model_id"],
                                            "dataset_id": ids["dataset_id"]})
        job.raise_for_status()
        ids["job_id"] = job.json()["id"]
        deadline = time.monotonic() + 300
        while (status := client.get(f"/v1/jobs/{ids['job_id']}").json()["status"]) in (
                "queued", "running"):
            if time.monotonic() > deadline:
                raise SystemExit("the seed job did not finish in 300 s")
            time.sleep(0.5)
        if status != "succeeded":
            raise SystemExit(f"the seed job ended {status}")
    return ids


def _config(ids: dict[str, str]) -> str:
    """schemathesis.toml: real ids for half of the path ids, made-up ones for DELETE."""
    real = {**ids, "name": ["shap_values", "row_index", "interaction_values", "summary",
                            "importance", "interactions"]}
    lines = []
    for name, values in real.items():
        quoted = ", ".join(f'"{v}"' for v in ([values] if isinstance(values, str) else values))
        lines += [f"[dictionaries.{name}]", f"values = [{quoted}]", ""]
    lines += ["[dictionaries.absent]", 'values = ["ds_0", "mdl_0", "job_0"]', "", "[parameters]"]
    lines += [f'"path.{name}" = {{ dictionary = "{name}", probability = 0.5 }}' for name in real]
    lines += [f'"body.{name}" = {{ dictionary = "{name}", probability = 0.5 }}'
              for name in ("dataset_id", "model_id")]
    lines += ["", "[[operations]]", 'include-method = "DELETE"', "[operations.parameters]"]
    lines += [f'"path.{name}" = {{ dictionary = "absent", probability = 0.5 }}'
              for name in ids]
    return "\n".join(lines) + "\n"


def _create_key(url: str) -> str:
    from service.auth import create_key
    from service.db import Database
    from service.migrate import upgrade

    db = Database(url)
    try:
        upgrade(db.engine)
        with db.session() as session:
            return create_key(session, "fuzz")[1]
    finally:
        db.dispose()


def _wait_ready(base: str, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"tabxai serve exited with {server.returncode}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise SystemExit("tabxai serve did not become ready in 120 s")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


if __name__ == "__main__":
    raise SystemExit(main())
