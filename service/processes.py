"""Process management: the model on first use, worker processes, and their supervision.

`floodgate serve` and `floodgate replay --embedded` both run a small deployment on one
machine: an embedded redis-server (redisdb.EmbeddedRedis), N worker processes and the API.
This module starts and stops the children and keeps them alive: a worker that dies
(SIGKILL, a segfault in a native library, out of memory) is restarted with exponential
backoff and the reason is logged; an embedded redis-server that dies is restarted on the
same data directory (its append-only file brings every accepted post back).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from service.config import Settings
from service.redisdb import EmbeddedRedis

log = logging.getLogger("floodgate.supervisor")

BACKOFF_START_S, BACKOFF_MAX_S = 0.5, 30.0
# a child that dies sooner than this after its start is in a crash loop (bad configuration,
# a missing file): its restarts back off exponentially; one that ran longer (and died on,
# say, a poison post) is restarted after the shortest delay
STABLE_AFTER_S = 5.0


def ensure_model(settings: Settings, say: Callable[[str], None] = log.info) -> None:
    """Build the encoder on first use; it is a local conversion, nothing is downloaded."""
    from service.classifier.build import build

    target = settings.resolved_model_dir
    if not (target / "model.safetensors").exists():
        say(f"floodgate: building the encoder into {target} (once, ~30 s)")
        build(target, log=lambda m: say(f"  {m}"))


def start_worker(settings: Settings) -> subprocess.Popen:
    env = {
        **os.environ,
        "REDIS_URL": settings.redis_url or "",
        "FLOODGATE_PARENT_PID": str(os.getpid()),
    }
    return subprocess.Popen([sys.executable, "-m", "service", "worker"], env=env)


def start_workers(settings: Settings, count: int) -> list[subprocess.Popen]:
    return [start_worker(settings) for _ in range(count)]


def stop_workers(procs: list[subprocess.Popen], timeout: float = 30.0) -> None:
    """SIGTERM (each finishes its batch in hand), then SIGKILL whatever is left."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def exit_reason(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with status {returncode}"


class _Child:
    """One supervised child: when it started, and when it may be started again."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.backoff = BACKOFF_START_S
        self.restart_at: float | None = None

    def died(self, now: float) -> float:
        if now - self.started >= STABLE_AFTER_S:
            self.backoff = BACKOFF_START_S
        delay = self.backoff
        self.backoff = min(self.backoff * 2, BACKOFF_MAX_S)
        self.restart_at = now + delay
        return delay


class Supervisor:
    """Keeps `count` workers (and the embedded Redis, if any) running until stopped."""

    def __init__(
        self, settings: Settings, count: int, embedded: EmbeddedRedis | None = None,
        poll_s: float = 0.5,
    ) -> None:  # fmt: skip
        self.settings, self.count, self.embedded, self.poll_s = settings, count, embedded, poll_s
        self.procs: list[subprocess.Popen] = []
        self._children: list[_Child] = []
        self._redis = _Child()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="supervisor", daemon=True)
        self.restarts = 0

    def start(self) -> Supervisor:
        self.procs = start_workers(self.settings, self.count)
        self._children = [_Child() for _ in self.procs]
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self._check_redis()
                self._check_workers()
            except Exception:  # the supervisor itself must keep watching
                log.exception("supervisor")

    def _check_redis(self) -> None:
        e = self.embedded
        if e is None or e.process is None or e.process.poll() is None:
            return
        now = time.monotonic()
        if self._redis.restart_at is None:
            delay = self._redis.died(now)
            log.error("embedded redis-server %s; restarting it in %.0f s (its append-only "
                      "file keeps every accepted post)", exit_reason(e.process.returncode), delay)  # fmt: skip
        elif now >= self._redis.restart_at and not self._stop.is_set():
            e.start()
            self._redis = _Child()
            self.restarts += 1
            log.warning("embedded redis-server restarted at %s", e.url)

    def _check_workers(self) -> None:
        now = time.monotonic()
        for i, proc in enumerate(self.procs):
            child = self._children[i]
            if proc.poll() is None:
                continue
            if child.restart_at is None:
                delay = child.died(now)
                log.error("worker pid %d %s; restarting it in %.0f s", proc.pid,
                          exit_reason(proc.returncode), delay)  # fmt: skip
            elif now >= child.restart_at and not self._stop.is_set():
                self.procs[i] = start_worker(self.settings)
                backoff = child.backoff
                self._children[i] = _Child()
                self._children[i].backoff = backoff  # a crash loop keeps backing off
                self.restarts += 1
                log.warning("worker restarted as pid %d", self.procs[i].pid)

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        stop_workers(self.procs, timeout)
