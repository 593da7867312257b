"""The one client-error shape, the handlers that produce it, and the request-body guard.

Every error is ``{"error": ..., "detail": [{"field": ..., "message": ..., "type": ...}]}``
with the field that is at fault. Bodies over the size limit (413), that are not UTF-8 (400)
or that do not arrive in time (408) are refused by a small ASGI middleware before FastAPI
parses anything. While Redis is away every route answers a JSON 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.redisdb import UNAVAILABLE

log = logging.getLogger("floodgate.api")

BACKLOG_FULL = {
    "field": "post",
    "message": "the moderation backlog is full; send it again after Retry-After seconds",
    "type": "backlog_full",
}


def error_response(
    status: int, error: str, detail: list[dict[str, Any]], headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": error, "detail": detail},
                        headers=headers)  # fmt: skip


def one_error(
    status: int, error: str, field: str, message: str, kind: str,
    headers: dict[str, str] | None = None,
) -> JSONResponse:  # fmt: skip
    return error_response(status, error, [{"field": field, "message": message, "type": kind}],
                          headers)  # fmt: skip


def not_found(field: str, message: str) -> JSONResponse:
    return one_error(404, "not_found", field, message, "not_found")


def unavailable(message: str, retry_after_s: int = 2) -> JSONResponse:
    return one_error(503, "unavailable", "server", message, "unavailable",
                     {"Retry-After": str(retry_after_s)})  # fmt: skip


def _field(loc: tuple | list, root: str | None = None) -> str:
    """Dotted field name: FastAPI's leading "body" is dropped from a request error's
    location (only that one: a post may have a bad field literally named "body"); a
    batch item's errors are rooted at ``root`` ("posts.<i>")."""
    parts = [str(p) for p in loc]
    if root is None:
        return ".".join(parts[1:] if parts[:1] == ["body"] else parts) or "body"
    return ".".join([root, *parts])


def validation_errors(
    exc: ValidationError | RequestValidationError, root: str | None = None
) -> list[dict[str, Any]]:
    return [
        {
            # a JSON decode error is located at ("body", <char offset>): the body is at fault
            "field": (root or "body") if e["type"] == "json_invalid" else _field(e["loc"], root),
            "message": e["msg"].removeprefix("Value error, "),
            "type": e["type"],
        }
        for e in exc.errors()
    ]


def install_handlers(app: FastAPI) -> None:
    """Every failure a route can meet answers in the one JSON shape, never plain text."""

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "validation_error", validation_errors(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return one_error(exc.status_code, "http_error", "path", str(exc.detail), "http")

    @app.exception_handler(redis.RedisError)
    async def _redis_error(_: Request, exc: redis.RedisError) -> JSONResponse:
        # Redis away (down, restarting, loading, pool exhausted): a JSON 503 the client can
        # retry after; nothing accepted is lost, since a 202 is only sent after Redis replied
        if isinstance(exc, UNAVAILABLE):
            return unavailable(f"Redis is unavailable ({type(exc).__name__}); retry shortly")
        log.exception("Redis error")
        return one_error(500, "internal_error", "server", "storage error", "redis")

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return one_error(500, "internal_error", "server", "internal error", "internal")


class BodyGuard:
    """Refuse oversize, slow and non-UTF-8 request bodies before the app reads them."""

    def __init__(self, app, max_bytes: int, read_timeout_s: float = 15.0) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.read_timeout_s = read_timeout_s

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send, 413, "body_too_large",
                               f"body is {int(declared)} bytes; the limit is {self.max_bytes}")  # fmt: skip
            return
        chunks, size = [], 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.read_timeout_s
        while True:
            try:
                # the whole body within the timeout: a client that stalls below its declared
                # length must not hold a connection (and its memory) forever
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.001))
            except TimeoutError:
                await self._refuse(scope, receive, send, 408, "body_timeout",
                                   f"the body did not arrive within {self.read_timeout_s:g} s")  # fmt: skip
                return
            if message["type"] == "http.disconnect":
                return  # the client went away mid-body: nothing to answer, nothing to log
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(scope, receive, send, 413, "body_too_large",
                                   f"body exceeds the limit of {self.max_bytes} bytes")  # fmt: skip
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as exc:
            await self._refuse(scope, receive, send, 400, "invalid_utf8",
                               f"body is not valid UTF-8 (byte {exc.start})")  # fmt: skip
            return
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    @staticmethod
    async def _refuse(scope, receive, send, status: int, error: str, message: str) -> None:
        await one_error(status, error, "body", message, error)(scope, receive, send)
