"""Opaque, time-ordered identifiers with a readable prefix (``ds_…``, ``mdl_…``, ``job_…``).

26 Crockford base-32 characters: 48 bits of milliseconds then 80 random bits, so that
sorting by id sorts by creation time (newest first is ``ORDER BY id DESC``).
"""

from __future__ import annotations

import secrets
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"


def new_id(prefix: str) -> str:
    value = (int(time.time() * 1000) << 80) | secrets.randbits(80)
    chars = []
    for _ in range(26):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return f"{prefix}_{''.join(reversed(chars))}"
