"""Replay analysis, pure: every figure and per-second series of a run (``analyse``), the
``--fail-if`` figures, and the comparison of two runs of the same influx (``compare``).

Time axis: wall seconds since the replay started sending. Latency is
``decided_at - request start`` (see ``service.replay.metrics``); a decision is counted in
the second of its ``decided_at``, a sent post in the second its request started.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, replace
from typing import Any

from service.replay.kinds import KIND_CATEGORIES, LANGUAGES
from service.replay.metrics import (
    ACTIONS,
    account,
    first_run,
    latency_summary,
    moving_average,
    percentile,
    quality,
)
from service.replay.review_figures import review_figures
from service.replay.runner import RunData
from service.replay.scenario import Scenario

SLO_MS = 2000.0  # "keeping up": p99 latency and consumer lag under 2 s
CATEGORIES = sorted({c for cats in KIND_CATEGORIES.values() for c in cats})


@dataclass(frozen=True)
class _Clock:
    """The run's wall seconds: ``n`` of them from ``t0``; ``sec`` clamps a time into them."""

    t0: float
    n: int

    def sec(self, ts: float) -> int:
        return min(max(int(ts - self.t0), 0), self.n - 1)

    def zeros(self) -> list[int]:
        return [0] * self.n


@dataclass
class _Decided:
    """Each post's first decision in the feed and when the feed delivered it."""

    first: dict[str, dict]
    feed_ts: dict[str, float]

    @classmethod
    def of(cls, run: RunData) -> _Decided:
        first: dict[str, dict] = {}
        feed_ts: dict[str, float] = {}
        for ts, d in run.decisions:
            if d["post_id"] not in first:
                first[d["post_id"]] = d
                feed_ts[d["post_id"]] = ts
        return cls(first, feed_ts)

    def at(self, pid: str) -> float:
        """When the post was decided (worker clock), else when the feed delivered it."""
        return self.first[pid]["decided_ts"] or self.feed_ts[pid]


def analyse(run: RunData, scenario: Scenario) -> dict[str, Any]:
    """Every figure of a run (JSON-ready)."""
    dec = _Decided.of(run)
    last_dec = max((d["decided_ts"] or 0 for d in dec.first.values()), default=0.0)
    last_verdict = max((v["at_ms"] / 1000 for v in run.review.verdicts), default=0.0)
    last_sample = run.review.samples[-1][0] if run.review.samples else 0.0
    end = max(run.drain_end, run.send_end, last_dec, last_verdict, last_sample, run.t0 + 1)
    clock = _Clock(run.t0, max(int(math.ceil(end - run.t0)) + 1, 1))
    flow = _flow(run, clock, dec)
    stats = _stats_series(run, clock)
    ts_scale = run.time_scale
    rate_scale = float(run.options.get("rate_scale") or 1.0)
    review = review_figures(run, scenario, clock, dec.first, dec.at, rate_scale)

    acc = account(run.accepted, [d["post_id"] for _, d in run.decisions])
    # no decision in the feed: still queued when the drain timed out, dead-lettered, or lost
    undecided = [p for p in acc.lost if run.lost_status.get(p) == "pending"]
    failed = [p for p in acc.lost if run.lost_status.get(p) == "failed"]
    lost = [p for p in acc.lost if run.lost_status.get(p) not in ("pending", "failed")]
    acc = replace(acc, lost=lost)
    pairs = [(run.sent[pid][2], d) for pid, d in dec.first.items() if pid in run.sent]

    # phases on the wall-time axis
    phases = [{"name": p.name, "start_s": p.start_s / ts_scale, "end_s": p.end_s / ts_scale}
              for p in scenario.phases]  # fmt: skip
    summary = _summary(run, clock.n, flow["sent_total"], flow["decided_total"],
                       flow["lat_series"], stats["stream_length"], stats["lag_ms"],
                       flow["latencies"], acc, review, phases)  # fmt: skip
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
        "started_at": run.t0,
        "phases": phases,
        "summary": summary,
        "latency": {**latency_summary(flow["latencies"]),
                    "definition": "decided_at (worker) - start of the batch request that "
                                  "carried the post (replay); both on this machine's clock "
                                  "when embedded",
                    "feed_delivery": latency_summary(flow["feed_latencies"])},  # fmt: skip
        "send_slip_ms": {"p99": _r(percentile([x * 1000 for x in send_slip], 99)),
                         "max": _r(max(send_slip, default=0) * 1000)},  # fmt: skip
        "accounting": {**acc.as_dict(), "undecided": len(undecided),
                       "undecided_ids": undecided[:50], "dead_lettered": len(failed),
                       "dead_lettered_ids": failed[:50],
                       "lost_status": {p: run.lost_status.get(p) for p in lost[:200]},
                       "drained": run.drained, "resubmitted": run.resubmitted,
                       "refused_then_resent": run.refused},  # fmt: skip
        "review": review,
        "review_service": {"report": run.review.service_report,
                           "foreign_items": run.review.foreign,
                           "policy_declares_review": run.review.policy_review,
                           "pools": run.options.get("review_pools"),
                           "verdicts": run.review.verdicts},  # fmt: skip
        "quality": quality(pairs, CATEGORIES),
        "totals": _totals(run, flow),
        "series": _series(clock, flow, stats),
    }


def _flow(run: RunData, clock: _Clock, dec: _Decided) -> dict[str, Any]:
    """Posts sent per second by truth language, decisions per second by action and
    language, and latencies (overall and per second of decision)."""
    sent_by_lang: dict[str, list[int]] = {lang: clock.zeros() for lang in LANGUAGES}
    for _wall, started, truth in run.sent.values():
        sent_by_lang.setdefault(truth["language"], clock.zeros())[clock.sec(started)] += 1
    by_action: dict[str, list[int]] = {a: clock.zeros() for a in ACTIONS}
    by_lang_action: dict[str, dict[str, list[int]]] = defaultdict(dict)
    lat_by_sec: list[list[float]] = [[] for _ in range(clock.n)]
    latencies, feed_lat = [], []
    for pid, d in dec.first.items():
        ts = dec.at(pid)
        s = clock.sec(ts)
        by_action.setdefault(d["action"], clock.zeros())[s] += 1
        by_lang_action[d["language"]].setdefault(d["action"], clock.zeros())[s] += 1
        if pid in run.accepted:
            ms = (ts - run.accepted[pid]) * 1000
            latencies.append(ms)
            lat_by_sec[s].append(ms)
            feed_lat.append((dec.feed_ts[pid] - run.accepted[pid]) * 1000)
    return {
        "sent_by_language": sent_by_lang,
        "sent_total": [sum(v[i] for v in sent_by_lang.values()) for i in range(clock.n)],
        "decisions_by_action": by_action,
        "decisions_by_language_action": by_lang_action,
        "decided_total": [sum(v[i] for v in by_action.values()) for i in range(clock.n)],
        "lat_series": {q: [_r(percentile(v, q)) for v in lat_by_sec] for q in (50, 95, 99)},
        "latencies": latencies,
        "feed_latencies": feed_lat,
    }


def _stats_series(run: RunData, clock: _Clock) -> dict[str, list]:
    """/v1/stats, one sample per second (the last in each), carried forward over gaps; and
    failed requests and rejected posts per second."""
    length: list[float | None] = [None] * clock.n
    lag: list[float | None] = [None] * clock.n
    pending: list[float | None] = [None] * clock.n
    for ts, s in run.stats:
        i = clock.sec(ts)
        length[i], lag[i], pending[i] = (s["stream"]["length"], s["stream"]["lag_ms"],
                                         s["stream"]["pending"])  # fmt: skip
    for series in (length, lag, pending):
        for i in range(1, clock.n):
            if series[i] is None:
                series[i] = series[i - 1]
    errors = clock.zeros()
    for ts, _ in run.errors:
        errors[clock.sec(ts)] += 1
    rejected = clock.zeros()
    for pid in run.rejected:
        rejected[clock.sec(run.sent[pid][1])] += 1
    return {"stream_length": length, "stream_pending": pending, "lag_ms": lag,
            "errors": errors, "rejected": rejected}  # fmt: skip


def _totals(run: RunData, flow: dict[str, Any]) -> dict[str, Any]:
    return {
        "sent_by_language": {k: sum(v) for k, v in flow["sent_by_language"].items()},
        "decisions_by_action": {k: sum(v) for k, v in flow["decisions_by_action"].items()},
        "decisions_by_language": {lang: {a: sum(v) for a, v in acts.items()}
                                  for lang, acts in
                                  sorted(flow["decisions_by_language_action"].items())},
        "errors": [msg for _, msg in run.errors][:200],
        "rejected": {pid: errs for pid, errs in list(run.rejected.items())[:50]},
    }  # fmt: skip


def _series(clock: _Clock, flow: dict[str, Any], stats: dict[str, list]) -> dict[str, Any]:
    return {
        "second": list(range(clock.n)),
        "sent_by_language": flow["sent_by_language"],
        "sent_total": flow["sent_total"],
        "decided_total": flow["decided_total"],
        "decisions_by_action": flow["decisions_by_action"],
        "decisions_by_language_action": flow["decisions_by_language_action"],
        "latency_p50_ms": flow["lat_series"][50],
        "latency_p95_ms": flow["lat_series"][95],
        "latency_p99_ms": flow["lat_series"][99],
        "stream_length": stats["stream_length"],
        "stream_pending": stats["stream_pending"],
        "lag_ms": stats["lag_ms"],
        "errors": stats["errors"],
        "rejected": stats["rejected"],
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
    depths = [r["max_depth"] for r in review.values() if r["max_depth"] is not None]
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
        "max_review_backlog": max(depths, default=0),
        "review_demand": sum(r["demand"] for r in review.values()),
        "review_overflowed": sum(r["overflowed"] for r in review.values()),
        "review_resolved": sum(r["resolved"] for r in review.values()),
        "review_unaccounted": sum(r["unaccounted"] for r in review.values()),
        "phase_at_s": {p["name"]: round(p["start_s"], 1) for p in phases},
    }


def fail_if_metrics(report: dict) -> dict[str, float | None]:
    s = report["summary"]
    keys = ("p50_ms", "p95_ms", "p99_ms", "max_ms", "lost", "duplicates", "errors", "rejected",
            "dead_letters", "max_queue", "max_lag_ms", "sent", "decided", "throughput",
            "drain_s", "max_review_backlog", "undecided", "review_unaccounted")  # fmt: skip
    return {k: s.get(k) for k in keys}


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
            "review": {q: {"demand": r["demand"], "queued": r["queued"],
                           "overflowed": r["overflowed"], "resolved": r["resolved"],
                           "max_depth": r["max_depth"], "overflow_at_s": r["overflow_at_s"],
                           "p99_scenario_h": r["time_to_human_decision"]["p99_scenario_h"],
                           "peak": r["without_fallback"]["peak"]}
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
