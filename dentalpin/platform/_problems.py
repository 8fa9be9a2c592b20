"""RFC 9457 problem details for every error the HTTP layer returns."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from ._errors import PlatformError

PROBLEM_BASE = "https://dentalpin.dev/problems/"
MEDIA_TYPE = "application/problem+json"


def problem(
    request: Request,
    status: int,
    kind: str,
    detail: str,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body = {
        "type": PROBLEM_BASE + kind,
        "title": kind.replace("-", " ").capitalize(),
        "status": status,
        "detail": detail,
        "instance": request.url.path,
        **extra,
    }
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


async def _platform_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, PlatformError)
    headers: dict[str, str] = dict(getattr(exc, "headers", None) or {})
    if exc.status == 401:
        # RFC 9110 §15.5.2: a 401 must say how to authenticate.
        headers.setdefault("WWW-Authenticate", 'Bearer realm="dentalpin"')
    extra: dict[str, Any] = dict(getattr(exc, "extra", None) or {})
    return problem(request, exc.status, exc.problem, exc.detail, headers or None, **extra)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    kind = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error")
    # Keep the exception's headers (405's `Allow`, for one).
    return problem(request, exc.status_code, kind, str(exc.detail), exc.headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
    return problem(request, 422, "invalid-input", "the request is not valid", errors=errors)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    # Starlette logs the exception and re-raises it after this response; nothing leaks here.
    return problem(
        request, 500, "internal-error", "an unexpected error occurred; it has been logged"
    )


def install_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(PlatformError, _platform_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected_error)
