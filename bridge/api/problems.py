"""Errors as ``application/problem+json`` (RFC 9457), for every route and status.

Handlers raise ``Problem``; the handlers installed by ``install`` turn it, and
FastAPI's own validation and HTTP errors, into one JSON shape. ``responses``
documents the same shape in the OpenAPI document.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from bridge.errors import DatabaseUnavailable

MEDIA_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:ktb:problem:"
log = logging.getLogger("ktb.api")


class ProblemDetails(BaseModel):
    """An RFC 9457 problem document; ``errors`` lists what did not validate."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="A URI naming the kind of problem")
    title: str = Field(description="Short summary of the kind of problem")
    status: int = Field(description="The HTTP status code")
    detail: str | None = Field(None, description="What went wrong in this request")
    instance: str | None = Field(None, description="The request path")
    errors: list[dict[str, Any]] | None = Field(None, description="Validation errors, if any")


class Problem(Exception):
    """Raise from a handler to answer with a problem document."""

    def __init__(
        self,
        status: int,
        slug: str,
        detail: str | None = None,
        *,
        title: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail or slug)
        self.status = status
        self.slug = slug
        self.title = title or HTTPStatus(status).phrase
        self.detail = detail
        self.headers = headers
        self.extra = extra


def problem_response(
    request: Request | None,
    status: int,
    slug: str,
    detail: str | None = None,
    *,
    title: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """The ``application/problem+json`` response for one problem."""
    body: dict[str, Any] = {
        "type": TYPE_PREFIX + slug,
        "title": title or HTTPStatus(status).phrase,
        "status": status,
    }
    if detail is not None:
        body["detail"] = detail
    if request is not None:
        body["instance"] = request.url.path
    body.update({k: v for k, v in extra.items() if v is not None})
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


_SLUGS = {
    400: "bad-request",
    401: "unauthorized",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    406: "not-acceptable",
    409: "conflict",
    413: "content-too-large",
    415: "unsupported-media-type",
    422: "validation-error",
    500: "internal-error",
    503: "unavailable",
}


async def _problem(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Problem)
    return problem_response(
        request,
        exc.status,
        exc.slug,
        exc.detail,
        title=exc.title,
        headers=exc.headers,
        **exc.extra,
    )


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return problem_response(
        request,
        exc.status_code,
        _SLUGS.get(exc.status_code, "http-error"),
        str(exc.detail) if exc.detail else None,
        headers=dict(exc.headers) if exc.headers else None,
    )


def _jsonable(errors: Any) -> list[dict[str, Any]]:
    out = []
    for err in errors:
        item = {"loc": [str(p) for p in err.get("loc", ())], "msg": str(err.get("msg", ""))}
        if "type" in err:
            item["type"] = str(err["type"])
        out.append(item)
    return out


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = _jsonable(exc.errors())
    first = errors[0] if errors else None
    detail = f"{'.'.join(first['loc'])}: {first['msg']}" if first else "the request is invalid"
    return problem_response(request, 422, "validation-error", detail, errors=errors)


async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    # The driver's text (host, port) goes to the log only.
    assert isinstance(exc, DatabaseUnavailable)
    log.warning("database unavailable on %s %s: %s", request.method, request.url.path,
                exc.message)  # fmt: skip
    return problem_response(
        request, 503, "database-unavailable", "the provenance database did not answer; try again"
    )


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    # Last resort for bugs: logged with the traceback, answered in the same shape.
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem_response(request, 500, "internal-error", "an unexpected error occurred")


def install(app: FastAPI) -> None:
    """Answer every error of ``app`` with a problem document."""
    app.add_exception_handler(Problem, _problem)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(DatabaseUnavailable, _database_unavailable)
    app.add_exception_handler(Exception, _unexpected)


_DESCRIPTIONS = {
    400: "Malformed request (for example a body that is not JSON)",
    401: "No or unknown API key",
    403: "The API key's tenant may not do this",
    404: "Unknown, or another tenant's",
    409: "Conflicts with an existing resource",
    413: "Request body larger than the configured limit",
    415: "Unsupported content type",
    422: "The request does not validate",
    503: "Kafka, Temporal or the provenance database is unavailable",
}


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries documenting problem answers for ``codes``."""
    schema = {"$ref": "#/components/schemas/ProblemDetails"}
    return {
        code: {
            "description": _DESCRIPTIONS.get(code, HTTPStatus(code).phrase),
            "content": {MEDIA_TYPE: {"schema": schema}},
        }
        for code in codes
    }
