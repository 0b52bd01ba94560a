"""Alembic environment: runs against the engine handed over by service.migrate."""

from __future__ import annotations

from alembic import context
from sqlalchemy import text

from service.db import Base, create_db_engine
from service.schema import import_all_tables

import_all_tables()
target_metadata = Base.metadata
config = context.config

# Serialize concurrent start-ups (API and workers migrating at once) on PostgreSQL.
_ADVISORY_LOCK = 7_461_227_351


def run_migrations_online() -> None:
    engine = config.attributes.get("engine")
    if engine is None:
        url = config.get_main_option("sqlalchemy.url")
        if not url:
            raise SystemExit("Set sqlalchemy.url, or run `tabxai migrate`.")
        engine = create_db_engine(url)
    with engine.connect() as connection:
        is_pg = connection.dialect.name == "postgresql"
        if is_pg:
            connection.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _ADVISORY_LOCK})
            connection.commit()
        try:
            context.configure(
                connection=connection,
                target_metadata=target_metadata,
                render_as_batch=connection.dialect.name == "sqlite",
                compare_type=True,
                user_module_prefix="",
            )
            with context.begin_transaction():
                context.run_migrations()
            connection.commit()
        finally:
            if is_pg:
                connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _ADVISORY_LOCK})
                connection.commit()


if context.is_offline_mode():
    raise SystemExit("Offline migrations are not supported; run `tabxai migrate`.")
run_migrations_online()
