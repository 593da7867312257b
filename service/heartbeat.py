"""Worker liveness: each worker publishes a heartbeat to Redis; the API and `serve` read them.

A heartbeat is one field of the hash ``fg:workers`` (worker name -> JSON): pid, host, when
it started, when it last beat, how many posts it decided, and the batch in hand (size and
since when). A worker beats from a thread of its own, so a long batch does not look like a
dead worker; one silent for ``ttl_s`` is presumed dead. `/healthz` answers ``degraded``
when no worker is alive, and `/v1/stats` lists them. Times are the writers' wall clocks
(hosts of one deployment are expected to keep NTP time).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass, field

import redis
import redis.asyncio as aredis

from service.queue import Keys
from service.redisdb import UNAVAILABLE

log = logging.getLogger("floodgate.heartbeat")


@dataclass
class WorkerState:
    """What a worker says about itself; updated by the worker loop, published by the beat."""

    name: str
    pid: int = field(default_factory=os.getpid)
    host: str = field(default_factory=socket.gethostname)
    started_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    decided: int = 0
    batch_size: int = 0  # posts in hand; 0 = idle
    batch_since_ms: int | None = None
    model_version: str = ""
    policy_version: str = ""

    def holding(self, size: int) -> None:
        self.batch_size, self.batch_since_ms = size, int(time.time() * 1000) if size else None


class Heartbeat:
    """Publishes a WorkerState every ``interval_s`` from a daemon thread until stopped."""

    def __init__(self, client: redis.Redis, keys: Keys, state: WorkerState, interval_s: float):
        self.client, self.keys, self.state, self.interval_s = client, keys, state, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def beat(self) -> None:
        doc = {**asdict(self.state), "beat_ms": int(time.time() * 1000)}
        self.client.hset(self.keys.workers, self.state.name, json.dumps(doc))

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.beat()
            except UNAVAILABLE:
                pass  # Redis is away; the worker loop logs that, the next beat catches up
            except Exception:  # a heartbeat must never take the worker down
                log.exception("heartbeat")
            self._stop.wait(self.interval_s)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop beating and remove this worker's entry (a clean exit is not a death)."""
        self._stop.set()
        self._thread.join(5)
        with contextlib.suppress(UNAVAILABLE):
            self.client.hdel(self.keys.workers, self.state.name)


def _parse(raw: dict[str, str]) -> list[dict]:
    out = []
    for name, doc in raw.items():
        try:
            item = json.loads(doc)
        except ValueError:
            continue
        item["name"] = name
        out.append(item)
    return out


def live_workers(raw: dict[str, str], ttl_s: float, now_ms: int | None = None) -> list[dict]:
    """The heartbeats younger than ``ttl_s``, each with its age (pure)."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    out = []
    for item in _parse(raw):
        age_ms = now_ms - int(item.get("beat_ms", 0))
        if age_ms <= ttl_s * 1000:
            since = item.get("batch_since_ms")
            out.append({
                "name": item["name"], "pid": item.get("pid"), "host": item.get("host"),
                "last_heartbeat_ms": max(age_ms, 0), "decided": item.get("decided", 0),
                "batch_in_hand": item.get("batch_size", 0),
                "batch_age_ms": max(now_ms - since, 0) if since else None,
                "model_version": item.get("model_version", ""),
                "policy_version": item.get("policy_version", ""),
            })  # fmt: skip
    return sorted(out, key=lambda w: w["name"])


async def read_live(client: aredis.Redis, keys: Keys, ttl_s: float) -> list[dict]:
    """The live workers; entries silent for 20 x ttl are dropped from the hash."""
    raw = await client.hgetall(keys.workers)
    now_ms = int(time.time() * 1000)
    stale = [i["name"] for i in _parse(raw) if now_ms - int(i.get("beat_ms", 0)) > 20 * ttl_s * 1000]
    if stale:
        await client.hdel(keys.workers, *stale)
    return live_workers(raw, ttl_s, now_ms)
