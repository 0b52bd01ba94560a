"""Every ORM table module, imported together so the metadata is complete.

Alembic's autogenerate comparison and the migrations test need the whole schema.
"""

from __future__ import annotations

import importlib

TABLE_MODULES = (
    "service.tables",
    "service.catalog.tables",
    "service.jobs.tables",
    "service.results.tables",
)


def import_all_tables() -> None:
    for name in TABLE_MODULES:
        importlib.import_module(name)
