"""Shared fixtures: a real Redis, the real model, a real HTTP server around the real app.

Redis: REDIS_URL when set, else the machine's server on 127.0.0.1:6379 when it answers,
else a private redis-server started for the session. Every test gets its own key prefix,
so tests never see each other's streams and nothing is flushed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from service.config import REPO_ROOT, Settings
from service.processes import free_port
from service.redisdb import EmbeddedRedis, connect

MODEL_DIR = Path(
    os.environ.get("FLOODGATE_MODEL_DIR", REPO_ROOT / "var" / "models" / "multilingual-e5-small")
)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory) -> Iterator[str]:
    candidates = [os.environ.get("REDIS_URL"), "redis://127.0.0.1:6379/0"]
    for url in filter(None, candidates):
        try:
            if connect(url).ping():
                yield url
                return
        except redis.RedisError:
            continue
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), fsync="everysec").start()
    yield server.url
    server.stop()


@pytest.fixture(scope="session")
def model_dir() -> Path:
    if not (MODEL_DIR / "model.safetensors").exists():
        from service.classifier.build import build

        build(MODEL_DIR)
    return MODEL_DIR


def make_settings(redis_url: str, model_dir: Path, **overrides) -> Settings:
    values = dict(
        redis_url=redis_url,
        model_dir=model_dir,
        key_prefix=f"fgtest-{uuid.uuid4().hex[:10]}",
        batch_size=16,
        batch_max_wait_ms=20,
        claim_idle_ms=1000,
        max_deliveries=3,
        decision_ttl_s=3600,
    )
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def settings(redis_url, model_dir) -> Iterator[Settings]:
    s = make_settings(redis_url, model_dir)
    yield s
    client = connect(redis_url)
    keys = list(client.scan_iter(f"{s.key_prefix}:*", count=1000))
    for i in range(0, len(keys), 500):
        client.delete(*keys[i : i + 500])


@pytest.fixture(scope="session")
def moderator(model_dir):
    from service.pipeline import Moderator

    s = Settings(model_dir=model_dir, redis_url="redis://unused")
    m = Moderator.from_settings(s)
    m.warm_up()
    return m


class LiveServer:
    """uvicorn serving the real app on a free port, in a background thread."""

    def __init__(self, settings: Settings) -> None:
        import uvicorn

        from service.api import create_app

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            create_app(settings), host="127.0.0.1", port=self.port, log_level="warning"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/livez", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError("test server did not start")

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)


class WorkerThread:
    """A real Worker on the real moderator, in a thread of the test process."""

    def __init__(self, settings: Settings, moderator, name: str = "test-worker") -> None:
        from service.worker import Worker

        self.worker = Worker(settings, moderator, name=name)
        self.thread = threading.Thread(target=self.worker.run, daemon=True)

    def __enter__(self) -> WorkerThread:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.worker.request_stop()
        self.thread.join(30)


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05):
    """Poll ``predicate`` until it returns something truthy (returned); bounded in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def api(settings) -> Iterator[LiveServer]:
    with LiveServer(settings) as server:
        yield server


@pytest.fixture
def service(settings, moderator) -> Iterator[LiveServer]:
    """API and one worker: the whole pipeline behind real HTTP."""
    with LiveServer(settings) as server, WorkerThread(settings, moderator):
        yield server


def wait_for_decision(url: str, post_id: str, timeout: float = 60.0) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = httpx.get(f"{url}/v1/posts/{post_id}/decision", timeout=5)
        if r.status_code != 202:
            return r
        time.sleep(0.1)
    raise AssertionError(f"no decision for {post_id} within {timeout} s")


def worker_process(settings: Settings, *extra_env: tuple[str, str]) -> subprocess.Popen:
    """A worker in its own process (`python -m service worker`), configured like `settings`."""
    env = {
        **os.environ,
        "REDIS_URL": settings.redis_url or "",
        "FLOODGATE_MODEL_DIR": str(settings.model_dir),
        "FLOODGATE_KEY_PREFIX": settings.key_prefix,
        "FLOODGATE_BATCH_SIZE": str(settings.batch_size),
        "FLOODGATE_BATCH_MAX_WAIT_MS": str(settings.batch_max_wait_ms),
        "FLOODGATE_CLAIM_IDLE_MS": str(settings.claim_idle_ms),
        "FLOODGATE_MAX_DELIVERIES": str(settings.max_deliveries),
        "FLOODGATE_TORCH_THREADS": "1",
        **dict(extra_env),
    }
    return subprocess.Popen([sys.executable, "-m", "service", "worker"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
