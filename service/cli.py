"""The `tabxai` command: serve, worker, migrate, keys, smoke."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from service.config import Settings

if TYPE_CHECKING:
    from service.db import Database


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tabxai", description="Explain tabular ML models.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the API (and workers beside it)")
    serve.add_argument("--host", help="address to listen on (TABXAI_HOST)")
    serve.add_argument("--port", type=int, help="port (TABXAI_PORT)")
    serve.set_defaults(func=_serve)

    worker = sub.add_parser("worker", help="run a job worker until SIGTERM/SIGINT")
    worker.add_argument("--concurrency", type=int, default=1,
                        help="jobs run at once, each in its own process (default 1)")
    worker.add_argument("--device", choices=["auto", "cpu", "cuda"],
                        help="auto: cuda when a GPU is present (TABXAI_WORKER_DEVICE)")
    # Given by `tabxai serve` to the workers it starts: they stop when it dies.
    worker.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)
    worker.set_defaults(func=_worker)

    migrate = sub.add_parser("migrate", help="bring the database schema up to date")
    migrate.set_defaults(func=_migrate)

    keys = sub.add_parser("keys", help="manage API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="create a key (printed once)")
    create.add_argument("--workspace", required=True, help="workspace name")
    create.set_defaults(func=_keys_create)
    listing = keys_sub.add_parser("list", help="list keys (never their secrets)")
    listing.set_defaults(func=_keys_list)
    revoke = keys_sub.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("key_id")
    revoke.set_defaults(func=_keys_revoke)

    smoke = sub.add_parser(
        "smoke", help="check a running tabxai end to end (for CI); deletes what it makes",
        description="Upload a small dataset and four small models that ship with tabxai, "
                    "run every job kind, check the numbers, downloads and plots, then delete "
                    "everything it made. Exits 1 with a one-line reason on the first failure.")
    smoke.add_argument("url", help="base URL of the server, e.g. http://127.0.0.1:8000")
    smoke.add_argument("--key", help="API key, sent as Authorization: Bearer; default the "
                       "key in TABXAI_KEY_FILE when that is set")
    smoke.add_argument("--timeout", type=float, default=300.0,
                       help="seconds for the whole run (default 300)")
    # Another expected.json (the tests pass a tampered one to see the failure path).
    smoke.add_argument("--expected", type=Path, help=argparse.SUPPRESS)
    smoke.set_defaults(func=_smoke)

    args = parser.parse_args(argv)
    settings = Settings()
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    return int(args.func(args, settings) or 0)


def _database(settings: Settings) -> Database:
    from service.db import Database

    settings.ensure_dirs()
    return Database(settings.resolved_database_url)


def _migrate(args: argparse.Namespace, settings: Settings) -> int:
    from service.migrate import upgrade

    db = _database(settings)
    upgrade(db.engine)
    print("database is up to date")
    return _bootstrap_key(db, settings)


def _bootstrap_key(db: Database, settings: Settings) -> int:
    """TABXAI_BOOTSTRAP_KEY / TABXAI_KEY_FILE: the deployment's first key (service.bootstrap)."""
    from service.bootstrap import BootstrapKeyError, ensure_bootstrap_key

    try:
        done = ensure_bootstrap_key(db, settings)
    except BootstrapKeyError as exc:
        print(f"tabxai: {exc}", file=sys.stderr)
        return 2
    if done:
        print(done)
    return 0


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from service.app import create_app
    from service.auth import any_active_key
    from service.migrate import upgrade
    from service.registry import KindRegistryError

    updates = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    settings = settings.model_copy(update=updates)
    # First the job kinds (TABXAI_EXTRA_KINDS): a plug-in that is missing stops the
    # command before it touches the database.
    try:
        app = create_app(settings, migrate=False)
    except KindRegistryError as exc:
        print(f"tabxai: {exc}", file=sys.stderr)
        return 2
    db = _database(settings)
    upgrade(db.engine)
    if _bootstrap_key(db, settings):
        return 2
    with db.session() as session:
        has_key = any_active_key(session)
    if not settings.on_loopback and not has_key:
        print(
            f"tabxai: refusing to listen on {settings.host} without an API key: anyone who "
            "can reach it could use it. Create a key first with `tabxai keys create "
            "--workspace NAME` (or set TABXAI_BOOTSTRAP_KEY or TABXAI_KEY_FILE), or listen "
            "on 127.0.0.1.",
            file=sys.stderr,
        )
        return 2
    db.dispose()
    workers = _start_workers(settings)
    # uvicorn shuts down gracefully on SIGTERM, then restores the previous handler and
    # raises the signal again; with the default handler the process would die there and
    # leave its workers running. This handler turns it into an exit that stops them.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        uvicorn.run(app, host=settings.host, port=settings.port, log_level="info")
    finally:
        _stop_workers(workers)
    return 0


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _worker(args: argparse.Namespace, settings: Settings) -> int:
    from service.jobs.worker import run_worker
    from service.registry import KindRegistryError
    from service.startup import method_registry

    if args.concurrency < 1:
        print("tabxai: --concurrency must be at least 1", file=sys.stderr)
        return 2
    # The kinds are registered here, at start-up, and handed to the worker: the job
    # system knows the registry, not the methods.
    try:
        kinds = method_registry(settings)
    except KindRegistryError as exc:
        print(f"tabxai: {exc}", file=sys.stderr)
        return 2
    return run_worker(settings, kinds, concurrency=args.concurrency,
                      device=args.device or settings.worker_device,
                      parent_pid=args.parent_pid)


def _start_workers(settings: Settings) -> list[subprocess.Popen[bytes]]:
    """Start TABXAI_WORKERS worker processes beside the API, with the same settings.

    They stop (giving their jobs back) when this process dies, even by SIGKILL.
    """
    env = {**os.environ, "TABXAI_DATA_DIR": str(settings.data_dir),
           "TABXAI_DATABASE_URL": settings.resolved_database_url,
           "TABXAI_EXTRA_KINDS": ",".join(settings.extra_kinds)}
    command = [sys.executable, "-m", "service.cli", "worker",
               "--device", settings.worker_device, "--parent-pid", str(os.getpid())]
    return [subprocess.Popen(command, env=env) for _ in range(settings.workers)]


def _stop_workers(workers: list[subprocess.Popen[bytes]]) -> None:
    # SIGTERM gives their jobs back to the queue; a worker that hangs is killed.
    for process in workers:
        if process.poll() is None:
            process.terminate()
    for process in workers:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _keys_create(args: argparse.Namespace, settings: Settings) -> int:
    from service.auth import create_key
    from service.migrate import upgrade

    db = _database(settings)
    upgrade(db.engine)
    with db.session() as session:
        key, secret = create_key(session, args.workspace)
        key_id = key.id
    print(f"created {key_id} for workspace {args.workspace}; the key is shown once:")
    print(secret)
    return 0


def _keys_list(args: argparse.Namespace, settings: Settings) -> int:
    from service.auth import list_keys

    db = _database(settings)
    with db.session() as session:
        for key, workspace in list_keys(session):
            state = f"revoked {key.revoked_at:%Y-%m-%dT%H:%M:%SZ}" if key.revoked_at else "active"
            print(f"{key.id}\t{workspace}\t{key.prefix}…\t{state}")
    return 0


def _keys_revoke(args: argparse.Namespace, settings: Settings) -> int:
    from service.auth import revoke_key
    from service.errors import NotFound

    db = _database(settings)
    try:
        with db.session() as session:
            revoke_key(session, args.key_id)
    except NotFound as exc:
        print(f"tabxai: {exc.detail}", file=sys.stderr)
        return 1
    print(f"revoked {args.key_id}")
    return 0


def _smoke(args: argparse.Namespace, settings: Settings) -> int:
    from service.smoke.runner import run_smoke

    if not args.timeout > 0:
        print("tabxai: --timeout must be positive", file=sys.stderr)
        return 2
    from service.bootstrap import read_key_file

    key = args.key or read_key_file(settings.key_file)
    report = run_smoke(args.url, key=key, timeout_s=args.timeout,
                       expected_path=args.expected)
    print(report.table(), flush=True)
    if report.failure:
        print(f"smoke: {report.failure}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
