"""`floodgate review report`: what reviewers' verdicts measured."""

from __future__ import annotations

import json

import typer

from service.commands.common import redis_for_cli
from service.config import get_settings

app = typer.Typer(help="Human review: what reviewers' verdicts measured.", no_args_is_help=True)


@app.command("report")
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
    report = summary(*read_report(redis_for_cli(settings), settings.key_prefix))
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
