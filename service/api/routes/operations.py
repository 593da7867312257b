"""Operations: statistics, health, liveness and Prometheus metrics."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel

from service.api.metrics import MixFamilies
from service.api.routes.review import review_families
from service.api.security import bearer, caller
from service.api.state import AppState, get_state
from service.heartbeat import read_live
from service.langmix.store import read_state as read_language_mix
from service.redisdb import UNAVAILABLE
from service.telemetry import read_snapshot

router = APIRouter(tags=["operations"])


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    redis: str
    workers: int | None


async def _workers(st: AppState) -> list[dict]:
    return await read_live(st.client, st.keys, st.settings.heartbeat_ttl_s)


@router.get("/v1/stats", dependencies=[Depends(caller("read"))])
async def stats(st: AppState = Depends(get_state)) -> dict:
    """Backlog, pending, dead letters, decisions by language and action, throughput, live
    workers, shadow policy, language-mix drift (shares, alerts, the profile in use)."""
    out = await st.reader.stats()
    out["language_mix"] = await read_language_mix(st.client, st.keys.prefix)
    out["workers"] = await _workers(st)
    shadow = (await asyncio.to_thread(st.registry.current))["shadow"]
    out["shadow"] = await asyncio.to_thread(st.shadow_stats.report, shadow, 5) if shadow else None
    return out


@router.get("/healthz", response_model=Health,
            responses={503: {"model": Health, "description": "degraded: Redis away or no live worker"}})
async def healthz(st: AppState = Depends(get_state)) -> Any:
    """ok (200) when Redis answers and at least one worker is alive; else degraded (503):
    posts would be accepted but nobody would decide them."""
    try:
        await st.client.ping()
        workers = await _workers(st)
    except Exception as exc:  # any failure to reach Redis means not healthy
        return JSONResponse({"status": "degraded", "redis": f"unavailable: {exc}",
                             "workers": None}, status_code=503,
                            headers={"Retry-After": "2"})  # fmt: skip
    body = {"status": "ok" if workers else "degraded", "redis": "ok", "workers": len(workers)}
    return JSONResponse(body, status_code=200 if workers else 503)


@router.get("/livez")
async def livez() -> dict:
    """The API process answers (whatever Redis and the workers do)."""
    return {"status": "ok"}


@router.get("/metrics", response_class=PlainTextResponse)
async def prometheus(request: Request, st: AppState = Depends(get_state)) -> Response:
    """Prometheus metrics; open unless FLOODGATE_METRICS_PUBLIC=false (then the read role)."""
    if not st.settings.metrics_public:
        await caller("read")(credentials=await bearer(request), st=st)
    text = b""
    try:
        workers = await _workers(st)
        current = await asyncio.to_thread(st.registry.current)
        st.metrics.update(await st.reader.stats(), workers, current)
        # the workers' histograms and counters, kept in Redis (service/telemetry.py)
        snapshot = CollectorRegistry()
        snapshot.register(await read_snapshot(st.client, st.keys))
        snapshot.register(MixFamilies(await read_language_mix(st.client, st.keys.prefix)))
        snapshot.register(await review_families(st))  # queues, fallback, verdicts
        text = generate_latest(snapshot)
    except UNAVAILABLE:  # still answer: an outage is what operators want to see
        st.metrics.redis_up.set(0)
    return Response(generate_latest(st.metrics.registry) + text, media_type=CONTENT_TYPE_LATEST)
