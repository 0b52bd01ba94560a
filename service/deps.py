"""FastAPI dependencies, declared once as ``Annotated`` aliases."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from service.auth import CurrentWorkspace, authenticate
from service.config import Settings
from service.db import Database


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_database(request: Request) -> Database:
    return request.app.state.db


def get_session(db: Annotated[Database, Depends(get_database)]) -> Iterator[Session]:
    """The request's one transaction: committed when the endpoint succeeds."""
    with db.session() as session:
        yield session


def get_read_session(db: Annotated[Database, Depends(get_database)]) -> Iterator[Session]:
    """A read-only transaction (on SQLite it takes no lock, so nothing waits on it)."""
    with db.session(readonly=True) as session:
        yield session


SettingsDep = Annotated[Settings, Depends(get_settings)]
DatabaseDep = Annotated[Database, Depends(get_database)]
# scope="function": the transaction ends before the response is sent, so a failed commit
# is the response (a 503 when the database went away) instead of an error after a 2xx.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
ReadSessionDep = Annotated[Session, Depends(get_read_session, scope="function")]


def get_workspace(request: Request, db: DatabaseDep, settings: SettingsDep
                  ) -> CurrentWorkspace:
    # A transaction of its own: an upload must not hold one open while its body streams.
    with db.session() as session:
        return authenticate(request, session, settings)


WorkspaceDep = Annotated[CurrentWorkspace, Depends(get_workspace)]
