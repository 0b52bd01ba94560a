"""Domain errors and their one translation into RFC 9457 problem documents.

Code below the endpoints raises these with a sentence a person can act on; the handlers
installed by :func:`install_error_handlers` turn every error — ours, FastAPI's request
validation, unknown routes, and anything unexpected — into ``application/problem+json``.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import exc as sa_exc
from starlette.datastructures import QueryParams
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

from models.errors import ModelError, first_line

log = logging.getLogger("tabxai.errors")

PROBLEM_JSON = "application/problem+json"
# How long a client should wait before retrying while the database is unreachable.
RETRY_AFTER_SECONDS = 5


class ServiceError(Exception):
    """Base of every error the API reports. The docstring of a subclass is its title."""

    status: int = 400
    code: str = "bad_request"

    def __init__(
        self,
        detail: str,
        *,
        code: str | None = None,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code
        self.errors = errors
        self.headers = headers

    @property
    def title(self) -> str:
        return _title(type(self))


def _title(cls: type[Exception]) -> str:
    return (cls.__doc__ or cls.__name__).strip().splitlines()[0]


class BadRequest(ServiceError):
    """The request could not be read."""

    status, code = 400, "bad_request"


class Unauthorized(ServiceError):
    """Missing or invalid API key."""

    status, code = 401, "unauthorized"


class NotFound(ServiceError):
    """Not found."""

    status, code = 404, "not_found"


class Conflict(ServiceError):
    """The request conflicts with the current state."""

    status, code = 409, "conflict"


class PayloadTooLarge(ServiceError):
    """The upload is larger than this server accepts."""

    status, code = 413, "payload_too_large"


class UnsupportedMediaType(ServiceError):
    """Unsupported format."""

    status, code = 415, "unsupported_format"


class Unprocessable(ServiceError):
    """The request is valid but cannot be served."""

    status, code = 422, "unprocessable"


class InvalidText(Unprocessable):
    """The request holds text that cannot be stored."""

    status, code = 422, "nul_character"


class NotReady(ServiceError):
    """The service is not ready."""

    status, code = 503, "not_ready"


class Problem(BaseModel):
    """An RFC 9457 problem document, sent as ``application/problem+json``."""

    type: str = Field(examples=["/problems/not_found"], description="/problems/<code>")
    title: str = Field(description="What kind of problem this is.")
    status: int = Field(examples=[404], description="The HTTP status code.")
    detail: str = Field(description="A sentence a person can act on.")
    code: str = Field(examples=["not_found"], description="Stable machine-readable code.")
    errors: list[dict[str, Any]] | None = Field(
        None, description="Per-field details, when there are several.")


_PROBLEM_DESCRIPTIONS = {
    400: "The request could not be read (malformed JSON, multipart body or cursor).",
    401: "No API key, or an unknown or revoked one.",
    404: "No such object in this workspace.",
    409: "The request conflicts with the object's state.",
    413: "The upload is larger than this server accepts.",
    415: "The format is not supported (or runs code and is not trusted).",
    422: "A valid request that cannot be served, or a field that is not valid.",
    503: "The database is unreachable or not migrated; retry after Retry-After seconds.",
}
_PROBLEM_HEADERS = {
    401: {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}},
    503: {"Retry-After": {"description": "Seconds to wait before retrying.",
                          "schema": {"type": "integer"}}},
}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` declaring problem documents with these status codes."""
    declared: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        response: dict[str, Any] = {
            "description": _PROBLEM_DESCRIPTIONS[status],
            "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        if status in _PROBLEM_HEADERS:
            response["headers"] = _PROBLEM_HEADERS[status]
        declared[status] = response
    return declared


# What every operation under /v1 may answer: no key, a NUL or invalid field, an outage.
API_PROBLEMS = problem_responses(401, 422, 503)


def problem_response(
    status: int,
    code: str,
    title: str,
    detail: str,
    *,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": f"/problems/{code}",
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
    }
    if errors:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(ModelError, _model_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    # Handlers of specific classes answer inside the app, so the connection stays open;
    # the catch-all below closes it after answering (Starlette re-raises for the server).
    app.add_exception_handler(sa_exc.DBAPIError, _database_error)
    app.add_exception_handler(sa_exc.DisconnectionError, _database_error)
    app.add_exception_handler(sa_exc.TimeoutError, _database_error)
    app.add_exception_handler(Exception, _unexpected_error)
    app.add_middleware(RefuseNulMiddleware)
    _add_problem_schema(app)


def _add_problem_schema(app: FastAPI) -> None:
    """Put the Problem schema the declared responses refer to into the document."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            schemas = schema.setdefault("components", {}).setdefault("schemas", {})
            schemas["Problem"] = Problem.model_json_schema(
                ref_template="#/components/schemas/{model}")
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


class RefuseNulMiddleware:
    """Answers a request with a NUL character in its path (404: no id holds one) or in a
    query parameter (422) before any route sees it; PostgreSQL cannot even compare
    such text. NULs in bodies are refused where they meet the database
    (``service.db``)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            problem = _nul_problem(scope)
            if problem is not None:
                await problem(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _nul_problem(scope: Scope) -> JSONResponse | None:
    if "\x00" in scope["path"]:
        return problem_response(
            404, "not_found", "Not found.",
            "There is nothing at this path: ids and names never contain a NUL (0x00) "
            "character. Check the URL.")
    query_string: bytes = scope.get("query_string", b"")
    if b"\x00" not in query_string and b"%00" not in query_string:
        return None
    for key, value in QueryParams(query_string).multi_items():
        if "\x00" in key or "\x00" in value:
            name = key.replace("\x00", "\\0")
            return problem_response(
                InvalidText.status, InvalidText.code, _title(InvalidText),
                f"The query parameter '{name}' contains a NUL (0x00) character, which no "
                "id, name or value may hold; remove it and send the request again.")
    return None


async def _service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    return problem_response(
        exc.status, exc.code, exc.title, exc.detail, errors=exc.errors, headers=exc.headers
    )


async def _model_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ModelError)
    errors = None
    for attr in ("missing", "extra", "type_clashes"):
        values = getattr(exc, attr, None)
        if values:
            errors = (errors or []) + [{"field": attr, "columns": list(values)}]
    title = (type(exc).__doc__ or "The model cannot be used.").strip().splitlines()[0]
    return problem_response(exc.status, exc.code, title, str(exc), errors=errors)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {
            "loc": [str(part) for part in err.get("loc", ())],
            "msg": str(err.get("msg", "")),
            "type": str(err.get("type", "")),
        }
        for err in exc.errors()
    ]
    if any(e["type"] == "json_invalid" for e in errors):
        return problem_response(
            400, "invalid_json", "The request body is not valid JSON.",
            "Send a JSON body with Content-Type: application/json.", errors=errors,
        )
    first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
    where = ".".join(p for p in first["loc"] if p not in ("body", "query", "path")) or "request"
    detail = f"{where}: {first['msg']}. Fix this field and send the request again."
    return problem_response(
        422, "invalid_request", "The request is not valid.", detail, errors=errors
    )


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 404:
        detail = f"There is no route {request.url.path}; see /docs for the API."
        return problem_response(404, "not_found", "Not found.", detail)
    if exc.status_code == 405:
        allowed = _allowed_methods(request)
        detail = (f"{request.method} is not allowed on {request.url.path}; use "
                  f"{allowed or 'another path'}.")
        headers = {**(getattr(exc, "headers", None) or {}), "Allow": allowed}
        return problem_response(405, "method_not_allowed", "Method not allowed.", detail,
                                headers=headers)
    code = f"http_{exc.status_code}"
    return problem_response(exc.status_code, code, str(exc.detail), str(exc.detail),
                            headers=getattr(exc, "headers", None))


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, sa_exc.DataError):
        # A value the database refuses to store or compare (too long, out of range).
        reason = first_line(getattr(exc, "orig", None) or exc)
        return problem_response(
            422, "invalid_value", "The request holds a value that cannot be stored.",
            f"A value in the request cannot be stored: {reason}. Change it and send the "
            "request again.")
    if _is_outage(exc):
        log.warning("database unavailable", extra={
            "event": "database_unavailable", "path": request.url.path,
            "error": first_line(exc)})
        return problem_response(
            503, "database_unavailable", "The database is unavailable.",
            f"The service cannot reach its database right now; try again in "
            f"{RETRY_AFTER_SECONDS} seconds.",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
    return await _unexpected_error(request, exc)


def _is_outage(exc: Exception) -> bool:
    """Errors of the connection rather than of the statement: worth retrying later."""
    if isinstance(exc, sa_exc.DBAPIError):
        return exc.connection_invalidated or isinstance(
            exc, sa_exc.OperationalError | sa_exc.InterfaceError)
    return isinstance(exc, sa_exc.DisconnectionError | sa_exc.TimeoutError)


_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def _allowed_methods(request: Request) -> str:
    """Every method some route accepts on this path (the router names only those of
    the first route that matches the path)."""
    allowed = [
        method for method in _METHODS
        if any(route.matches({**request.scope, "method": method})[0] == Match.FULL
               for route in request.app.router.routes)
    ]
    return ", ".join(allowed)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", extra={"event": "unhandled_error", "path": request.url.path})
    return problem_response(
        500, "internal_error", "Internal error.",
        "The server failed to handle this request; the error was logged. Try again, and "
        "report it if it persists.",
    )
