"""A backtest or diff result printed as rich tables (the ``floodgate policy`` commands)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rich.table import Table

from service.backtest.metrics import CAUGHT, FIRED, share
from service.policy import ACTIONS


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _clip(text: str, n: int = 70) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def render_backtest(result: Mapping[str, Any], console: Any) -> None:
    """Print a ``backtest`` result as rich tables on ``console`` (a ``rich.console.Console``)."""
    d = result["data"]
    langs = ", ".join(f"{k} {v}" for k, v in result["languages"].items())
    console.print(
        f"[bold]{result['policy']['name']}[/] ({result['policy']['version']}) on "
        f"{d['source']}: {d['rows']} posts ({d['benign']} benign); languages: {langs}; "
        f"market: {result['market']}"
    )
    if d["skipped"]:
        console.print(f"[yellow]{len(d['skipped'])} rows skipped[/], first: {d['skipped'][0]}")
    markets = list(result["actions_by_market"])
    for table in (
        _categories(result),
        _caught(result, markets),
        _actions(result, markets),
        _rules(result),
    ):
        console.print(table)


def _table(title: str, columns: Sequence[str], figures: Sequence[str]) -> Table:
    """A table with these columns; ``figures`` are right-aligned, the rest left."""
    t = Table(title=title, title_justify="left")
    for col in columns:
        t.add_column(col, justify="right" if col in figures else "left")
    return t


def _categories(result: Mapping[str, Any]) -> Table:
    figures = ("threshold", "posts", "labelled", "fired", "TP", "FP", "FN")
    figures += ("precision", "recall", "F1")
    t = _table(f"Categories — {FIRED}", ("category", "lang", *figures), figures)
    shown = [r for r in result["categories"] if r["labelled_in_data"]]
    for r in shown:
        if r["language"] == "all" and t.row_count:
            t.add_section()
        t.add_row(
            r["category"] if r["language"] == "all" else "",
            r["language"],
            f"{r['threshold']:.2f}",
            str(r["posts"]),
            str(r["support"]),
            str(r["fired"]),
            str(r["tp"]),
            str(r["fp"]),
            str(r["fn"]),
            _fmt(r["precision"]),
            _fmt(r["recall"]),
            _fmt(r["f1"]),
        )
    others = [
        f"{r['category']} {r['fired']}"
        for r in result["categories"]
        if r["language"] == "all" and not r["labelled_in_data"]
    ]
    if others:
        t.caption = "not labelled in this data (posts fired on): " + ", ".join(others)
    return t


def _caught(result: Mapping[str, Any], markets: list[str]) -> Table:
    figures = ("labelled", "caught", "share", *markets, "by a rule on it", "share")
    t = _table(f"Labelled posts caught — {CAUGHT}", ("category", "lang", *figures), figures)

    def by_market(r: Mapping[str, Any], total: int) -> list[str]:
        return [_pct(share(r["caught_by_market"].get(m, 0), total)) for m in markets]

    for r in result["caught"]:
        t.add_row(
            r["category"] if r["language"] == "all" else "",
            r["language"],
            str(r["positives"]),
            str(r["caught"]),
            _pct(r["share"]),
            *by_market(r, r["positives"]),
            "-" if r["caught_by_category_rule"] is None else str(r["caught_by_category_rule"]),
            _pct(r["share_by_category_rule"]),
        )
    for r in result["benign_actioned"]:
        t.add_row(
            "(benign)" if r["language"] == "all" else "",
            r["language"],
            str(r["benign"]),
            str(r["actioned"]),
            _pct(r["share"]),
            *by_market(r, r["benign"]),
            "",
            "",
            style="dim",
        )
    t.caption = (
        "per market: share with a non-allow action there; "
        "(benign): unlabelled posts that got a non-allow action"
    )
    return t


def _actions(result: Mapping[str, Any], markets: list[str]) -> Table:
    title = "Actions by language (own market, then per market)"
    t = _table(title, ("lang", "market", *ACTIONS), ACTIONS)
    for lang, counts in result["actions"].items():
        t.add_row(lang, "own", *(str(counts.get(a, "")) for a in ACTIONS), style="bold")
        for m in markets:
            mc = result["actions_by_market"][m].get(lang, {})
            t.add_row("", m, *(str(mc.get(a, "")) for a in ACTIONS))
    return t


def _rules(result: Mapping[str, Any]) -> Table:
    columns = ("rule", "action", "matched", "decided", "by market", "labelled", "precision")
    t = _table(
        "Rules (own market)", (*columns, "example"), ("matched", "decided", "labelled", "precision")
    )
    for r in result["rules"]:
        ex = r["examples"][0] if r["examples"] else None
        t.add_row(
            r["rule"],
            r["action"],
            str(r["matched"]),
            str(r["decided"]),
            " ".join(f"{m}:{n}" for m, n in r["matched_by_market"].items()),
            "-" if r["labelled_matches"] is None else str(r["labelled_matches"]),
            _fmt(r["precision"]),
            f"[{ex['language']}] {_clip(ex['text'], 50)}" if ex else "",
        )
    t.caption = "precision: matches labelled with a category the rule tests"
    return t


def render_diff(result: Mapping[str, Any], console: Any) -> None:
    """Print a ``diff`` result as rich tables on ``console``."""
    o, n = result["old"], result["new"]
    console.print(
        f"[bold]{o['source']}[/] ({o['version']}) → [bold]{n['source']}[/] ({n['version']}) on "
        f"{result['data']['source']}: {result['changed_posts']} of {result['posts']} posts "
        f"change action; {result['rules_only_changed']} more change rules only"
        + ("" if result["scores_reused"] else " (scorer anchors differ: scores recomputed)")
    )
    if not result["changed_posts"] and not result["by_rule"]:
        return
    t = _table(
        "Action changes (market, old → new, language)",
        ("market", "change", "lang", "posts", "labelled", "example"),
        ("posts", "labelled"),
    )
    for g in result["by_transition"]:
        colour = "red" if g["direction"] == "stricter" else "green"
        ex = g["examples"][0]
        t.add_row(
            g["market"],
            f"[{colour}]{g['old']} → {g['new']}[/]",
            g["language"],
            str(g["count"]),
            str(g["labelled"]),
            _clip(ex["text"], 60),
        )
    console.print(t)
    t = _table(
        "Rules that appeared / disappeared",
        ("rule", "change", "lang", "posts", "action changed", "markets", "example"),
        ("posts", "action changed"),
    )
    for g in result["by_rule"]:
        t.add_row(
            g["rule"],
            ("+ " if g["change"] == "appeared" else "- ") + g["change"],
            g["language"],
            str(g["count"]),
            str(g["action_changed"]),
            ",".join(g["markets"]),
            _clip(g["examples"][0]["text"], 50),
        )
    console.print(t)
