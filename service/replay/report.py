"""Replay report: figures and per-second series from a ``RunData``, PNG plots (matplotlib,
Agg), report.json and a self-contained report.html (plots embedded as base64).

Time axis: wall seconds since the replay started sending. Latency is
``decided_at - request start`` (see ``service.replay.metrics``); a decision is counted in
the second of its ``decided_at``, a sent post in the second its request started.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

from service.replay.metrics import (
    ACTIONS,
    account,
    first_run,
    latency_summary,
    moving_average,
    percentile,
    quality,
    review_queue_for,
    review_verdict,
    simulate_backlog,
)
from service.replay.runner import RunData
from service.replay.scenario import KIND_CATEGORIES, LANGUAGES, Scenario

SLO_MS = 2000.0  # "keeping up": p99 latency and consumer lag under 2 s
CATEGORIES = sorted({c for cats in KIND_CATEGORIES.values() for c in cats})
ACTION_COLORS = {"allow": "#4caf50", "label": "#90caf9", "limit_reach": "#ffb300",
                 "review": "#8e24aa", "remove": "#d32f2f"}  # fmt: skip
LANG_COLORS = {"zh-Hans": "#c62828", "zh-Hant": "#ef9a9a", "en": "#1565c0",
               "mixed": "#7e57c2", "other": "#9e9e9e"}  # fmt: skip


# --------------------------------------------------------------------------- analysis


def analyse(run: RunData, scenario: Scenario) -> dict[str, Any]:
    """Every figure of a run (JSON-ready)."""
    t0 = run.t0
    first: dict[str, dict] = {}
    feed_ts: dict[str, float] = {}
    for ts, d in run.decisions:
        if d["post_id"] not in first:
            first[d["post_id"]] = d
            feed_ts[d["post_id"]] = ts
    last_dec = max((d["decided_ts"] or 0 for d in first.values()), default=0.0)
    end = max(run.drain_end, run.send_end, last_dec, t0 + 1)
    n = max(int(math.ceil(end - t0)) + 1, 1)

    def sec(ts: float) -> int:
        return min(max(int(ts - t0), 0), n - 1)

    zeros = lambda: [0] * n  # noqa: E731
    sent_by_lang: dict[str, list[int]] = {lang: zeros() for lang in LANGUAGES}
    for _wall, started, truth in run.sent.values():
        sent_by_lang.setdefault(truth["language"], zeros())[sec(started)] += 1
    sent_total = [sum(v[i] for v in sent_by_lang.values()) for i in range(n)]

    by_action: dict[str, list[int]] = {a: zeros() for a in ACTIONS}
    by_lang_action: dict[str, dict[str, list[int]]] = defaultdict(dict)
    lat_by_sec: list[list[float]] = [[] for _ in range(n)]
    latencies, feed_lat = [], []
    for pid, d in first.items():
        ts = d["decided_ts"] or feed_ts[pid]
        s = sec(ts)
        by_action.setdefault(d["action"], zeros())[s] += 1
        by_lang_action[d["language"]].setdefault(d["action"], zeros())[s] += 1
        if pid in run.accepted:
            ms = (ts - run.accepted[pid]) * 1000
            latencies.append(ms)
            lat_by_sec[s].append(ms)
            feed_lat.append((feed_ts[pid] - run.accepted[pid]) * 1000)
    decided_total = [sum(v[i] for v in by_action.values()) for i in range(n)]
    lat_series = {q: [_r(percentile(v, q)) for v in lat_by_sec] for q in (50, 95, 99)}

    # /v1/stats, one sample per second (the last in each), carried forward over gaps
    length: list[float | None] = [None] * n
    lag: list[float | None] = [None] * n
    pending: list[float | None] = [None] * n
    for ts, s in run.stats:
        i = sec(ts)
        length[i], lag[i], pending[i] = (s["stream"]["length"], s["stream"]["lag_ms"],
                                         s["stream"]["pending"])  # fmt: skip
    for series in (length, lag, pending):
        for i in range(1, n):
            if series[i] is None:
                series[i] = series[i - 1]
    errors = zeros()
    for ts, _ in run.errors:
        errors[sec(ts)] += 1
    rejected_by_sec = zeros()
    for pid in run.rejected:
        rejected_by_sec[sec(run.sent[pid][1])] += 1

    # review queues per detected language, against the scenario's reviewers
    ts_scale = run.time_scale
    rate_scale = float(run.options.get("rate_scale") or 1.0)
    caps = {q: scenario.review_capacity_per_hour(q, rate_scale) / 3600.0 * ts_scale
            for q in sorted(set(scenario.review_capacity) | {"other"})}  # fmt: skip
    arrivals: dict[str, list[int]] = {q: zeros() for q in caps}
    for pid, d in first.items():
        if d["action"] == "review":
            q = review_queue_for(d["language"], caps)
            arrivals[q][sec(d["decided_ts"] or feed_ts[pid])] += 1
    hour_wall = 3600.0 / ts_scale  # one scenario hour in wall seconds
    verdicts = {q: review_verdict(q, arrivals[q], caps[q], hour_wall) for q in caps}
    review = {
        q: {
            "capacity_per_wall_s": caps[q],
            "capacity_per_scenario_h": scenario.review_capacity_per_hour(q, rate_scale),
            **{k: v for k, v in vars(verdicts[q]).items() if k not in ("queue", "arrivals")},
            "queued": int(verdicts[q].arrivals),
            "arrivals": arrivals[q],
            "backlog": [round(x, 3) for x in simulate_backlog(arrivals[q], caps[q])],
            "clear_scenario_h": (None if math.isinf(verdicts[q].clear_s)
                                 else round(verdicts[q].clear_s / hour_wall, 2)),
        }
        for q in caps
    }  # fmt: skip

    acc = account(run.accepted, [d["post_id"] for _, d in run.decisions])
    # no decision in the feed: still queued when the drain timed out, dead-lettered, or lost
    undecided = [p for p in acc.lost if run.lost_status.get(p) == "pending"]
    failed = [p for p in acc.lost if run.lost_status.get(p) == "failed"]
    lost = [p for p in acc.lost if run.lost_status.get(p) not in ("pending", "failed")]
    acc = replace(acc, lost=lost)
    pairs = [(run.sent[pid][2], d) for pid, d in first.items() if pid in run.sent]
    qual = quality(pairs, CATEGORIES)

    # phases on the wall-time axis
    phases = [{"name": p.name, "start_s": p.start_s / ts_scale, "end_s": p.end_s / ts_scale}
              for p in scenario.phases]  # fmt: skip
    summary = _summary(run, n, sent_total, decided_total, lat_series, length, lag, latencies,
                       acc, review, phases)  # fmt: skip
    summary["undecided"] = len(undecided)
    send_slip = [started - (run.t0 + wall) for wall, started, _ in run.sent.values()]
    return {
        "scenario": run.scenario,
        "target": run.target,
        "id_prefix": run.id_prefix,
        "policy": run.policy,
        "options": run.options,
        "time_scale": ts_scale,
        "rate_scale": rate_scale,
        "started_at": t0,
        "phases": phases,
        "summary": summary,
        "latency": {**latency_summary(latencies),
                    "definition": "decided_at (worker) - start of the batch request that "
                                  "carried the post (replay); both on this machine's clock "
                                  "when embedded",
                    "feed_delivery": latency_summary(feed_lat)},  # fmt: skip
        "send_slip_ms": {"p99": _r(percentile([x * 1000 for x in send_slip], 99)),
                         "max": _r(max(send_slip, default=0) * 1000)},  # fmt: skip
        "accounting": {**acc.as_dict(), "undecided": len(undecided),
                       "undecided_ids": undecided[:50], "dead_lettered": len(failed),
                       "dead_lettered_ids": failed[:50],
                       "lost_status": {p: run.lost_status.get(p) for p in lost[:200]},
                       "drained": run.drained, "resubmitted": run.resubmitted},  # fmt: skip
        "review": review,
        "quality": qual,
        "totals": {
            "sent_by_language": {k: sum(v) for k, v in sent_by_lang.items()},
            "decisions_by_action": {k: sum(v) for k, v in by_action.items()},
            "decisions_by_language": {lang: {a: sum(v) for a, v in acts.items()}
                                      for lang, acts in sorted(by_lang_action.items())},
            "errors": [msg for _, msg in run.errors][:200],
            "rejected": {pid: errs for pid, errs in list(run.rejected.items())[:50]},
        },  # fmt: skip
        "series": {
            "second": list(range(n)),
            "sent_by_language": sent_by_lang,
            "sent_total": sent_total,
            "decided_total": decided_total,
            "decisions_by_action": by_action,
            "decisions_by_language_action": by_lang_action,
            "latency_p50_ms": lat_series[50],
            "latency_p95_ms": lat_series[95],
            "latency_p99_ms": lat_series[99],
            "stream_length": length,
            "stream_pending": pending,
            "lag_ms": lag,
            "errors": errors,
            "rejected": rejected_by_sec,
        },
    }


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


def _summary(run: RunData, n, sent_total, decided_total, lat, length, lag, latencies, acc,
             review, phases) -> dict[str, Any]:  # fmt: skip
    lag0 = [x or 0 for x in lag]
    len0 = [x or 0 for x in length]
    # sustainable throughput: the highest 10-second average input rate during which every
    # second kept up (lag and that second's p99 under the SLO)
    ma = moving_average(sent_total, 10)
    healthy = [lag0[i] <= SLO_MS and (lat[99][i] is None or lat[99][i] <= SLO_MS)
               for i in range(n)]  # fmt: skip
    sustainable, sustainable_at = 0.0, None
    for i in range(9, n):
        if all(healthy[i - 9 : i + 1]) and ma[i] > sustainable:
            sustainable, sustainable_at = ma[i], i
    peak_in = max(range(n), key=lambda i: ma[i]) if n else 0
    # saturated: a queue stays (lag over the SLO): the decision rate then is what the
    # workers can do
    sat = [decided_total[i] for i in range(n) if lag0[i] > SLO_MS and len0[i] > 0]
    started = first_run(lag0, SLO_MS, 2)
    drained_at = None
    if started is not None:
        peak_len_at = max(range(started, n), key=lambda i: len0[i])
        drained_at = next((i for i in range(peak_len_at, n) if lag0[i] <= SLO_MS), None)
    sent = len(run.sent)
    decided = acc.decided
    dur = max(run.send_end - run.t0, 1e-9)
    active = [t for t, _ in run.decisions]
    last = max((d["decided_ts"] or t for t, d in run.decisions), default=run.send_end)
    overflow = {q: r["overflow_at_s"] for q, r in review.items() if r["overflow_at_s"] is not None}
    return {
        "sent": sent,
        "accepted": acc.accepted,
        "decided": decided,
        "lost": len(acc.lost),
        "duplicates": len(acc.duplicates),
        "rejected": len(run.rejected),
        "http_errors": len(run.errors),
        "errors": len(run.errors) + len(run.rejected),
        "dead_letters": max(run.dead_letters_after - run.dead_letters_before, 0),
        "send_s": round(dur, 1),
        "drain_s": round(max(last - run.send_end, 0.0), 1) if active else None,
        "drained": run.drained,
        "throughput": round(decided / max(last - run.t0, 1e-9), 2) if decided else 0.0,
        "input_peak_rate": round(ma[peak_in], 2) if n else 0.0,
        "input_peak_at_s": peak_in,
        "sustainable_input_rate": round(sustainable, 2),
        "sustainable_at_s": sustainable_at,
        "saturated_decision_rate": round(sum(sat) / len(sat), 2) if sat else None,
        "saturated_seconds": len(sat),
        "backlog_started_s": started,
        "backlog_drained_s": drained_at,
        "backlog_drain_duration_s": (drained_at - started
                                     if started is not None and drained_at is not None
                                     else None),  # fmt: skip
        "max_queue": max(len0, default=0),
        "max_queue_at_s": max(range(n), key=lambda i: len0[i]) if n else None,
        "max_lag_ms": max(lag0, default=0),
        "p50_ms": _r(percentile(latencies, 50)),
        "p95_ms": _r(percentile(latencies, 95)),
        "p99_ms": _r(percentile(latencies, 99)),
        "max_ms": _r(max(latencies)) if latencies else None,
        "review_overflow_at_s": overflow,
        "max_review_backlog": max((r["peak"] for r in review.values()), default=0.0),
        "phase_at_s": {p["name"]: round(p["start_s"], 1) for p in phases},
    }


def fail_if_metrics(report: dict) -> dict[str, float | None]:
    s = report["summary"]
    keys = ("p50_ms", "p95_ms", "p99_ms", "max_ms", "lost", "duplicates", "errors", "rejected",
            "dead_letters", "max_queue", "max_lag_ms", "sent", "decided", "throughput",
            "drain_s", "max_review_backlog", "undecided")  # fmt: skip
    return {k: s.get(k) for k in keys}


# --------------------------------------------------------------------------- plots


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 100, "font.size": 10, "axes.grid": True,
                         "grid.alpha": 0.3, "axes.spines.top": False,
                         "axes.spines.right": False})  # fmt: skip
    return plt


def _phases(ax, report: dict, label: bool = True) -> None:
    shades = ("#f5f5f5", "#ffffff")
    for k, p in enumerate(report["phases"]):
        ax.axvspan(p["start_s"], p["end_s"], color=shades[k % 2], zorder=0, lw=0)
        if label:
            ax.text((p["start_s"] + p["end_s"]) / 2, 0.99, p["name"], transform=ax.get_xaxis_transform(),
                    ha="center", va="top", fontsize=8, color="#777", style="italic")  # fmt: skip
    end = report["phases"][-1]["end_s"] if report["phases"] else 0
    ax.axvline(end, color="#999", lw=0.8, ls=":")


def plot_all(report: dict, out: Path) -> list[str]:
    plt = _plt()
    s = report["series"]
    x = s["second"]
    files = []

    def save(fig, name: str) -> None:
        for ax in fig.axes:
            lo, hi = ax.get_ylim()
            if ax.get_yscale() == "linear" and hi > lo:
                ax.set_ylim(lo, hi + (hi - lo) * 0.12)
        fig.tight_layout()
        fig.savefig(out / name)
        plt.close(fig)
        files.append(name)

    # 1. input rate by language (stacked) and decisions per second
    fig, ax = plt.subplots(figsize=(10, 4))
    _phases(ax, report)
    langs = [lang for lang in s["sent_by_language"] if sum(s["sent_by_language"][lang])]
    ax.stackplot(x, *[s["sent_by_language"][lang] for lang in langs], labels=langs,
                 colors=[LANG_COLORS.get(lang, "#999") for lang in langs], alpha=0.85, step="post")
    ax.plot(x, moving_average(s["decided_total"], 3), color="black", lw=1.2,
            label="decided (3 s avg)")  # fmt: skip
    ax.set(xlabel="wall seconds", ylabel="posts per second",
           title="Input rate by language (truth) and decisions per second")  # fmt: skip
    ax.legend(loc="upper left", fontsize=8, ncol=3)
    save(fig, "input_rate.png")

    # 2. queue depth and lag
    fig, ax = plt.subplots(figsize=(10, 4))
    _phases(ax, report)
    ax.plot(x, [v or 0 for v in s["stream_length"]], color="#1565c0", lw=1.5,
            label="stream length (posts)")  # fmt: skip
    ax.set(xlabel="wall seconds", ylabel="posts waiting", title="Queue depth and consumer lag")
    ax2 = ax.twinx()
    ax2.plot(x, [(v or 0) / 1000 for v in s["lag_ms"]], color="#e65100", lw=1.2, ls="--",
             label="lag (s): age of oldest undecided post")  # fmt: skip
    ax2.axhline(SLO_MS / 1000, color="#e65100", lw=0.6, ls=":")
    ax2.set_ylabel("lag (s)")
    ax2.grid(False)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="upper left", fontsize=8)
    save(fig, "queue.png")

    # 3. latency percentiles over time
    fig, ax = plt.subplots(figsize=(10, 4))
    _phases(ax, report)
    for q, color in ((50, "#2e7d32"), (95, "#f9a825"), (99, "#c62828")):
        ys = [v / 1000 if v is not None else math.nan for v in s[f"latency_p{q}_ms"]]
        ax.plot(x, ys, color=color, lw=1.3, label=f"p{q}", marker=".", ms=3)
    ax.axhline(SLO_MS / 1000, color="black", lw=0.8, ls=":", label="2 s")
    ax.set(xlabel="wall seconds (when decided)", ylabel="seconds",
           title="Enqueue -> decision latency, per second of decision")  # fmt: skip
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper left", fontsize=8)
    save(fig, "latency.png")

    # 4. actions by language: totals (left), per second (right)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [1, 2]})
    by_lang = report["totals"]["decisions_by_language"]
    langs = sorted(by_lang, key=lambda k: -sum(by_lang[k].values()))
    bottom = [0] * len(langs)
    for a in ACTIONS:
        vals = [by_lang[lang].get(a, 0) for lang in langs]
        a1.bar(langs, vals, bottom=bottom, color=ACTION_COLORS[a], label=a)
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    a1.set(ylabel="decisions", title="Actions by detected language")
    a1.legend(fontsize=8)
    _phases(a2, report)
    acts = [a for a in ACTIONS if sum(s["decisions_by_action"].get(a, []))]
    a2.stackplot(x, *[moving_average(s["decisions_by_action"][a], 3) for a in acts],
                 labels=acts, colors=[ACTION_COLORS[a] for a in acts], alpha=0.9)
    a2.set(xlabel="wall seconds", ylabel="decisions per second (3 s avg)",
           title="Actions over time")  # fmt: skip
    a2.legend(loc="upper left", fontsize=8, ncol=5)
    save(fig, "actions.png")

    # 5. review backlog vs capacity per language
    queues = list(report["review"])
    fig, axes = plt.subplots(1, len(queues), figsize=(4.2 * len(queues), 3.8), squeeze=False)
    for ax, q in zip(axes[0], queues, strict=True):
        r = report["review"][q]
        _phases(ax, report, label=False)
        cum_in, c = [], 0
        for v in r["arrivals"]:
            c += v
            cum_in.append(c)
        cap = [r["capacity_per_wall_s"] * (i + 1) for i in range(len(x))]
        ax.fill_between(x, r["backlog"], color="#8e24aa", alpha=0.3, label="backlog", step="post")
        ax.plot(x, cum_in, color="#8e24aa", lw=1.3, label="reviews queued (cumulative)")
        ax.plot(x, cap, color="#2e7d32", lw=1.3, ls="--", label="reviewer capacity (cumulative)")
        top = max(max(cum_in, default=0), 1) * 1.3
        ax.set_ylim(0, top)
        over = r["overflow_at_s"]
        if over is not None:
            ax.axvline(over, color="#d32f2f", lw=1, ls=":")
            ax.text(over, top * 0.95, " overflow", color="#d32f2f", fontsize=8, va="top")
        ax.set(title=f"review queue '{q}' ({r['capacity_per_scenario_h']:.3g}/scenario h)",
               xlabel="wall seconds", ylabel="reviews")  # fmt: skip
        ax.legend(fontsize=7, loc="upper left")
    save(fig, "review_backlog.png")
    return files


# --------------------------------------------------------------------------- HTML

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


# --------------------------------------------------------------------------- compare


def compare(label_a: str, run_a: RunData, rep_a: dict, label_b: str, run_b: RunData,
            rep_b: dict) -> dict[str, Any]:  # fmt: skip
    """Per post (matched by sequence number): action under A vs B, grouped by language and
    kind; beside each run's latency and review load."""

    def by_seq(run: RunData) -> dict[str, tuple[dict, dict]]:
        cut = len(run.id_prefix) + 1
        firsts: dict[str, dict] = {}
        for _, d in run.decisions:
            firsts.setdefault(d["post_id"], d)
        return {pid[cut:]: (run.sent[pid][2], firsts[pid]) for pid in firsts if pid in run.sent}

    a, b = by_seq(run_a), by_seq(run_b)
    common = sorted(set(a) & set(b))
    transitions: Counter = Counter()
    by_group: dict[str, Counter] = defaultdict(Counter)
    examples = []
    for seq in common:
        truth, da = a[seq]
        _, db = b[seq]
        key = f"{truth['language']}|{truth['kind']}"
        by_group[key]["posts"] += 1
        if da["action"] != db["action"]:
            transitions[(truth["language"], truth["kind"], da["action"], db["action"])] += 1
            by_group[key]["changed"] += 1
            if len(examples) < 30:
                examples.append({"seq": seq, "language": truth["language"], "kind": truth["kind"],
                                 "a": da["action"], "b": db["action"],
                                 "a_rules": [r["rule"] for r in da["reasons"]],
                                 "b_rules": [r["rule"] for r in db["reasons"]]})  # fmt: skip
    changed = sum(transitions.values())

    def side(rep: dict) -> dict:
        s = rep["summary"]
        return {
            "policy": rep.get("policy"),
            "p50_ms": s["p50_ms"], "p95_ms": s["p95_ms"], "p99_ms": s["p99_ms"],
            "throughput": s["throughput"], "max_queue": s["max_queue"],
            "lost": s["lost"], "duplicates": s["duplicates"],
            "actions": rep["totals"]["decisions_by_action"],
            "review": {q: {"queued": sum(r["arrivals"]), "peak": r["peak"], "final": r["final"],
                           "overflow_at_s": r["overflow_at_s"],
                           "clear_scenario_h": r["clear_scenario_h"]}
                       for q, r in rep["review"].items()},
        }  # fmt: skip

    return {
        "a": {"label": label_a, **side(rep_a)},
        "b": {"label": label_b, **side(rep_b)},
        "posts_compared": len(common),
        "changed": changed,
        "changed_share": round(changed / len(common), 4) if common else 0.0,
        "transitions": [{"language": k[0], "kind": k[1], "a": k[2], "b": k[3], "count": v}
                        for k, v in transitions.most_common()],  # fmt: skip
        "by_language_kind": {k: dict(v) for k, v in sorted(by_group.items())},
        "examples": examples,
    }


def plot_compare(cmp: dict, rep_a: dict, rep_b: dict, out: Path) -> str:
    plt = _plt()
    queues = list(rep_a["review"])
    fig, axes = plt.subplots(1, len(queues) + 1, figsize=(4.2 * (len(queues) + 1), 3.8),
                             squeeze=False)  # fmt: skip
    for ax, q in zip(axes[0], queues, strict=False):
        for rep, color, name in ((rep_a, "#1565c0", cmp["a"]["label"]),
                                 (rep_b, "#e65100", cmp["b"]["label"])):
            ax.plot(rep["series"]["second"], rep["review"][q]["backlog"], color=color, lw=1.5,
                    label=f"{name}")  # fmt: skip
        ax.set(title=f"review backlog '{q}'", xlabel="wall seconds", ylabel="reviews waiting")
        ax.legend(fontsize=8)
    ax = axes[0][-1]
    for rep, color, name in ((rep_a, "#1565c0", cmp["a"]["label"]),
                             (rep_b, "#e65100", cmp["b"]["label"])):
        ys = [v / 1000 if v is not None else math.nan for v in rep["series"]["latency_p99_ms"]]
        ax.plot(rep["series"]["second"], ys, color=color, lw=1.3, label=f"p99 {name}")
    ax.set(title="p99 latency", xlabel="wall seconds", ylabel="seconds")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "compare.png")
    plt.close(fig)
    return "compare.png"


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
