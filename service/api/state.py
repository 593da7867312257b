"""What every route of one app reads: the settings and the Redis-backed objects, typed."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.asyncio as aredis
from fastapi import Request

from service.api.metrics import Metrics
from service.auth import AsyncKeyStore
from service.config import Settings
from service.policy.library import PolicyDirectory
from service.queue import AsyncProducer, Keys
from service.ratelimit import AsyncRateLimiter
from service.redisdb import clients_for
from service.store import DecisionReader, PolicyRegistry, ShadowStats


@dataclass
class AppState:
    settings: Settings
    keys: Keys
    metrics: Metrics
    client: aredis.Redis
    sync_client: redis.Redis
    producer: AsyncProducer
    reader: DecisionReader
    registry: PolicyRegistry
    shadow_stats: ShadowStats
    policy_dir: PolicyDirectory
    sync_slots: asyncio.Semaphore
    key_store: AsyncKeyStore
    limiter: AsyncRateLimiter
    open_mode: bool = False  # see api.security: loopback, no active key
    open_checked: float = float("-inf")
    moderator_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    moderator: Any = None  # pipeline.Moderator, loaded by the first synchronous call

    @classmethod
    def connect(cls, settings: Settings, metrics: Metrics) -> AppState:
        sync_client, client = clients_for(settings)
        keys = Keys(settings.key_prefix)
        return cls(
            settings=settings, keys=keys, metrics=metrics, client=client,
            sync_client=sync_client,
            producer=AsyncProducer(client, keys, settings.decision_ttl_s, settings.max_backlog),
            reader=DecisionReader(client, keys, settings.consumer_group),
            registry=PolicyRegistry(sync_client, keys),
            shadow_stats=ShadowStats(sync_client, keys),
            policy_dir=PolicyDirectory(settings.resolved_policy_dir),
            sync_slots=asyncio.Semaphore(settings.max_sync_inflight),
            key_store=AsyncKeyStore(client, keys), limiter=AsyncRateLimiter(client, keys),
        )  # fmt: skip

    async def close(self) -> None:
        await self.client.aclose()
        await self.client.connection_pool.disconnect()
        self.sync_client.close()


def get_state(request: Request) -> AppState:
    return request.app.state.floodgate
