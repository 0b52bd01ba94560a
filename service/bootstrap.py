"""The first API key of a deployment, made at start-up so that a container can listen
on every address from its first start (``tabxai serve`` refuses to without a key).

Two settings, either or both:

- ``TABXAI_BOOTSTRAP_KEY``: the key itself, chosen by the operator (a CI secret). It is
  created for the workspace ``default`` unless a key with that secret exists already (a
  revoked one stays revoked).
- ``TABXAI_KEY_FILE``: a file that holds the key. When the file exists its key is
  ensured as above; when it does not and the database has no active key, a random key
  is created and written there (mode 600), for ``tabxai smoke`` and for people with
  access to the file.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from sqlalchemy import select

from service.auth import DEFAULT_WORKSPACE, any_active_key, create_key, hash_key
from service.config import Settings
from service.db import Database
from service.tables import ApiKey

log = logging.getLogger("tabxai.bootstrap")

MIN_KEY_CHARS = 32


class BootstrapKeyError(ValueError):
    """The configured key cannot be used; the message says why and what to do."""


def ensure_bootstrap_key(db: Database, settings: Settings) -> str | None:
    """Create the configured first key when it is missing; returns what was done (a
    line for the log, never the secret) or None when nothing was."""
    path = settings.key_file
    # An empty TABXAI_BOOTSTRAP_KEY (compose passes the variable through unset) is none.
    secret = (settings.bootstrap_key.get_secret_value() if settings.bootstrap_key else "") or None
    if secret is None and path is not None and path.is_file():
        secret = path.read_text(encoding="utf-8").strip()
        source = f"the key in {path}"
    else:
        source = "TABXAI_BOOTSTRAP_KEY"
    if secret is not None:
        _check_secret(secret, source)
    with db.session() as session:
        if secret is None:
            if path is None or any_active_key(session):
                return None
            key, secret = create_key(session, DEFAULT_WORKSPACE)
            _write_key_file(path, secret)
            return f"created {key.id} for workspace {DEFAULT_WORKSPACE}; the key is in {path}"
        if session.scalar(select(ApiKey.id).where(ApiKey.key_hash == hash_key(secret))):
            done = None
        else:
            key, _ = create_key(session, DEFAULT_WORKSPACE, secret)
            done = f"created {key.id} for workspace {DEFAULT_WORKSPACE} from {source}"
        if path is not None and not path.exists():
            _write_key_file(path, secret)
        return done


def read_key_file(path: Path | None) -> str | None:
    """The key in ``path``, or None when there is no such file."""
    if path is None or not path.is_file():
        return None
    return path.read_text(encoding="utf-8").strip() or None


def _check_secret(secret: str, source: str) -> None:
    if len(secret) < MIN_KEY_CHARS or any(c.isspace() for c in secret):
        raise BootstrapKeyError(
            f"{source} must be at least {MIN_KEY_CHARS} characters with no spaces, as "
            "anyone who guesses it can use the service; make one with "
            "`python -c 'import secrets; print(\"tbx_\" + secrets.token_urlsafe(32))'`.")


def _write_key_file(path: Path, secret: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as out:
        out.write(secret + "\n")
