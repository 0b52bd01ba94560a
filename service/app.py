"""create_app(): the FastAPI application with its routers, error handlers and lifespan."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from service import health
from service.catalog import endpoints as catalog_endpoints
from service.config import Settings
from service.db import Database
from service.docs_ui import install_docs
from service.errors import install_error_handlers
from service.jobs import endpoints as jobs_endpoints
from service.jobs.kinds import load_kind_modules
from service.metrics import install_metrics
from service.migrate import upgrade
from service.results import endpoints as results_endpoints

DESCRIPTION = """Explain tabular machine-learning models: upload a table and a trained
model, then ask for exact TreeSHAP, permutation importance, Feature Vectors or
Rashomon-set interaction scores. Errors are RFC 9457 problem documents."""


def create_app(settings: Settings | None = None, *, migrate: bool = True) -> FastAPI:
    """The application. ``migrate`` runs the migrations at start-up (the default)."""
    settings = settings or Settings()
    settings.ensure_dirs()
    db = Database(settings.resolved_database_url)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if migrate:
            upgrade(db.engine)
        # The job kinds import the numerical libraries (seconds); warm them up in the
        # background so the first POST /v1/jobs does not pay for it.
        threading.Thread(target=load_kind_modules, name="load-job-kinds", daemon=True).start()
        yield
        db.dispose()

    # The documentation pages are served with local assets (service.docs_ui), not
    # FastAPI's, which load them from a CDN.
    app = FastAPI(title="tabxai", version="1", description=DESCRIPTION, lifespan=lifespan,
                  docs_url=None, redoc_url=None)
    app.state.settings = settings
    app.state.db = db
    install_error_handlers(app)
    install_metrics(app)
    app.include_router(health.router)
    app.include_router(catalog_endpoints.router)
    app.include_router(jobs_endpoints.router)
    app.include_router(results_endpoints.router)
    install_docs(app)
    return app
