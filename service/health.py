"""Liveness, readiness and metrics endpoints."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

from service.deps import DatabaseDep
from service.errors import RETRY_AFTER_SECONDS, NotReady, problem_responses
from service.metrics import render_metrics
from service.migrate import current_revision, head_revision

router = APIRouter(tags=["service"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get("/readyz", responses=problem_responses(503))
def readyz(db: DatabaseDep) -> dict[str, str | None]:
    """The database is reachable and migrated to the newest revision."""
    try:
        current = current_revision(db.engine)
    except Exception as exc:  # any driver error means "not reachable"
        raise NotReady(f"The database is not reachable ({type(exc).__name__}); the "
                       f"service answers 503 until it is. Check the database server and "
                       f"TABXAI_DATABASE_URL.", code="database_unreachable",
                       headers={"Retry-After": str(RETRY_AFTER_SECONDS)}) from exc
    head = head_revision()
    if current != head:
        raise NotReady(f"The database is at revision {current}, not {head}; run "
                       "`tabxai migrate`.", code="not_migrated")
    return {"status": "ready", "revision": head}


@router.get("/metrics", response_class=PlainTextResponse)
def metrics() -> PlainTextResponse:
    return PlainTextResponse(render_metrics(), media_type="text/plain; version=0.0.4")
