"""create_app(): the FastAPI application with its routers, error handlers and lifespan."""

from __future__ import annotations

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
from service.jobs import result_endpoints
from service.metrics import install_metrics
from service.migrate import upgrade
from service.startup import method_registry

DESCRIPTION = """Explain tabular machine-learning models: upload a table and a trained
model, then ask for exact TreeSHAP, permutation importance, Feature Vectors or
Rashomon-set interaction scores. Errors are RFC 9457 problem documents."""


def create_app(settings: Settings | None = None, *, migrate: bool = True) -> FastAPI:
    """The application. ``migrate`` runs the migrations at start-up (the default).

    The job kinds are registered here, before anything is served: the built-in methods
    and ``TABXAI_EXTRA_KINDS`` (a module that gives none raises
    ``service.registry.KindRegistryError``).
    """
    settings = settings or Settings()
    kinds = method_registry(settings)
    settings.ensure_dirs()
    db = Database(settings.resolved_database_url)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if migrate:
            upgrade(db.engine)
        yield
        db.dispose()

    # The documentation pages are served with local assets (service.docs_ui), not
    # FastAPI's, which load them from a CDN.
    app = FastAPI(title="tabxai", version="1", description=DESCRIPTION, lifespan=lifespan,
                  docs_url=None, redoc_url=None)
    app.state.settings = settings
    app.state.db = db
    app.state.kinds = kinds
    install_error_handlers(app)
    install_metrics(app)
    app.include_router(health.router)
    app.include_router(catalog_endpoints.router)
    app.include_router(jobs_endpoints.router)
    app.include_router(result_endpoints.router)
    install_docs(app)
    return app
