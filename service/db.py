"""The database: engine, the one session scope that commits or rolls back, the ORM base.

SQLite (the embedded default) and PostgreSQL behave the same from the callers' side.
On SQLite, transactions are opened explicitly: ``Database.session()`` begins with
``BEGIN IMMEDIATE``, so a transaction that reads and then writes waits for the write
lock up front (busy_timeout) instead of failing with "database is locked" when another
connection wrote in between, which is what a deferred transaction does in WAL mode.
``session(readonly=True)`` begins a plain deferred transaction for pure readers.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, Engine, MetaData, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

from service.errors import InvalidText

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on both databases (SQLite keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime stored; use service.db.utcnow()")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


def create_db_engine(url: str | URL, **kwargs: Any) -> Engine:
    """An engine with the settings each backend needs (WAL and FKs on SQLite)."""
    url = make_url(url)
    if url.get_backend_name() == "sqlite":
        engine = create_engine(
            url, connect_args={"timeout": 30, "check_same_thread": False}, **kwargs
        )
        _configure_sqlite(engine)
    else:
        engine = create_engine(url, pool_pre_ping=True, **kwargs)
    event.listen(engine, "before_cursor_execute", _refuse_nul_text)
    return engine


def _refuse_nul_text(connection: Any, cursor: Any, statement: str, parameters: Any,
                     context: Any, executemany: bool) -> None:
    """Refuse text holding a NUL character on both databases alike: PostgreSQL can
    neither store nor compare it (the driver raises), and SQLite would keep it."""
    for row in parameters if executemany else (parameters,):
        values = row.values() if isinstance(row, Mapping) else row or ()
        for value in values:
            if isinstance(value, str) and "\x00" in value:
                raise InvalidText(
                    "No id, name or other text may contain a NUL (0x00) character; "
                    "remove it and send the request again.")


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Hand transaction control to SQLAlchemy's "begin" event below.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        immediate = connection.get_execution_options().get("sqlite_immediate", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


class Database:
    """An engine and its session factory; ``session()`` is the one transaction owner."""

    def __init__(self, url: str | URL, **engine_kwargs: Any) -> None:
        self.engine = create_db_engine(url, **engine_kwargs)
        writer = (self.engine.execution_options(sqlite_immediate=True)
                  if self.engine.dialect.name == "sqlite" else self.engine)
        self._sessions = sessionmaker(writer, expire_on_commit=False)
        self._read_sessions = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @contextmanager
    def session(self, *, readonly: bool = False) -> Iterator[Session]:
        """A session whose transaction commits when the block succeeds, else rolls back.

        readonly: for transactions that never write (on SQLite they then take no lock).
        """
        with (self._read_sessions if readonly else self._sessions)() as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    def dispose(self) -> None:
        self.engine.dispose()
