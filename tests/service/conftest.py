"""Fixtures shared by the service tests: settings that register the test-only job kinds
(tests.service.jobs_testkinds), and a client whose jobs a real worker runs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.config import Settings
from service.db import Database
from tests.service.jobs_testkinds import fast_settings, running_worker, with_test_kinds


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The suite's settings, with the test-only kinds registered by every app and worker
    built from them (as TABXAI_EXTRA_KINDS does for a deployment's plug-ins)."""
    return with_test_kinds(settings)


@pytest.fixture
def worker_client(db: Database, settings: Settings, make_client: Any
                  ) -> Iterator[tuple[TestClient, Database]]:
    """A client of an app whose jobs a real worker runs (short leases, fast polling)."""
    fast = fast_settings(settings)
    with running_worker(db, fast):
        yield make_client(**{k: getattr(fast, k) for k in ("lease_seconds",
                                                           "heartbeat_seconds",
                                                           "poll_seconds")}), db
