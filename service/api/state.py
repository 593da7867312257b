"""What every route of one app reads: the settings and the Redis-backed objects, typed."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import redis
import redis.asyncio as aredis
from fastapi import Request

from service.api.metrics import Metrics
from service.auth import AsyncKeyStore
from service.config import Settings
from service.policy.library import PolicyDirectory
from service.queue import AsyncProducer, Keys
from service.ratelimit import AsyncRateLimiter
from service.redisdb import clients_for, connect_async
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
    waiter: aredis.Redis  # its own pool: synchronous calls wait (BLPOP) on it
    open_mode: bool = False  # see api.security: loopback, no active key
    open_checked: float = float("-inf")

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
            waiter=connect_async(settings.redis_url or "", max_connections=settings.max_sync_inflight + 2,
                                 pool_timeout_s=settings.redis_pool_timeout_s, socket_timeout_s=None),
        )  # fmt: skip

    async def close(self) -> None:
        await self.waiter.aclose()
        await self.client.aclose()
        await self.client.connection_pool.disconnect()
        self.sync_client.close()


def get_state(request: Request) -> AppState:
    return request.app.state.floodgate
