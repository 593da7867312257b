"""The OpenAPI document says what the API really answers: the one error shape, and the
refusals every protected route can meet.

FastAPI documents a 422 in its own shape (`HTTPValidationError`), which the API never sends,
and knows nothing of what the security dependency and the body guard answer. Derived here
from each operation, so a new route is documented the same way without a declaration:

* every error answer is `Error` (`{"error", "detail": [{"field", "message", "type"}]}`);
* a route with the bearer security requirement: 401 (with `WWW-Authenticate`), 403, 429
  (key or author rate limit, backlog; with `Retry-After`);
* a route with a request body: 400 (not UTF-8), 408 (body too slow), 413 (too large);
* every route but the liveness probe and the documents: 503 while Redis is away.

Route-specific answers (404 of an unknown version, ...) stay declared on the route
(`responses=`); their schema is `Error` too.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict

ERROR_REF = "#/components/schemas/Error"


class ErrorItem(BaseModel):
    model_config = ConfigDict(extra="forbid", title="ErrorItem")
    field: str
    message: str
    type: str


class Error(BaseModel):
    """The one error shape of every 4xx and of the 503 while Redis is away."""

    model_config = ConfigDict(extra="forbid", title="Error")
    error: str
    detail: list[ErrorItem]


def error_response(description: str, **headers: str) -> dict[str, Any]:
    """A `responses=` entry of a route: `description` in the one error shape."""
    out: dict[str, Any] = {"model": Error, "description": description}
    if headers:
        out["headers"] = {name: {"description": text, "schema": {"type": "string"}}
                          for name, text in headers.items()}  # fmt: skip
    return out


_HEADER = {"schema": {"type": "string"}}
_AUTH = {
    "401": ("no API key, or one that is unknown or revoked",
            {"WWW-Authenticate": {"description": 'Bearer realm="floodgate"', **_HEADER}}),
    "403": ("the API key does not have the role this route needs", {}),
    "429": ("over a rate limit (the key's, or a post author's), or the backlog is full",
            {"Retry-After": {"description": "seconds to wait", **_HEADER}}),
}  # fmt: skip
_BODY = {
    "400": ("the body is not valid UTF-8", {}),
    "408": ("the body did not arrive in time", {}),
    "413": ("the body is over the size limit", {}),
}
_UNAVAILABLE = ("Redis is unavailable; retry after Retry-After seconds",
                {"Retry-After": {"description": "seconds to wait", **_HEADER}})  # fmt: skip
# no 503 in the one shape: the probes and documents, and /metrics (it reports Redis down)
_NO_REDIS = {"/livez", "/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}


def _error(description: str, headers: dict) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description,
                           "content": {"application/json": {"schema": {"$ref": ERROR_REF}}}}  # fmt: skip
    if headers:
        out["headers"] = headers
    return out


def _document(spec: dict[str, Any]) -> dict[str, Any]:
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    schema = Error.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(schema.pop("$defs", {}))
    schemas["Error"] = schema
    for path, operations in spec.get("paths", {}).items():
        for op in operations.values():
            responses = op.setdefault("responses", {})
            if "422" in responses:  # FastAPI's own shape, never sent: ours instead
                responses["422"] = _error("the request is not valid (each field at fault)", {})
            added = dict(_AUTH) if op.get("security") else {}
            if "requestBody" in op:
                added.update(_BODY)
            if path not in _NO_REDIS:
                added["503"] = _UNAVAILABLE
            for code, (description, headers) in added.items():
                responses.setdefault(code, _error(description, headers))
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    return spec


def document_errors(app: FastAPI) -> None:
    """Make `app.openapi()` describe the error answers (built once, then cached)."""
    build = app.openapi
    done = False

    def openapi() -> dict[str, Any]:
        nonlocal done
        if not done:
            app.openapi_schema = _document(build())
            done = True
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
