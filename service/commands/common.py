"""What the commands share: building the model when it is missing, reaching Redis, and
printing a file's errors before exiting."""

from __future__ import annotations

from typing import NoReturn

import typer

from service.config import Settings


def ensure_model(settings: Settings) -> None:
    """Build the encoder from the bundled weights when it is not there yet (no download)."""
    from service.processes import ensure_model as build_if_missing

    build_if_missing(settings, say=lambda m: typer.echo(m, err=True))


def redis_for_cli(settings: Settings):
    """REDIS_URL, or the embedded server of a running `floodgate serve` in the data dir."""
    from service.redisdb import EmbeddedRedis, connect

    url = settings.redis_url
    if not url:
        embedded = EmbeddedRedis(settings.data_dir)
        if not embedded.socket.exists():
            typer.echo("set REDIS_URL, or run this where `floodgate serve` is running", err=True)
            raise typer.Exit(2)
        url = embedded.url
    return connect(url)


def exit_with(errors: list[str], code: int) -> NoReturn:
    """Print ``file:line:col: message`` errors on stderr and exit with ``code``."""
    for line in errors:
        typer.echo(line, err=True)
    raise typer.Exit(code) from None
