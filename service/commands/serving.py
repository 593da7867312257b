"""`floodgate serve | api | worker`: the service's processes."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import typer

from service.commands.common import ensure_model, exit_with
from service.config import Settings, get_settings

log = logging.getLogger("floodgate")


def _logging(settings: Settings | None = None) -> None:
    """JSON lines, or text on a terminal (FLOODGATE_LOG_FORMAT), for every process."""
    from service.logs import configure_logging

    s = settings or get_settings()
    configure_logging(s.log_format, s.log_level)


def _uvicorn_logs(settings: Settings) -> dict:
    from service.logs import log_config

    return log_config(settings.log_format, settings.log_level)


def _server_settings(host: str | None, port: int | None, insecure: bool) -> Settings:
    """The settings of `serve` / `api`, with the command line's address and --insecure."""
    settings = get_settings().model_copy()
    _logging(settings)
    settings.host = host or settings.host
    settings.port = port or settings.port
    settings.insecure = insecure or settings.insecure
    return settings


def _check_access_or_exit(settings: Settings) -> None:
    """Off loopback the API needs API keys (or an explicit --insecure): it must never be
    exposed open by accident."""
    from service.api.security import open_allowed
    from service.auth import KeyStore
    from service.queue import Keys
    from service.redisdb import connect

    if open_allowed(settings):
        return
    if not KeyStore(connect(settings.redis_url or ""), Keys(settings.key_prefix)).any_active():
        typer.echo(f"floodgate: refusing to serve on {settings.host} without API keys: create "
                   "one with `floodgate keys create --role admin --name ops`, or pass --insecure "
                   "to run open on purpose", err=True)  # fmt: skip
        raise typer.Exit(2)


def _check_policy_or_exit(path: Path) -> None:
    from service.policy import PolicyError, load_policy

    try:
        load_policy(path)
    except PolicyError as exc:
        exit_with(exc.errors, 1)


def serve(
    host: str = typer.Option(None, help="bind address (default 127.0.0.1)"),
    port: int = typer.Option(None, help="port (default 8000)"),
    workers: int = typer.Option(None, help="worker processes (default FLOODGATE_WORKERS or 1)"),
    insecure: bool = typer.Option(False, help="serve open (no API keys) off loopback, on purpose"),
) -> None:
    """API + workers in one command; starts a private Redis when REDIS_URL is unset."""
    import uvicorn

    from service.api import create_app
    from service.processes import Supervisor
    from service.redisdb import EmbeddedRedis

    settings = _server_settings(host, port, insecure)
    count = workers or settings.workers
    _check_policy_or_exit(settings.policy_path)
    ensure_model(settings)
    embedded = None
    if not settings.redis_url:
        embedded = EmbeddedRedis(settings.data_dir).start()
        settings.redis_url = embedded.url
        log.info("embedded redis-server at %s (data in %s)", embedded.url, embedded.dir)
    try:
        _check_access_or_exit(settings)
    except typer.Exit:
        if embedded:
            embedded.stop()
        raise
    # workers (and the embedded Redis) are restarted when they die, with backoff
    supervisor = Supervisor(settings, count, embedded).start()
    # uvicorn handles SIGTERM/SIGINT itself, then restores the previous handlers and
    # re-raises the signal; a no-op handler here lets the cleanup below run afterwards.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    try:
        uvicorn.run(create_app(settings), host=settings.host, port=settings.port,
                    log_config=_uvicorn_logs(settings))  # fmt: skip
    finally:
        log.info("stopping %d worker(s)", count)
        supervisor.stop()
        if embedded:
            embedded.stop()
            log.info("embedded redis-server stopped")


def api(
    host: str = typer.Option(None, help="bind address"),
    port: int = typer.Option(None, help="port"),
    insecure: bool = typer.Option(False, help="serve open (no API keys) off loopback, on purpose"),
) -> None:
    """Run only the API (needs REDIS_URL)."""
    import uvicorn

    from service.api import create_app

    settings = _server_settings(host, port, insecure)
    if not settings.redis_url:
        typer.echo("floodgate api: set REDIS_URL (or use `floodgate serve`)", err=True)
        raise typer.Exit(2)
    _check_access_or_exit(settings)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port,
                log_config=_uvicorn_logs(settings))  # fmt: skip


def worker() -> None:
    """Run one worker (needs REDIS_URL). Scale by running more of them."""
    # torch's OpenMP threads sleep when idle instead of spinning: on a shared machine the
    # spinning took the CPU the API, Redis and the other workers needed (bench/sync_throughput.py
    # on the 2-core VM: queued 27 -> 102 posts/s, sync 15 -> 44). Read before torch loads;
    # an operator's own OMP_WAIT_POLICY wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from service.policy import PolicyError
    from service.processes import run_worker

    settings = get_settings()
    if not settings.redis_url:
        typer.echo("floodgate worker: set REDIS_URL (or use `floodgate serve`)", err=True)
        raise typer.Exit(2)
    ensure_model(settings)
    try:
        run_worker(settings)
    except PolicyError as exc:
        exit_with(exc.errors, 1)
