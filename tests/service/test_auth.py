"""Workspaces and API keys: keys hashed, cross-workspace 404, revocation, no-key mode."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

from fastapi.testclient import TestClient
from sqlalchemy import select

from service.auth import create_key, revoke_key
from service.db import Database
from service.tables import ApiKey
from tests.service.test_datasets import CSV, assert_problem


def _key(db: Database, workspace: str) -> tuple[str, str]:
    with db.session() as session:
        key, secret = create_key(session, workspace)
        return key.id, secret


def test_keys_are_stored_hashed(db: Database) -> None:
    key_id, secret = _key(db, "team-a")
    with db.session() as session:
        row = session.scalar(select(ApiKey).where(ApiKey.id == key_id))
        assert row is not None
        assert secret not in (row.key_hash, row.prefix) and len(row.key_hash) == 64
        assert secret.startswith(row.prefix)


def test_no_key_mode_on_loopback_until_a_key_exists(client: TestClient, db: Database) -> None:
    assert client.get("/v1/datasets").status_code == 200
    _key(db, "team-a")
    body = assert_problem(client.get("/v1/datasets"), 401, "unauthorized")
    assert "tabxai keys create" in body["detail"]


def test_required_auth_mode_refuses_anonymous(make_client: Callable[..., TestClient]) -> None:
    client = make_client(auth="required")
    assert_problem(client.get("/v1/datasets"), 401, "unauthorized")


def test_workspaces_do_not_see_each_other(client: TestClient, db: Database) -> None:
    _, key_a = _key(db, "team-a")
    _, key_b = _key(db, "team-b")
    a = {"Authorization": f"Bearer {key_a}"}
    b = {"X-API-Key": key_b}
    ds = client.post("/v1/datasets", files={"file": ("d.csv", CSV)}, headers=a).json()
    assert client.get(f"/v1/datasets/{ds['id']}", headers=a).status_code == 200
    assert_problem(client.get(f"/v1/datasets/{ds['id']}", headers=b), 404, "not_found")
    assert_problem(client.get(f"/v1/datasets/{ds['id']}/rows", headers=b), 404, "not_found")
    assert_problem(client.delete(f"/v1/datasets/{ds['id']}", headers=b), 404, "not_found")
    assert client.get("/v1/datasets", headers=b).json()["items"] == []
    assert [d["id"] for d in client.get("/v1/datasets", headers=a).json()["items"]] == [ds["id"]]


def test_revoked_and_unknown_keys_are_refused(client: TestClient, db: Database) -> None:
    key_id, secret = _key(db, "team-a")
    headers = {"Authorization": f"Bearer {secret}"}
    assert client.get("/v1/datasets", headers=headers).status_code == 200
    with db.session() as session:
        revoke_key(session, key_id)
    assert_problem(client.get("/v1/datasets", headers=headers), 401, "unauthorized")
    assert_problem(client.get("/v1/datasets", headers={"Authorization": "Bearer tbx_nope"}),
                   401, "unauthorized")
    assert_problem(client.get("/v1/datasets", headers={"Authorization": "Basic abc"}),
                   401, "unauthorized")


def test_serve_refuses_a_public_address_without_keys(tmp_path, database_url: str) -> None:  # type: ignore[no-untyped-def]
    env = {**os.environ, "TABXAI_DATA_DIR": str(tmp_path), "TABXAI_DATABASE_URL": database_url}
    proc = subprocess.run(
        [sys.executable, "-m", "service.cli", "serve", "--host", "0.0.0.0", "--port", "0"],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert "refusing to listen on 0.0.0.0 without an API key" in proc.stderr


def test_keys_cli_creates_lists_and_revokes(tmp_path, database_url: str, db: Database) -> None:  # type: ignore[no-untyped-def]
    env = {**os.environ, "TABXAI_DATA_DIR": str(tmp_path), "TABXAI_DATABASE_URL": database_url}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "service.cli", *args], env=env,
                              capture_output=True, text=True, timeout=60)

    created = cli("keys", "create", "--workspace", "ci")
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip().splitlines()[-1]
    assert secret.startswith("tbx_")
    key_id = created.stdout.split()[1]
    listed = cli("keys", "list")
    assert key_id in listed.stdout and "ci" in listed.stdout and secret not in listed.stdout
    assert cli("keys", "revoke", key_id).returncode == 0
    assert "revoked" in cli("keys", "list").stdout
    assert cli("keys", "revoke", "key_nope").returncode == 1


def test_revoking_the_last_key_keeps_keys_required(client: TestClient, db: Database) -> None:
    key_id, secret = _key(db, "team-a")
    with db.session() as session:
        revoke_key(session, key_id)
    body = assert_problem(client.get("/v1/datasets"), 401, "unauthorized")
    assert "tabxai keys create" in body["detail"]
    assert_problem(client.get("/v1/datasets", headers={"X-API-Key": secret}), 401,
                   "unauthorized")
