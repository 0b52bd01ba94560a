"""FastAPI dependencies of the job and result endpoints: the app's registry of kinds."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.registry import KindRegistry


def get_kinds(request: Request) -> KindRegistry:
    """The job kinds the app registered at start-up (service.startup)."""
    return request.app.state.kinds


KindsDep = Annotated[KindRegistry, Depends(get_kinds)]
