"""Fixtures shared by the whole suite: real databases and the real app over HTTP.

Every service test runs on SQLite; when ``TABXAI_TEST_DATABASE_URL`` is set (CI sets it
to a real PostgreSQL) it runs again on PostgreSQL, in a schema of its own.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import inspect, text
from sqlalchemy.engine import make_url

from service.app import create_app
from service.config import Settings
from service.db import Base, Database, create_db_engine
from service.migrate import upgrade
from service.schema import import_all_tables

# Real model files of every format, trained small and seeded (fixture saved_models).
pytest_plugins = ["tests.model_files"]

PG_URL = os.environ.get("TABXAI_TEST_DATABASE_URL")
BACKENDS = ["sqlite"] + (["postgresql"] if PG_URL else [])


def postgres_schema_url(schema: str) -> str:
    """The PostgreSQL test URL with ``schema`` first on the search path (created if new)."""
    assert PG_URL
    engine = create_db_engine(PG_URL)
    with engine.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
    engine.dispose()
    url = make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    return url.render_as_string(hide_password=False)


def drop_postgres_schema(schema: str) -> None:
    assert PG_URL
    engine = create_db_engine(PG_URL)
    with engine.begin() as connection:
        connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    engine.dispose()


@pytest.fixture(scope="session", params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[str]:
    """A migrated database for the session: SQLite, then PostgreSQL when configured."""
    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("db") / "tabxai.db"
        url = f"sqlite:///{path}"
        schema = None
    else:
        schema = f"tabxai_test_{uuid.uuid4().hex[:8]}"
        url = postgres_schema_url(schema)
    db = Database(url)
    upgrade(db.engine)
    db.dispose()
    yield url
    if schema:
        drop_postgres_schema(schema)


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    """The session's database, emptied after each test."""
    database = Database(database_url)
    yield database
    import_all_tables()
    existing = set(inspect(database.engine).get_table_names())
    with database.session() as session:
        for table in reversed(Base.metadata.sorted_tables):
            if table.name in existing:
                session.execute(table.delete())
    database.dispose()


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", database_url=database_url)


@pytest.fixture
def make_client(db: Database, settings: Settings) -> Iterator[Callable[..., TestClient]]:
    """Build a client of the real app; keyword arguments override settings."""
    clients: list[TestClient] = []

    def build(**overrides: Any) -> TestClient:
        app = create_app(settings.model_copy(update=overrides), migrate=False)
        client = TestClient(app, raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return client

    yield build
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Say how many tests ran on each database, so a CI log shows PostgreSQL really ran."""
    counts: dict[str, dict[str, int]] = {}
    for outcome in ("passed", "failed", "error", "skipped"):
        for report in terminalreporter.stats.get(outcome, []):
            nodeid = getattr(report, "nodeid", "")
            for backend in ("sqlite", "postgresql"):
                if f"[{backend}" in nodeid or f"-{backend}]" in nodeid or f"-{backend}-" in nodeid:
                    per = counts.setdefault(backend, {})
                    per[outcome] = per.get(outcome, 0) + 1
    if not counts:
        return
    terminalreporter.section("database backends")
    for backend in BACKENDS:
        per = counts.get(backend, {})
        summary = ", ".join(f"{n} {outcome}" for outcome, n in sorted(per.items()))
        terminalreporter.write_line(f"{backend}: {summary or 'no tests'}")
    if not PG_URL:
        terminalreporter.write_line("postgresql: not configured (set TABXAI_TEST_DATABASE_URL)")
