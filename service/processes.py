"""Process management: the model on first use, worker processes, their supervision, and
the embedded service (Redis + API + workers) that `floodgate replay` and the benches run.

`floodgate serve` and `floodgate replay --embedded` both run a small deployment on one
machine: an embedded redis-server (redisdb.EmbeddedRedis), N worker processes and the API.
This module starts and stops the children and keeps them alive: a worker that dies
(SIGKILL, a segfault in a native library, out of memory) is restarted with exponential
backoff and the reason is logged; an embedded redis-server that dies is restarted on the
same data directory (its append-only file brings every accepted post back).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

from service.config import Settings
from service.redisdb import EmbeddedRedis, connect

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


# --------------------------------------------------------------------------- embedded service


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _env(values: dict[str, str]) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _fds_to(path: Path) -> Iterator[None]:
    """Children started inside inherit stdout/stderr pointing at ``path`` (not the terminal)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = (os.dup(1), os.dup(2))
    with open(path, "ab") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


def run_worker(settings: Settings) -> None:
    """Entry point of a worker process (`floodgate worker` and the ones `serve` starts)."""
    from service.logs import configure_logging
    from service.pipeline import Moderator  # torch: only in the worker's own process
    from service.policy import load_policy
    from service.policy.parse import load_bundle
    from service.queue import Keys
    from service.store import PolicyRegistry
    from service.worker import Worker

    configure_logging(settings.log_format, settings.log_level)
    registry = PolicyRegistry(connect(settings.redis_url or ""), Keys(settings.key_prefix))
    live = registry.current()["live"]
    bundle = registry.bundle(live) if live else None
    # the live version in Redis wins over the file: the file may be mid-edit
    policy = load_bundle(bundle) if bundle else load_policy(settings.policy_path)
    moderator = Moderator.from_settings(settings, policy=policy)
    moderator.warm_up()
    worker = Worker(settings, moderator)
    worker.install_signal_handlers()
    parent = os.environ.get("FLOODGATE_PARENT_PID")
    # started by `serve`: stop (after the batch in hand) if serve itself is gone
    orphaned = (lambda: os.getppid() != int(parent)) if parent else None
    worker.run(until=orphaned)


class EmbeddedService:
    """Redis + API + N workers for one replay; a context manager (``with ... as svc``)."""

    def __init__(self, workers: int = 1, policy: Path | None = None,
                 torch_threads: int | None = None, log_dir: Path | None = None,
                 ready_timeout: float = 180.0) -> None:  # fmt: skip
        self.workers = workers
        self.policy = Path(policy).resolve() if policy else None
        cores = os.cpu_count() or 1
        # one torch thread pool per worker process: split the cores rather than oversubscribe
        self.torch_threads = torch_threads or max(1, cores // max(workers, 1))
        self.log_dir = log_dir
        self.ready_timeout = ready_timeout
        self.url = ""
        self.redis_url = ""
        self._tmp: Path | None = None
        self._redis = None
        self._api: subprocess.Popen | None = None
        self._procs: list[subprocess.Popen] = []
        self._readers: set[str] = set()
        self.log_path: Path | None = None

    def __enter__(self) -> EmbeddedService:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        from service.config import get_settings
        from service.policy import load_policy

        base = get_settings()
        settings = base.model_copy()
        settings.model_dir = base.resolved_model_dir.resolve()
        settings.policy_path = (self.policy or base.policy_path).resolve()
        load_policy(settings.policy_path)  # PolicyError (with file:line) before starting anything
        ensure_model(settings)
        self._tmp = Path(tempfile.mkdtemp(prefix="fg-replay-"))
        settings.data_dir = self._tmp
        log_dir = self.log_dir or self._tmp
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / "service.log"
        self._redis = EmbeddedRedis(self._tmp).start()
        self.redis_url = settings.redis_url = self._redis.url
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        env = {
            "REDIS_URL": self.redis_url,
            "FLOODGATE_DATA_DIR": str(self._tmp),
            "FLOODGATE_MODEL_DIR": str(settings.model_dir),
            "FLOODGATE_POLICY_PATH": str(settings.policy_path),
            "FLOODGATE_KEY_PREFIX": settings.key_prefix,
            "FLOODGATE_TORCH_THREADS": str(self.torch_threads),
            # scenario time is compressed (a day into a minute): an author's day of posts
            # would look like a burst, so the per-author limit is off for the embedded run
            "FLOODGATE_RATE_AUTHOR_PER_MIN": "0",
        }
        # the API first, so that it publishes the policy before any worker reads it
        with _env(env), _fds_to(self.log_path):
            self._api = subprocess.Popen(
                [sys.executable, "-m", "service", "api", "--host", "127.0.0.1",
                 "--port", str(port)],
                stdin=subprocess.DEVNULL, env=dict(os.environ),
            )  # fmt: skip
        self._wait(lambda: httpx.get(self.url + "/livez", timeout=1).status_code == 200,
                   "the API")  # fmt: skip
        self._wait(lambda: httpx.get(self.url + "/v1/policy", timeout=2).json().get("live"),
                   "the API to publish the policy")  # fmt: skip
        with _env(env), _fds_to(self.log_path):
            self._procs = start_workers(settings, self.workers)
        self._wait(lambda: self._consumers() >= self.workers, f"{self.workers} worker(s)")

    def _consumers(self) -> int:
        """Worker processes that are reading: distinct clients seen blocked in XREADGROUP
        (a worker only reads after loading and warming up its model)."""
        if any(p.poll() is not None for p in self._procs):
            raise RuntimeError(f"a worker exited at start-up (see {self.log_path})")
        try:
            for c in connect(self.redis_url).client_list():
                if c.get("cmd") == "xreadgroup":
                    self._readers.add(c.get("id"))
        except Exception:
            pass
        return len(self._readers)

    def _wait(self, ready, what: str) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self._api is not None and self._api.poll() is not None:
                raise RuntimeError(f"the API exited at start-up (see {self.log_path})")
            try:
                if ready():
                    return
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"timed out waiting for {what} (see {self.log_path})")

    def stop(self) -> None:
        if self._procs:
            stop_workers(self._procs)
            self._procs = []
        if self._api is not None:
            if self._api.poll() is None:
                self._api.terminate()
                try:
                    self._api.wait(15)
                except subprocess.TimeoutExpired:
                    self._api.kill()
                    self._api.wait()
            self._api = None
        if self._redis is not None:
            self._redis.stop()
            self._redis = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
