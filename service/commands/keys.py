"""`floodgate keys create | list | revoke`: API keys (service/auth.py)."""

from __future__ import annotations

import contextlib
import json

import typer

from service.config import Settings, get_settings

app = typer.Typer(help="API keys: create (shown once), list, revoke.", no_args_is_help=True)


@contextlib.contextmanager
def _keys_redis(settings: Settings):
    """REDIS_URL; else the embedded server of a running `serve`; else, so that keys can be made
    before the first start, the embedded server on the data dir for this command only (its
    AOF is fsynced on every write, and `serve` reads it when it starts)."""
    from redis import RedisError

    from service.redisdb import EmbeddedRedis, connect

    if settings.redis_url:
        yield connect(settings.redis_url)
        return
    embedded = EmbeddedRedis(settings.data_dir)
    if embedded.socket.exists():
        try:
            client = connect(embedded.url)
            client.ping()
        except RedisError:  # a socket left by a dead server: start one below
            pass
        else:
            yield client
            return
    with embedded:
        yield connect(embedded.url)


def _key_store(client):
    from service.auth import KeyStore
    from service.queue import Keys

    return KeyStore(client, Keys(get_settings().key_prefix))


@app.command("create")
def keys_create(
    name: str = typer.Option(..., help="who or what holds the key (unique among active keys)"),
    role: list[str] = typer.Option(..., help="submit, read, review, admin (repeat or a,b)"),
) -> None:
    """Create a key and print it once: only its hash is stored."""
    from service.auth import KeyStoreError

    with _keys_redis(get_settings()) as client:
        try:
            created = _key_store(client).create(name, role)
        except KeyStoreError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
    info = created.info
    typer.echo(f"created key {info.id} '{info.name}' with roles {', '.join(info.roles)}", err=True)
    typer.echo(created.token)
    typer.echo("store it now: it cannot be shown again (Authorization: Bearer <key>)", err=True)


@app.command("list")
def keys_list(
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
    revoked: bool = typer.Option(False, "--all", help="include revoked keys"),
) -> None:
    """The keys: id, name, roles, hint, created, last used (never the key itself)."""
    from rich.console import Console
    from rich.table import Table

    with _keys_redis(get_settings()) as client:
        infos = _key_store(client).list(include_revoked=revoked)
    if as_json:
        typer.echo(json.dumps([i.to_dict() for i in infos], indent=2))
        return
    table = Table("id", "name", "roles", "hint", "created", "last used", "revoked")
    for i in infos:
        d = {k: (v or "-")[:16].replace("T", " ") if k.endswith("_at") else v
             for k, v in i.to_dict().items()}  # fmt: skip
        table.add_row(i.id, i.name, ",".join(i.roles), i.hint + "...", d["created_at"],
                      d["last_used_at"], d["revoked_at"])  # fmt: skip
    console = Console()
    if not console.is_terminal:  # piped: no 80-column truncation
        console = Console(width=200)
    console.print(table if infos else "no keys (floodgate keys create --name NAME --role ROLE)")


@app.command("revoke")
def keys_revoke(name_or_id: str) -> None:
    """Revoke an active key by name (or id): it stops working at once."""
    with _keys_redis(get_settings()) as client:
        info = _key_store(client).revoke(name_or_id)
    if info is None:
        typer.echo(f"no active key named or with id {name_or_id!r}", err=True)
        raise typer.Exit(1)
    typer.echo(f"revoked key {info.id} '{info.name}'")
