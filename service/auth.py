"""API keys and the workspace every request acts in.

Keys are random 256-bit secrets shown once; only their SHA-256 is stored (a slow hash
buys nothing for secrets with this much entropy). A key belongs to one workspace.
Auth is off only when the server listens on loopback, ``TABXAI_AUTH=auto`` and no key
has ever been created; requests then act in the workspace ``default``. A revoked key
keeps its row (``revoked_at`` set), so revoking the last key does not open the API again.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from fastapi import Request
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.config import Settings
from service.db import utcnow
from service.errors import NotFound, Unauthorized
from service.ids import new_id
from service.tables import ApiKey, Workspace

KEY_PREFIX = "tbx_"
DEFAULT_WORKSPACE = "default"


@dataclass(frozen=True)
class CurrentWorkspace:
    id: str
    name: str


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def get_or_create_workspace(session: Session, name: str) -> Workspace:
    workspace = session.scalar(select(Workspace).where(Workspace.name == name))
    if workspace is None:
        workspace = Workspace(id=new_id("ws"), name=name)
        session.add(workspace)
        session.flush()
    return workspace


def create_key(session: Session, workspace_name: str, secret: str | None = None
               ) -> tuple[ApiKey, str]:
    """Create a key for ``workspace_name`` (created if new); returns the row and the secret.

    secret: the key itself, chosen by the operator (TABXAI_BOOTSTRAP_KEY); default a new
    random one.
    """
    workspace = get_or_create_workspace(session, workspace_name)
    secret = secret or KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(id=new_id("key"), workspace_id=workspace.id, prefix=secret[:12],
                 key_hash=hash_key(secret))
    session.add(key)
    session.flush()
    return key, secret


def list_keys(session: Session) -> list[tuple[ApiKey, str]]:
    rows = session.execute(
        select(ApiKey, Workspace.name).join(Workspace, Workspace.id == ApiKey.workspace_id)
        .order_by(ApiKey.id)
    ).all()
    return [(key, name) for key, name in rows]


def revoke_key(session: Session, key_id: str) -> ApiKey:
    key = session.get(ApiKey, key_id)
    if key is None:
        raise NotFound(f"There is no API key {key_id}; `tabxai keys list` shows them.")
    if key.revoked_at is None:
        key.revoked_at = utcnow()
    return key


def any_active_key(session: Session) -> bool:
    return session.scalar(select(ApiKey.id).where(ApiKey.revoked_at.is_(None)).limit(1)) \
        is not None


def any_key_ever(session: Session) -> bool:
    """Whether a key was ever created, revoked ones included: from then on keys are
    required, so revoking the last key locks the API rather than opening it."""
    return session.scalar(select(ApiKey.id).limit(1)) is not None


def authenticate(request: Request, session: Session, settings: Settings) -> CurrentWorkspace:
    """Resolve the request's workspace from its key, or refuse it."""
    presented = _presented_key(request)
    if presented is None:
        if settings.auth == "auto" and settings.on_loopback and not any_key_ever(session):
            workspace = get_or_create_workspace(session, DEFAULT_WORKSPACE)
            return CurrentWorkspace(workspace.id, workspace.name)
        raise Unauthorized(
            "This server needs an API key: send 'Authorization: Bearer <key>' (or "
            "'X-API-Key: <key>'); an operator creates one with `tabxai keys create "
            "--workspace NAME`.",
            headers={"WWW-Authenticate": "Bearer"},
        )
    row = session.execute(
        select(ApiKey, Workspace)
        .join(Workspace, Workspace.id == ApiKey.workspace_id)
        .where(ApiKey.key_hash == hash_key(presented))
    ).first()
    if row is None or row[0].revoked_at is not None:
        raise Unauthorized(
            "The API key is unknown or revoked; ask an operator for a valid key.",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return CurrentWorkspace(row[1].id, row[1].name)


def _presented_key(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise Unauthorized("Send the key as 'Authorization: Bearer <key>'.",
                               headers={"WWW-Authenticate": "Bearer"})
        return value.strip()
    api_key = request.headers.get("x-api-key")
    return api_key.strip() if api_key else None
