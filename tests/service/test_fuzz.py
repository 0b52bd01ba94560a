"""Schemathesis over the app's own OpenAPI document, in-process (ASGI): every operation
gets a few valid and a few invalid generated requests, with a valid key. No request may
get a 5xx, and every status must be one the document declares for that operation.

``make fuzz`` (bench/fuzz.py) runs the same checks with thousands of cases against a
real server.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings

from service.auth import create_key
from service.db import Database

schemathesis = pytest.importorskip("schemathesis", reason="needs schemathesis (dev extra)")
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import status_code_conformance  # noqa: E402

EXAMPLES_PER_MODE = 10
CHECKS = [not_a_server_error, status_code_conformance]


def test_no_server_errors_and_only_documented_statuses(
        make_client: Callable[..., TestClient], db: Database) -> None:
    with db.session() as session:
        key = create_key(session, "fuzz")[1]
    client = make_client()
    spec = client.get("/openapi.json").json()
    schema = schemathesis.openapi.from_asgi("/openapi.json", client.app)
    failures: list[str] = []
    n_operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        n_operations += 1
        method, path = operation.label.split(" ", 1)
        modes = [GenerationMode.POSITIVE]
        if _can_be_invalid(spec["paths"][path][method.lower()]):
            modes.append(GenerationMode.NEGATIVE)
        for mode in modes:
            try:
                _fuzz(operation.as_strategy(generation_mode=mode), key)
            except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 - gather them all
                failures.append(f"{operation.label} ({mode.value}): {exc}")
    assert n_operations >= 20
    assert not failures, "\n\n".join(failures)


def _can_be_invalid(operation: dict[str, Any]) -> bool:
    """Whether a request can break the schema (every string is a valid path id)."""
    return "requestBody" in operation or any(
        p["in"] != "path" or p["schema"].get("type") != "string"
        for p in operation.get("parameters", []))


def _fuzz(strategy: Any, key: str) -> None:
    @given(case=strategy)
    @settings(max_examples=EXAMPLES_PER_MODE, deadline=None, database=None,
              derandomize=True, suppress_health_check=list(HealthCheck))
    def run(case: Any) -> None:
        case.call_and_validate(headers={"Authorization": f"Bearer {key}"}, checks=CHECKS)

    run()
