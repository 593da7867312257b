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
    out += review_findings(report)
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


def _h(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f} h"


def review_findings(report: dict) -> list[str]:
    """One sentence per language whose posts waited for a human."""
    out = []
    for g, r in report["review"].items():
        if not r["demand"]:
            continue
        t = r["time_to_human_decision"]
        over = r["overflow_periods"]
        line = (f"Review <b>'{_e(g)}'</b> ({r['capacity_per_scenario_h']:.3g} reviews per "
                f"scenario hour): <b>{r['demand']}</b> posts waited for a human: {r['queued']} "
                f"queued, <b>{r['overflowed']} limited by the fallback</b> pending review "
                f"({r.get('admitted', 0)} of them reached a reviewer later)")
        if r["limited_pending"]:
            line += f", {r['limited_pending']} limited by a rule pending review (never queued)"
        if r["demand"] > r["queued"] > 0:
            line += f"; the demand is {r['demand'] / r['queued']:.1f}x the queued posts"
        if over:
            line += (f"; the queue held its admission limit in {len(over)} period(s) from "
                     f"<b>{over[0]['start_s']} s</b>, {sum(p['end_s'] - p['start_s'] for p in over)} s "
                     f"in all")  # fmt: skip
        if r["resolved"]:
            w = r["review_wait"]
            line += (f"; reviewers resolved {r['resolved']}, time to human decision p50 "
                     f"{_h(t['p50_scenario_h'])} / p99 {_h(t['p99_scenario_h'])} of scenario "
                     f"time, of which review wait p50 {_h(w['p50_scenario_h'])} / p99 "
                     f"<b>{_h(w['p99_scenario_h'])}</b>")  # fmt: skip
            if r["within_sla"] is not None:
                line += f", {r['within_sla']:.0%} within the queue's SLA"
            line += f"; they confirmed {r['reviewed_precision']:.0%} of the flags they judged"
        pending = sum(r["unresolved"].values())
        line += (f". Lost: <b>{r['unaccounted']}</b>" + (f" ({pending} still queued, in "
                 "review or in a backlog at the end)" if pending else "") + ".")  # fmt: skip
        out.append(line)
    return out or ["Review: no post waited for a human."]


def _review_html(report: dict, out: Path) -> str:
    rows, prows, precision = [], [], []
    for g, r in report["review"].items():
        t, w, wf = r["time_to_human_decision"], r["review_wait"], r["without_fallback"]
        v = r["verdicts"]
        rows.append([g, f"{r['capacity_per_scenario_h']:.3g}", r["demand"], r["queued"],
                     f"{r['overflowed']} ({r['overflowed_violating']}) / {r.get('admitted', 0)}",
                     r["limited_pending"],
                     r["resolved"],
                     f"{v.get('allow', 0)} / {v.get('limit_reach', 0)} / {v.get('remove', 0)}",
                     f"{_h(t['p50_scenario_h'])} / {_h(t['p99_scenario_h'])}",
                     f"{_h(w['p50_scenario_h'])} / {_h(w['p99_scenario_h'])}",
                     f"{t['p50_s']} / {t['p99_s']}",
                     "-" if r["within_sla"] is None else f"{r['within_sla']:.0%}",
                     r["max_depth"], _h(r["max_expected_wait_h"]), len(r["overflow_periods"]),
                     r["unaccounted"], wf["peak"]])  # fmt: skip
        prows += [[g, p["start_s"], p["end_s"], p["start_scenario_h"], p["end_scenario_h"],
                   p["limited"]] for p in r["overflow_periods"]]  # fmt: skip
        precision += [[kind, x["name"], x["language"], x["judged"], x["confirmed"],
                       x["precision"]] for kind in ("rules", "categories")
                      for x in r["precision"][kind]]  # fmt: skip
    pools = report.get("review_service", {}).get("pools")
    return "".join([
        "<h2>Human review</h2>", _img(out, "review_queues.png"), _img(out, "review_flow.png"),
        "<p class=note>The replay's simulated reviewers claim and resolve the service's real "
        "review queues through the API, at each language's capacity read per scenario hour "
        "(the service's <i>capacity_per_hour</i>; in an embedded run the policy's pools are "
        "replaced by the scenario's sampled reviewers"
        + (": " + _e(", ".join(f"{k} {v['reviewers']} x {v['items_per_hour']:.3g}/h "
                               f"{'+'.join(v['languages'])}" for k, v in pools.items()))
           if pools else "") + "), and resolve each post with its ground truth. <i>Waited "
        "for a human</i> = queued for review + limited by the fallback pending review + limited "
        "by a rule with a <i>pending_..._review</i> label (which no queue holds). "
        "<i>Overflow</i>: a queue held its admission limit (capacity x SLA), so new posts took "
        "the fallback (shaded) and waited in the queue's backlog; a claim that made room admitted "
        "the best of them (<i>reviewed later</i>). <i>To decision</i>: from the post's submission to its verdict; "
        "<i>review wait</i>: from its automated decision to the verdict (what the SLA bounds)."
        "</p>",
        _table(["language", "reviews /scenario h", "waited for a human", "queued",
                "limited by fallback (violating) / reviewed later", "limited by a rule, pending review",
                "resolved", "allow / limit / remove",
                "to decision p50 / p99 (scenario)", "review wait p50 / p99 (scenario)",
                "to decision p50 / p99 (wall s)", "within SLA",
                "max depth", "max expected wait", "overflow periods", "lost",
                "peak without fallback"], rows),
        "<h3>Overflow periods</h3>" + _table(["language", "from (wall s)", "to", "from (scenario h)",
                                              "to", "posts limited"], prows) if prows else "",
        "<h3>Precision of the automated flags, measured by the reviewers</h3>"
        "<p class=note>Per rule and category that sent a post to review: judged = verdicts, "
        "confirmed = verdicts other than allow.</p>"
        + _table(["kind", "name", "language", "judged", "confirmed", "precision"], precision),
    ])  # fmt: skip


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
        ("waited for a human", s["review_demand"], ""),
        ("limited by the fallback", s["review_overflowed"], ""),
        ("resolved by reviewers", s["review_resolved"], ""),
        ("reviews lost", s["review_unaccounted"], "bad" if s["review_unaccounted"] else "good"),
    ]  # fmt: skip
    card_html = "".join(f'<div class="card {c}"><b>{_e(v)}</b><span>{_e(k)}</span></div>'
                        for k, v, c in cards)  # fmt: skip
    policy = report.get("policy") or {}
    opts = report["options"]
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
        _review_html(report, out),
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
        rows.append([f"review '{q}': waited for a human / limited by fallback / max depth / "
                     "overflow at",
                     f"{ra['demand']} / {ra['overflowed']} / {ra['max_depth']} / "
                     f"{_fmt_s(ra['overflow_at_s'])}",
                     f"{rb.get('demand')} / {rb.get('overflowed')} / {rb.get('max_depth')} / "
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
