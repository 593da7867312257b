"""Logging: one format for Floodgate's loggers and uvicorn's (server errors and access lines).

JSON lines for machines (one object per record: ``ts``, ``level``, ``logger``, ``message``,
and when known ``request_id``, ``key_name``, ``route``, ``method``, ``path``, ``status``,
``latency_ms``, ``client``, any ``extra=`` fields, ``exc_info``); plain text when a person
is reading: format ``auto`` picks text when stderr is a terminal, JSON otherwise.

Per-request fields live in one ContextVar holding a *mutable* ``RequestContext``: FastAPI
runs sync dependencies and endpoints in worker threads on a copy of the context, where a
``ContextVar.set`` would not be seen by the access line; mutating the shared object is.
``RequestContextMiddleware`` (pure ASGI, outermost) opens the context, takes or makes the
request id, echoes it in ``X-Request-ID`` and stamps route, status and latency before
uvicorn writes its access line; the auth dependency adds the key name with ``annotate``.
"""

from __future__ import annotations

import json
import logging
import logging.config
import re
import secrets
import sys
import time
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

FORMATS = ("auto", "json", "text")
REQUEST_ID_HEADER = "x-request-id"
_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
# the fields a request context may carry, in the order they are written
CONTEXT_FIELDS = ("key_name", "route", "method", "path", "status", "latency_ms", "client")
# a record's own attributes; uvicorn adds color_message, TextFormatter ctx
_RECORD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {
    "message", "asctime", "taskName", "color_message", "ctx"
}  # fmt: skip


# -- per-request context ---------------------------------------------------------------


@dataclass
class RequestContext:
    request_id: str
    started: float = field(default_factory=time.perf_counter)
    fields: dict[str, Any] = field(default_factory=dict)


request_context: ContextVar[RequestContext | None] = ContextVar("request_context", default=None)


def new_request_id() -> str:
    return secrets.token_hex(8)


def begin_request(request_id: str | None = None) -> Token:
    """Open a request's context; a client's id is kept if it is short and plain."""
    if not (request_id and _CLIENT_REQUEST_ID.match(request_id)):
        request_id = new_request_id()
    return request_context.set(RequestContext(request_id))


def end_request(token: Token) -> None:
    request_context.reset(token)


def current_request_id() -> str | None:
    ctx = request_context.get()
    return ctx.request_id if ctx else None


def annotate(**fields: Any) -> None:
    """Add fields (e.g. ``key_name``) to every later log line of the current request."""
    ctx = request_context.get()
    if ctx is not None:
        ctx.fields.update(fields)


class RequestContextMiddleware:
    """Pure ASGI middleware: request id in, request id out, fields for the access line."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = next((v.decode("latin-1") for k, v in scope.get("headers", ())
                         if k == REQUEST_ID_HEADER.encode()), None)  # fmt: skip
        token = begin_request(incoming)
        ctx = request_context.get()
        assert ctx is not None

        async def send_with_id(message: dict) -> None:
            if message["type"] == "http.response.start":
                route = scope.get("route")
                ctx.fields.update(
                    route=getattr(route, "path", None), method=scope.get("method"),
                    path=scope.get("path"), status=message["status"],
                    latency_ms=round((time.perf_counter() - ctx.started) * 1000, 2),
                )  # fmt: skip
                headers = [(k, v) for k, v in message.get("headers", [])
                           if k.lower() != REQUEST_ID_HEADER.encode()]  # fmt: skip
                headers.append((REQUEST_ID_HEADER.encode(), ctx.request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_id)
        # only on success: after an exception the context stays set for the rest of this
        # request's task, so uvicorn's "Exception in ASGI application" line still carries the id
        end_request(token)


# -- formatters --------------------------------------------------------------------------


def _context_fields(record: logging.LogRecord) -> dict[str, Any]:
    out: dict[str, Any] = {}
    ctx = request_context.get()
    if ctx is not None:
        out["request_id"] = ctx.request_id
        out.update((k, v) for k, v in ctx.fields.items() if v is not None)
    if record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(record.args) == 5:
        client, method, path, _, status = record.args
        out.update(client=client, method=method, path=path, status=status)
    # extra= fields of the call itself win over the request's
    out.update((k, v) for k, v in vars(record).items() if k not in _RECORD_ATTRS)
    return out


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def __init__(self, *_: Any, use_colors: bool | None = None, **__: Any) -> None:
        super().__init__()  # use_colors: uvicorn passes it to its own formatter names

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = _context_fields(record)
        entry.update((k, fields.pop(k)) for k in ("request_id", *CONTEXT_FIELDS) if k in fields)
        entry.update(fields)
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """``time level logger [request key]: message`` for a person at a terminal."""

    def __init__(self, *_: Any, use_colors: bool | None = None, **__: Any) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(ctx)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        ctx = request_context.get()
        parts = [ctx.request_id, ctx.fields.get("key_name")] if ctx else []
        record.ctx = f" [{' '.join(p for p in parts if p)}]" if parts else ""
        try:
            return super().format(record)
        finally:
            del record.ctx


# -- configuration -----------------------------------------------------------------------


def resolve_format(fmt: str | None, stream: TextIO | None = None) -> str:
    """``json`` or ``text``: as asked, or for ``auto``/None text only on a terminal."""
    fmt = (fmt or "auto").lower()
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    if fmt != "auto":
        return fmt
    stream = stream if stream is not None else sys.stderr
    try:
        return "text" if stream.isatty() else "json"
    except (AttributeError, ValueError):  # closed or not a real stream
        return "json"


def log_config(fmt: str | None = None, level: str = "INFO") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` dict, also usable as uvicorn's ``log_config``: the
    root logger (so Floodgate's own), ``uvicorn``, ``uvicorn.error`` and ``uvicorn.access``
    all write to stderr in one format."""
    cls = JsonFormatter if resolve_format(fmt) == "json" else TextFormatter
    factory = f"{cls.__module__}.{cls.__qualname__}"
    handler = {"class": "logging.StreamHandler", "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        # uvicorn sets use_colors on formatters named "default" and "access"
        "formatters": {"default": {"()": factory}, "access": {"()": factory}},
        "handlers": {
            "default": {**handler, "formatter": "default"},
            "access": {**handler, "formatter": "access"},
        },
        "root": {"handlers": ["default"], "level": level},
        "loggers": {
            "uvicorn": {"handlers": [], "level": level, "propagate": True},
            "uvicorn.error": {"handlers": [], "level": level, "propagate": True},
            "uvicorn.access": {"handlers": ["access"], "level": level, "propagate": False},
        },
    }


def configure_logging(fmt: str | None = None, level: str = "INFO") -> str:
    """Apply ``log_config`` to this process; returns the format chosen (json or text).

    Pass the same ``fmt`` to ``uvicorn.run(..., log_config=log_config(fmt))``: uvicorn
    applies its own config at start and would otherwise replace these handlers.
    """
    logging.config.dictConfig(log_config(fmt, level))
    return resolve_format(fmt)
