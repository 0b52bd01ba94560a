"""Cursor pagination over time-ordered ids, newest first (API.md: Lists)."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any, TypeVar

from sqlalchemy import Select
from sqlalchemy.orm import InstrumentedAttribute, Session

from service.errors import BadRequest

T = TypeVar("T")

DEFAULT_LIMIT = 50
MAX_LIMIT = 500


_CURSOR = re.compile(r"^after:([a-z]+_[0-9a-z]{26})$")


def encode_cursor(last_id: str) -> str:
    return base64.urlsafe_b64encode(f"after:{last_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        text = ""
    match = _CURSOR.match(text)
    if match is None:
        raise BadRequest("The cursor is not one this server issued; pass next_cursor from "
                         "the previous page unchanged.", code="invalid_cursor")
    return match.group(1)


def paginate(session: Session, query: Select[Any], id_column: InstrumentedAttribute[str],
             *, limit: int, cursor: str | None) -> tuple[list[Any], str | None]:
    """One page of ``query`` ordered newest first, and the cursor of the next page."""
    if cursor:
        query = query.where(id_column < decode_cursor(cursor))
    rows = list(session.scalars(query.order_by(id_column.desc()).limit(limit + 1)))
    if len(rows) > limit:
        rows = rows[:limit]
        return rows, encode_cursor(getattr(rows[-1], id_column.key))
    return rows, None
