"""`floodgate policy check | shadow-report | backtest | diff | schema`: policy files offline,
and the running shadow policy."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from service.commands.common import exit_with, redis_for_cli
from service.config import get_settings

app = typer.Typer(
    help="Validate, backtest, diff and shadow-test policy files.", no_args_is_help=True
)


@app.command("check")
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


@app.command("shadow-report")
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
    client = redis_for_cli(settings)
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
        exit_with(exc.errors, 2)
    except (bt.DataError, FileNotFoundError) as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    render(result, Console())
    if as_json:
        as_json.write_text(json.dumps(result, indent=2, ensure_ascii=False, default=str))


# typer needs each command's options spelled out; the declarations above are shared
@app.command("backtest")
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


@app.command("diff")
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


@app.command("schema")
def policy_schema() -> None:
    """Print the JSON Schema of policy files (for editors)."""
    from service.policy import policy_json_schema

    typer.echo(json.dumps(policy_json_schema(), indent=2))


@app.command("tune")
def policy_tune(
    policy: Path,
    split: str = typer.Option(
        "calibration", help="the training data's split to tune on: calibration (or test, to measure)"
    ),
    min_positives: int = typer.Option(20, help="cells with fewer positives keep their threshold"),
    min_precision: str = typer.Option(
        "en=0.7", help="per language, lower a threshold only while its decisions stay this precise"
    ),
    write: bool = typer.Option(False, help="write the thresholds into POLICY (else only print)"),
    as_json: Path = typer.Option(None, "--json", help="also write the rows here"),
) -> None:
    """Per category x language thresholds from the policy's own decisions on labelled data
    (the split of the data the served heads were trained on): the best F1 of 'caught by a
    rule on the category' (end to end, through pipeline.judge)."""
    from service.backtest.scoring import as_policy, open_cache, score_posts
    from service.backtest.tuning import decision_table, set_thresholds, split_posts, tune
    from service.classifier.heads import served_heads_manifest
    from service.policy import PolicyError, load_policy

    if split not in ("calibration", "test"):
        exit_with([f"error: --split must be calibration or test, not {split!r}"], 2)
    try:
        floors = {k.strip(): float(v) for k, v in (p.split("=") for p in min_precision.split(",") if p)}
    except ValueError:
        exit_with([f"error: --min-precision wants LANG=VALUE[,LANG=VALUE], not {min_precision!r}"], 2)
    lp = as_policy(policy)
    posts, known = split_posts(split, served_heads_manifest())
    scored = score_posts(posts, lp, open_cache(None, None))
    result = tune(scored, lp, known, min_positives=min_positives, min_precision=floors)
    for r in result["rows"]:
        b, a = r["before"], r["after"]
        typer.echo(f"{r['category']:>10} {r['language']}  positives {r['positives']:>4}  "
                   f"threshold {r['threshold']:.3f} -> {r['tuned']:.3f}  "
                   f"P/R/F1 {b['precision']}/{b['recall']}/{b['f1']} -> "
                   f"{a['precision']}/{a['recall']}/{a['f1']}  ({r['reason']})")  # fmt: skip
    if as_json:
        rows = decision_table(scored, lp, known)
        as_json.write_text(json.dumps({**result, "decisions_before": rows}, indent=1) + "\n")
    if write and result["thresholds"]:
        text = set_thresholds(policy.read_text("utf-8"), result["thresholds"])
        policy.write_text(text, "utf-8")
        try:
            load_policy(policy)
        except PolicyError as exc:
            exit_with([f"error: {policy} no longer loads after writing thresholds: {exc}"], 1)
        typer.echo(f"wrote thresholds for {len(result['thresholds'])} categories into {policy}")
