"""The app factory: state, middleware, error handlers and the routers, wired once."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware

from service.api.docs import install_docs
from service.api.errors import BodyGuard, install_handlers
from service.api.metrics import Metrics
from service.api.openapi import document_errors
from service.api.publishing import publish_at_start, watch_policy
from service.api.routes import console, decisions, moderations, operations, policy, posts, review
from service.api.security import Denied, access_before_body, denied_response, warn_if_open
from service.api.state import AppState
from service.config import Settings, get_settings
from service.logs import RequestContextMiddleware


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    if not settings.redis_url:
        raise ValueError("the API needs a Redis URL (serve starts an embedded one)")
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state = AppState.connect(settings, metrics)
        app.state.floodgate = state
        await asyncio.to_thread(publish_at_start, state.registry, settings)
        await warn_if_open(state)
        watcher = None
        if settings.policy_watch:
            watcher = asyncio.create_task(watch_policy(state.registry, settings))
        yield
        if watcher:
            watcher.cancel()
        await state.close()

    app = FastAPI(
        title="Floodgate",
        version="0.1.0",
        description="Content moderation for a bilingual platform under an influx.",
        lifespan=lifespan,
        docs_url=None,  # served offline by install_docs
        redoc_url=None,
    )
    install_docs(app)
    app.add_middleware(
        BodyGuard, max_bytes=settings.max_body_bytes, read_timeout_s=settings.body_read_timeout_s
    )
    if settings.cors_origins:  # off unless an allow-list is configured
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins,
                           allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["Authorization", "Content-Type", "X-Request-ID"])  # fmt: skip
    install_handlers(app)
    app.add_exception_handler(Denied, denied_response)
    app.add_exception_handler(RequestValidationError, access_before_body)
    metrics.install(app)
    # outermost: every response and log line of a request carries its request id
    app.add_middleware(RequestContextMiddleware)
    for module in (posts, decisions, policy, operations, review, moderations, console):
        app.include_router(module.router)
    document_errors(app)
    return app
