"""Migrations: up, down, up on SQLite and PostgreSQL; the tables and migrations agree."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from service.db import Base, Database
from service.migrate import current_revision, downgrade, head_revision, upgrade
from service.schema import import_all_tables
from tests.conftest import PG_URL, drop_postgres_schema, postgres_schema_url

BACKENDS = ["sqlite"] + (["postgresql"] if PG_URL else [])


@pytest.fixture(params=BACKENDS)
def fresh_db(request: pytest.FixtureRequest, tmp_path) -> Iterator[Database]:  # type: ignore[no-untyped-def]
    if request.param == "sqlite":
        db = Database(f"sqlite:///{tmp_path / 'mig.db'}")
        yield db
        db.dispose()
        return
    schema = f"tabxai_mig_{uuid.uuid4().hex[:8]}"
    db = Database(postgres_schema_url(schema))
    yield db
    db.dispose()
    drop_postgres_schema(schema)


def test_upgrade_downgrade_upgrade(fresh_db: Database) -> None:
    upgrade(fresh_db.engine)
    assert current_revision(fresh_db.engine) == head_revision()
    tables = set(inspect(fresh_db.engine).get_table_names())
    assert {"workspaces", "api_keys", "blobs", "blob_chunks", "datasets", "models"} <= tables
    downgrade(fresh_db.engine, "base")
    assert current_revision(fresh_db.engine) is None
    assert set(inspect(fresh_db.engine).get_table_names()) <= {"alembic_version"}
    upgrade(fresh_db.engine)
    assert current_revision(fresh_db.engine) == head_revision()


def test_tables_match_migrations(fresh_db: Database) -> None:
    upgrade(fresh_db.engine)
    import_all_tables()
    with fresh_db.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        diff = compare_metadata(context, Base.metadata)
    assert diff == [], f"models and migrations disagree; write a migration: {diff}"
