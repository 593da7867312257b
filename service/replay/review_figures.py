"""The human side of a replay, pure: what waited for a reviewer, per language group.

Per group (the scenario's ``review_capacity`` keys; ``other`` takes the rest):

* demand: every post that waits for a human = the posts that entered a review queue, those
  the fallback limited instead (their queue held its admission limit), and those a rule
  limited "pending review" (a ``pending_..._review`` label) without queueing them. Counting
  only the queued ones undercounts the demand exactly when it matters;
* the real queues, sampled from ``GET /v1/review/queues`` about once a second: depth
  (waiting + in review) and expected wait (waiting / capacity, scenario hours) over time;
  overflow periods (a queue held its admission limit, so a new item took the fallback) and
  how many posts the fallback limited;
* what the simulated reviewers did: items resolved and their verdicts, the time from the
  post's submission to its human verdict and the review wait (from the automated decision
  to the verdict: what the queue's SLA bounds), p50 / p99 in wall seconds and scenario
  hours, the share reviewed within the SLA, and the automated flags' precision as the verdicts
  measure it (``service.review.rules``: confirmed unless the reviewer allowed the post);
* accounting: every post that asked for review (queued, or overflowed into the queue's
  backlog) is resolved, or still queued, in review or in the backlog at the end;
  ``admitted``: the overflowed ones that reached the queue later (a claim made room);
* the queue without the fallback: the demand against the capacity as a fluid queue
  (``metrics.simulate_backlog``: ``peak``, ``overflow_at_s``, ``final``).

``clock`` maps epoch seconds to the run's wall seconds (``sec``, ``zeros``, ``n``);
``first`` is each post's first decision (``runner._slim``) and ``at(post_id)`` its time.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from service.replay.metrics import percentile, review_queue_for, review_verdict, simulate_backlog
from service.replay.scenario import Scenario
from service.review.rules import APPEAL, feedback_fields, overflows, precision_rows

# a post that asked for review and has no verdict is accounted for in these states
# (overflowed: limited, in its queue's backlog; unchecked: the replay ran without reviewers
# and did not look)
ACCOUNTED = ("queued", "in_review", "overflowed", "resolved", "unchecked")
PENDING_REVIEW = re.compile(r"^pending(_[a-z0-9]+)*_review$")
QUEUE_KEYS = ("waiting", "in_review", "sla_s", "admission_limit", "enqueued", "overflowed")


def human_demand(decision: Mapping[str, Any]) -> str | None:
    """``queued`` (a review outcome), ``overflowed`` (its queue was full: the fallback
    limited it pending review), ``limited_pending`` (a rule limited it with a label that
    says it waits for review, e.g. ``pending_english_review``, but queued nothing), or None:
    the post does not wait for a human."""
    if (decision.get("review") or {}).get("fallback"):
        return "overflowed"
    if decision.get("action") == "review":
        return "queued"
    if decision.get("action") != "allow" and any(
            PENDING_REVIEW.match(label) for label in decision.get("labels") or ()):
        return "limited_pending"
    return None


def capacities(samples: list, scenario: Scenario, rate_scale: float) -> tuple[dict[str, float], str]:
    """Reviews per scenario hour per group, and where they come from: the service's queues
    (what the reviewers worked at) when they were sampled, else the scenario's."""
    groups = set(scenario.review_capacity) | {"other"}
    if not samples:
        caps = {g: scenario.review_capacity_per_hour(g, rate_scale) for g in groups}
        return dict(sorted(caps.items())), "scenario"
    served: dict[str, float] = {}
    for q in samples[-1][1]:
        served[q["language"]] = max(served.get(q["language"], 0.0), q["capacity_per_hour"] or 0.0)
    groups |= {code for code, cap in served.items() if cap > 0}
    return {g: float(served.get(g, 0.0)) for g in sorted(groups)}, "service"


def periods(full: list[bool], limited_at: list[int], scenario_h: Callable[[float], float]) -> list[dict]:
    """Runs of seconds in which a queue held its admission limit, with the posts the
    fallback limited in each."""
    out, start = [], None
    for i, f in enumerate([*full, False]):
        if f and start is None:
            start = i
        elif not f and start is not None:
            out.append({"start_s": start, "end_s": i,
                        "start_scenario_h": round(scenario_h(start), 2),
                        "end_scenario_h": round(scenario_h(i), 2),
                        "limited": sum(1 for s in limited_at if start <= s < i)})  # fmt: skip
            start = None
    return out


def _carry(series: list) -> list:
    """Unsampled seconds (None) take the last sample; infinite waits (nobody reads the
    language) become None."""
    for i in range(1, len(series)):
        if series[i] is None:
            series[i] = series[i - 1]
    return [None if x == math.inf else x for x in series]


def sampled(samples: list, clock, group_of: Callable[[str], str], groups: list[str]) -> dict:
    """Per group and wall second, from the queue samples (carried forward over gaps): depth,
    the longest expected wait of its queues (scenario hours; None: nobody reads them), and
    whether a queue in use held its admission limit; and each queue's last figures."""
    out = {g: {"depth": [None] * clock.n, "wait_h": [None] * clock.n, "full": [None] * clock.n,
               "queues": {}} for g in groups}  # fmt: skip
    for at, queues in samples:
        i = clock.sec(at)
        cells = {g: [0, 0.0, False] for g in groups}
        for q in queues:
            g = group_of(q["language"])
            cell = cells[g]
            cell[0] += q["waiting"] + q["in_review"]
            wait = q["expected_wait_s"]
            cell[1] = math.inf if wait is None else max(cell[1], wait)
            used = (q.get("enqueued") or 0) + (q.get("overflowed") or 0) > 0
            if used and q["reason"] != APPEAL and q["admission_limit"] is not None:
                cell[2] = cell[2] or overflows(q["waiting"], q["admission_limit"])
            out[g]["queues"][q["queue"]] = {k: q.get(k) for k in QUEUE_KEYS}
        for g, (depth, wait, full) in cells.items():
            out[g]["depth"][i], out[g]["full"][i] = depth, full
            out[g]["wait_h"][i] = math.inf if wait == math.inf else round(wait / 3600, 3)
    for g in groups:
        for key in ("depth", "wait_h", "full"):
            out[g][key] = _carry(out[g][key])
    return out


def _per_second(clock, times: list[float]) -> list[int]:
    series = clock.zeros()
    for t in times:
        series[clock.sec(t)] += 1
    return series


def _demand(first: Mapping[str, dict], at: Callable[[str], float],
            group_of: Callable[[str], str]) -> dict[str, dict]:
    """Per group: queued and overflowed post ids, fallback actions, arrivals per second."""
    out: dict[str, dict] = {}
    for pid, d in first.items():
        kind = human_demand(d)
        if kind is None:
            continue
        g = out.setdefault(group_of(d["language"]), {"queued": [], "overflowed": [],
                                                     "limited_pending": [], "fallback": Counter(),
                                                     "times": {}})  # fmt: skip
        g[kind].append(pid)
        g["times"][pid] = at(pid)
        if kind == "overflowed":
            g["fallback"][d["review"]["fallback"]] += 1
    return out


def _spread(seconds: list[float], hours_per_s: float) -> dict[str, Any]:
    """p50 / p99 / max of wall seconds, and p50 / p99 in scenario hours."""
    p50, p99 = percentile(seconds, 50), percentile(seconds, 99)
    return {"count": len(seconds), "p50_s": _r(p50), "p99_s": _r(p99),
            "max_s": _r(max(seconds, default=None)),
            "p50_scenario_h": _r(p50 and p50 * hours_per_s, 4),
            "p99_scenario_h": _r(p99 and p99 * hours_per_s, 4)}  # fmt: skip


def _verdict_figures(run, verdicts: list[dict], slas: Mapping[str, float | None]) -> dict[str, Any]:
    """Resolved, verdicts, time to human decision (from the post's submission) and review
    wait (from its automated decision: what the SLA bounds), share within the SLA,
    precision."""
    hours = run.time_scale / 3600.0
    total = [v["at_ms"] / 1000 - run.accepted[v["post_id"]] for v in verdicts
             if v["post_id"] in run.accepted]  # fmt: skip
    waits = {id(v): v["at_ms"] / 1000 - v["decided_ts"] for v in verdicts if v.get("decided_ts")}
    within = [waits[id(v)] * run.time_scale <= slas[v["queue"]]
              for v in verdicts if id(v) in waits and slas.get(v["queue"])]  # fmt: skip
    counts: Counter = Counter()
    for v in verdicts:
        counts.update(feedback_fields(v, v["action"]))
    confirmed = sum(1 for v in verdicts if v["action"] != "allow")
    return {
        "resolved": len(verdicts),
        "verdicts": dict(Counter(v["action"] for v in verdicts)),
        "time_to_human_decision": _spread(total, hours),
        "review_wait": _spread(list(waits.values()), hours),
        "within_sla": round(sum(within) / len(within), 4) if within else None,
        "reviewed_precision": round(confirmed / len(verdicts), 4) if verdicts else None,
        "precision": precision_rows(counts),
    }


def _r(x: float | None, nd: int = 1) -> float | None:
    return None if x is None else round(x, nd)


def review_figures(run, scenario: Scenario, clock, first: Mapping[str, dict],
                   at: Callable[[str], float], rate_scale: float) -> dict[str, dict]:  # fmt: skip
    """Every group's figures (see the module docstring)."""
    caps, source = capacities(run.review.samples, scenario, rate_scale)
    group_of = lambda code: review_queue_for(code or "und", caps)  # noqa: E731
    queues = sampled(run.review.samples, clock, group_of, list(caps))
    demand = _demand(first, at, group_of)
    verdicts: dict[str, list[dict]] = {g: [] for g in caps}
    for v in run.review.verdicts:
        d = first.get(v["post_id"]) or {}
        verdicts[group_of(v["language"])].append({**v, "language": v["language"] or "und",
                                                  "decided_ts": d.get("decided_ts")})  # fmt: skip
    return {g: _group(run, clock, caps[g], source, demand.get(g), queues[g], verdicts[g])
            for g in caps}  # fmt: skip


def _group(run, clock, capacity_h: float, source: str, demand: dict | None, queues: dict,
           verdicts: list[dict]) -> dict[str, Any]:  # fmt: skip
    hour_wall = 3600.0 / run.time_scale  # one scenario hour in wall seconds
    dm = demand or {"queued": [], "overflowed": [], "limited_pending": [], "fallback": Counter(),
                    "times": {}}  # fmt: skip
    arrivals = _per_second(clock, list(dm["times"].values()))
    cap_wall = capacity_h / hour_wall
    unbounded = review_verdict("", arrivals, cap_wall, hour_wall)
    limited_at = [clock.sec(dm["times"][p]) for p in dm["overflowed"]]
    full = [bool(f) for f in queues["full"]]
    resolved = {v["post_id"] for v in verdicts}
    # a post that asked for review and has no verdict must still be in the service's queue,
    # in review, or (overflowed) in the queue's backlog
    asked = [*dm["queued"], *dm["overflowed"]]
    states = Counter(run.review.states.get(p, "unchecked") for p in asked if p not in resolved)
    admitted = sum(1 for p in dm["overflowed"]
                   if p in resolved or run.review.states.get(p) in ("queued", "in_review"))
    over = periods(full, limited_at, lambda s: s / hour_wall)
    return {
        "capacity_per_scenario_h": capacity_h, "capacity_per_wall_s": cap_wall,
        "capacity_source": source,
        "demand": len(dm["times"]),
        "queued": len(dm["queued"]), "overflowed": len(dm["overflowed"]),
        "limited_pending": len(dm["limited_pending"]),
        "admitted": admitted,
        "fallback_actions": dict(dm["fallback"]),
        "overflowed_violating": sum(1 for p in dm["overflowed"]
                                    if (run.sent.get(p) or (0, 0, {}))[2].get("categories")),
        **_verdict_figures(run, verdicts, {q: f["sla_s"] for q, f in queues["queues"].items()}),
        "unresolved": dict(states),
        "unaccounted": sum(n for s, n in states.items() if s not in ACCOUNTED),
        "overflow_periods": over,
        "overflow_at_s": over[0]["start_s"] if over else None,
        "max_depth": max((d for d in queues["depth"] if d is not None), default=None),
        "max_expected_wait_h": max((w for w in queues["wait_h"] if w is not None), default=None),
        "queues": queues["queues"],
        "arrivals": arrivals,
        "without_fallback": {
            "backlog": [round(x, 3) for x in simulate_backlog(arrivals, cap_wall)],
            "peak": unbounded.peak, "peak_at_s": unbounded.peak_at_s,
            "growing_from_s": unbounded.growing_from_s, "overflow_at_s": unbounded.overflow_at_s,
            "final": unbounded.final,
            "clear_scenario_h": (None if math.isinf(unbounded.clear_s)
                                 else round(unbounded.clear_s / hour_wall, 2)),
        },
        "series": {"depth": queues["depth"], "expected_wait_h": queues["wait_h"], "full": full,
                   **{k: _per_second(clock, [dm["times"][p] for p in dm[k]])
                      for k in ("queued", "overflowed", "limited_pending")},
                   "resolved": _per_second(clock, [v["at_ms"] / 1000 for v in verdicts])},
    }  # fmt: skip
