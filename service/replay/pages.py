"""The replay's report directory: report.json, the plots and a self-contained report.html
(plots embedded as base64), with the summary sentences (``findings``) and the policy
comparison section."""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from typing import Any

from service.replay.analysis import SLO_MS
from service.replay.metrics import ACTIONS
from service.replay.plots import plot_all

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1200px;
color:#222;padding:0 16px}
h1{font-size:24px;margin-bottom:4px}h2{font-size:19px;margin-top:32px;border-bottom:1px solid #ddd}
.sub{color:#666;font-size:13px}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:14px 0}
.card{border:1px solid #ddd;border-radius:6px;padding:8px 12px;min-width:120px;background:#fafafa}
.card b{display:block;font-size:20px}.card span{font-size:12px;color:#555}
.bad{background:#ffebee;border-color:#e57373}.good{background:#e8f5e9;border-color:#81c784}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}
ul.findings li{margin:4px 0}
img{max-width:100%;border:1px solid #eee;margin:8px 0}
.note{font-size:12px;color:#555}
"""


def _e(x: Any) -> str:
    return html.escape(str(x))


def _table(head: list[str], rows: list[list[Any]]) -> str:
    h = "".join(f"<th>{_e(c)}</th>" for c in head)
    body = "".join("<tr>" + "".join(f"<td>{'' if c is None else _e(c)}</td>" for c in r) + "</tr>"
                   for r in rows)  # fmt: skip
    return f"<table><tr>{h}</tr>{body}</table>"


def _img(out: Path, name: str) -> str:
    data = base64.b64encode((out / name).read_bytes()).decode()
    return f'<img alt="{_e(name)}" src="data:image/png;base64,{data}">'


def _fmt_s(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f} s"


def findings(report: dict) -> list[str]:
    """The summary sentences at the top of the report."""
    s = report["summary"]
    out = []
    sus = s["sustainable_input_rate"]
    sat = s["saturated_decision_rate"]
    line = (f"Sustainable throughput: kept up (lag and p99 under 2 s) with up to "
            f"<b>{sus:.1f} posts/s</b> of input (10 s average)" if sus > 0 else
            "Sustainable throughput: the service never kept up (lag and p99 under 2 s) for "
            "10 s in a row")  # fmt: skip
    line += (f"; input peaked at {s['input_peak_rate']:.1f} posts/s at {s['input_peak_at_s']} s."
             if s["input_peak_rate"] > sus + 0.05 else
             f", the run's peak input rate (at {s['input_peak_at_s']} s): the service was not "
             "saturated.")  # fmt: skip
    if sat:
        line += (f" While a backlog stood ({s['saturated_seconds']} s) the workers decided "
                 f"<b>{sat:.1f} posts/s</b>: that is the capacity at this worker count.")
    out.append(line)
    if s["backlog_started_s"] is None:
        out.append(f"No backlog: the consumer lag never stayed over 2 s "
                   f"(max queue {s['max_queue']} posts, max lag {s['max_lag_ms']} ms).")
    else:
        drained = (f"drained at {s['backlog_drained_s']} s, "
                   f"<b>{s['backlog_drain_duration_s']} s</b> after it started"
                   if s["backlog_drained_s"] is not None else "<b>not drained</b> within the run")
        out.append(f"Backlog started to grow at <b>{s['backlog_started_s']} s</b> "
                   f"(lag over 2 s), peaked at {s['max_queue']} posts at {s['max_queue_at_s']} s, "
                   f"{drained}.")
    ov = []
    for q, r in report["review"].items():
        if r["overflow_at_s"] is not None:
            clear = ("never (no reviewers)" if r["clear_scenario_h"] is None
                     else f"{r['clear_scenario_h']:.1f} scenario hours")
            ov.append(f"the <b>'{_e(q)}'</b> review queue overflowed at <b>{r['overflow_at_s']} s</b> "
                      f"(more than one scenario hour of its {r['capacity_per_scenario_h']:.3g} "
                      f"reviews/h), peaked at {r['peak']:.0f} and ends with {r['final']:.0f} "
                      f"waiting: clearing them takes {clear}")  # fmt: skip
    out.append(("Review: " + "; ".join(ov) + ".") if ov else
               "Review: no language's review queue overflowed (each stayed under one scenario "
               "hour of its reviewers' capacity).")  # fmt: skip
    acc = report["accounting"]
    good = acc["lost"] == 0 and acc["duplicates"] == 0 and not acc.get("undecided")
    if acc.get("undecided"):
        out.append(f"<b>Not drained</b>: {acc['undecided']} accepted posts were still queued "
                   f"(status pending) when the drain timeout ran out; they are not lost, the "
                   f"service decides them after the run. Dead-lettered: {acc['dead_lettered']}.")
    out.append(f"Exactly-once: {acc['accepted']} accepted, {acc['decided']} decided, "
               f"<b>{acc['lost']} lost, {acc['duplicates']} duplicated</b>"
               + (" (every accepted post has exactly one decision)." if good else
                  " (the rest are still queued, see above)." if not acc["lost"]
                  and not acc["duplicates"] else
                  f". Lost ids (first): {_e(', '.join(acc['lost_ids'][:10]))}; duplicated: "
                  f"{_e(', '.join(list(acc['duplicate_ids'])[:10]))}."))  # fmt: skip
    out.append(f"Latency p50 / p95 / p99: {s['p50_ms']} / {s['p95_ms']} / <b>{s['p99_ms']} ms</b>; "
               f"errors {s['errors']} (HTTP {s['http_errors']}, rejected {s['rejected']}); "
               f"dead letters {s['dead_letters']}.")  # fmt: skip
    return out


def _quality_html(q: dict) -> str:
    rows = [[r["category"], r["language"], r["support"], r["tp"], r["fp"], r["fn"],
             "-" if r["precision"] is None else f"{r['precision']:.2f}",
             "-" if r["recall"] is None else f"{r['recall']:.2f}"]
            for r in q["rows"]]  # fmt: skip
    kinds = q["actions_by_kind"]
    krows = [[k, sum(v.values()), *[v.get(a, 0) for a in ACTIONS]] for k, v in kinds.items()]
    return (f"<p class=note>{_e(q['definition'])}. Language = the generator's (truth) "
            "language; 'all' = every language.</p>"
            + _table(["category", "language", "support", "TP", "FP", "FN", "precision",
                      "recall"], rows)
            + "<h3>Actions per truth kind</h3>"
            + _table(["kind", "posts", *ACTIONS], krows))  # fmt: skip


def render_html(report: dict, out: Path, plots: list[str], extra: str = "") -> str:
    s = report["summary"]
    acc = report["accounting"]
    cards = [
        ("sent", s["sent"], ""), ("decided", s["decided"], ""),
        ("lost", s["lost"], "bad" if s["lost"] else "good"),
        ("duplicates", s["duplicates"], "bad" if s["duplicates"] else "good"),
        ("p99", f"{s['p99_ms']} ms", "bad" if (s["p99_ms"] or 0) > SLO_MS else "good"),
        ("sustainable", f"{s['sustainable_input_rate']}/s", ""),
        ("max queue", s["max_queue"], ""), ("errors", s["errors"], "bad" if s["errors"] else ""),
    ]  # fmt: skip
    card_html = "".join(f'<div class="card {c}"><b>{_e(v)}</b><span>{_e(k)}</span></div>'
                        for k, v, c in cards)  # fmt: skip
    policy = report.get("policy") or {}
    opts = report["options"]
    review_rows = [[q, f"{r['capacity_per_scenario_h']:.3g}", f"{r['capacity_per_wall_s']:.3g}",
                    r["queued"],
                    r["peak"], _fmt_s(r["growing_from_s"]), _fmt_s(r["overflow_at_s"]), r["final"],
                    "never" if r["clear_scenario_h"] is None else r["clear_scenario_h"]]
                   for q, r in report["review"].items()]  # fmt: skip
    lat = report["latency"]
    fl = lat["feed_delivery"]
    sent_lang = report["totals"]["sent_by_language"]
    parts = [
        f"<h1>Floodgate replay: {_e(report['scenario'])}</h1>",
        f"<div class=sub>target {_e(report['target'])} · policy {_e(policy.get('name'))} "
        f"{_e(policy.get('version'))} · seed {_e(opts.get('seed'))} · rate scale "
        f"{_e(report['rate_scale'])} · time scale {report['time_scale']:.6g} scenario s per wall s"
        f" · workers {_e(opts.get('workers', '?'))} · ids {_e(report['id_prefix'])}-*</div>",
        f"<div class=cards>{card_html}</div>",
        "<h2>Summary</h2><ul class=findings>"
        + "".join(f"<li>{f}</li>" for f in findings(report)) + "</ul>",
        extra,
        "<h2>Input</h2>", _img(out, "input_rate.png"),
        "<p class=note>Posts sent by truth language: "
        + ", ".join(f"{_e(k)} {v}" for k, v in sent_lang.items() if v)
        + f". Sending fell behind schedule by at most {report['send_slip_ms']['max']} ms "
          f"(p99 {report['send_slip_ms']['p99']} ms).</p>",
        "<h2>Queue</h2>", _img(out, "queue.png"),
        "<h2>Latency</h2>", _img(out, "latency.png"),
        "<p class=note>Latency = " + _e(lat["definition"]) + f". Over the run: p50 "
        f"{lat['p50_ms']} ms, p95 {lat['p95_ms']} ms, p99 {lat['p99_ms']} ms, max {lat['max_ms']} "
        f"ms. Measured at the replay's feed reader instead (request start -> feed delivery): "
        f"p50 {fl['p50_ms']}, p99 {fl['p99_ms']} ms.</p>",
        "<h2>Actions</h2>", _img(out, "actions.png"),
        "<h2>Review queues</h2>", _img(out, "review_backlog.png"),
        "<p class=note>Simulated: each wall second the decisions with action <i>review</i> of a "
        "detected language join that language's queue; the scenario's reviewers (scaled with the "
        "rate scale, converted to wall time with the time scale) drain it. <i>Overflow</i>: more "
        "than one scenario hour of reviewer work waiting.</p>",
        _table(["queue", "reviewers /scenario h", "/wall s", "reviews queued", "peak backlog",
                "growing from", "overflow at", "backlog at end", "scenario h to clear"],
               review_rows),  # fmt: skip
        "<h2>Exactly-once accounting</h2>",
        _table(["accepted", "decided", "lost", "duplicated", "still queued at the end",
                "dead-lettered", "unexpected", "drained"],
               [[acc["accepted"], acc["decided"], acc["lost"], acc["duplicates"],
                 acc["undecided"], acc["dead_lettered"], acc["unexpected"],
                 acc["drained"]]]),  # fmt: skip
        ("<p class=note>Lost: " + _e(", ".join(f"{k} ({v})" for k, v in
                                          list(acc["lost_status"].items())[:30])) + "</p>")
        if acc["lost"] else "",
        "<h2>Quality against the ground truth</h2>", _quality_html(report["quality"]),
        "<p class=note>All figures and per-second series are in report.json.</p>",
    ]
    return (f"<!doctype html><html><head><meta charset=utf-8><title>Floodgate replay "
            f"{_e(report['scenario'])}</title><style>{CSS}</style></head><body>"
            + "\n".join(parts) + "</body></html>")  # fmt: skip


def write(report: dict, out: Path, extra_html: str = "") -> Path:
    out.mkdir(parents=True, exist_ok=True)
    plots = plot_all(report, out)
    report["plots"] = plots
    (out / "report.json").write_text(json.dumps(report, indent=1, ensure_ascii=False,
                                                default=_json_default))  # fmt: skip
    page = out / "report.html"
    page.write_text(render_html(report, out, plots, extra_html), encoding="utf-8")
    return page


def _json_default(x: Any) -> Any:
    if isinstance(x, float) and math.isinf(x):
        return None
    if isinstance(x, Path):
        return str(x)
    return str(x)


def compare_html(cmp: dict, out: Path) -> str:
    a, b = cmp["a"], cmp["b"]

    def pol(x: dict) -> str:
        p = x.get("policy") or {}
        return f"{x['label']} ({p.get('name')} {p.get('version')})"

    head = ["", pol(a), pol(b)]
    rows = [[k, a[k], b[k]] for k in ("p50_ms", "p95_ms", "p99_ms", "throughput", "max_queue",
                                       "lost", "duplicates")]  # fmt: skip
    for act in ACTIONS:
        rows.append([f"action {act}", a["actions"].get(act, 0), b["actions"].get(act, 0)])
    for q in a["review"]:
        ra, rb = a["review"][q], b["review"].get(q, {})
        rows.append([f"review '{q}': queued / peak / overflow at",
                     f"{ra['queued']} / {ra['peak']:.0f} / {_fmt_s(ra['overflow_at_s'])}",
                     f"{rb.get('queued')} / {rb.get('peak', 0):.0f} / "
                     f"{_fmt_s(rb.get('overflow_at_s'))}"])  # fmt: skip
    trows = [[t["language"], t["kind"], t["a"], t["b"], t["count"]]
             for t in cmp["transitions"][:40]]  # fmt: skip
    grows = [[k.split("|")[0], k.split("|")[1], v.get("posts", 0), v.get("changed", 0)]
             for k, v in cmp["by_language_kind"].items() if v.get("changed")]  # fmt: skip
    return ("<h2>Policy comparison</h2>"
            f"<p>The same influx (same seed) replayed under <b>{_e(pol(a))}</b> and "
            f"<b>{_e(pol(b))}</b>: {cmp['changed']} of {cmp['posts_compared']} posts "
            f"({cmp['changed_share']:.1%}) got a different action.</p>"
            + _img(out, "compare.png") + _table(head, rows)
            + "<h3>Decision changes (truth language, kind, action A -> action B)</h3>"
            + _table(["language", "kind", "A", "B", "posts"], trows)
            + "<h3>Changed posts per language and kind</h3>"
            + _table(["language", "kind", "posts", "changed"], grows)
            + "<p class=note>Full reports: <a href='a/report.html'>A</a> · "
              "<a href='b/report.html'>B</a></p>")  # fmt: skip
