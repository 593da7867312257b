"""Replay arithmetic, pure (no I/O): percentiles, the per-second series, the review-backlog
simulation, exactly-once accounting, quality against the ground truth, ``--fail-if``.

Definitions used in every report (report.html states them too):

* latency: enqueue -> decision = the decision's ``decided_at`` (worker clock) minus the
  moment the replay sent the batch request that carried the post (replay clock). Both
  clocks are the same machine's in ``--embedded`` runs. The time the decision feed
  delivered the decision to the replay is kept too (``feed_latency``), for targets on
  another host whose clock may differ.
* flagged for category c: the decision's action (for the post's own market) is one of
  ``FLAG_ACTIONS`` (limit_reach, review, remove) and at least one of its reasons whose own
  action is in ``FLAG_ACTIONS`` names c, either as a category whose score condition fired
  or through a keyword list whose name starts like c (``gambling_terms`` -> gambling,
  ``drug_terms`` -> drugs, ``scam_contact`` -> scam_spam). Ground truth: the categories
  the generator attached to the post (``KIND_CATEGORIES``).
* review backlog without the fallback, per language: each wall second the posts that wait
  for a human (queued for review, or limited by the fallback pending review) whose detected
  language code maps to that queue arrive; reviewers drain ``capacity_per_s`` reviews per
  wall second (a fluid queue, never negative). The real queues are in ``review_figures``.
"""

from __future__ import annotations

import math
import operator
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from service import classification

FLAG_ACTIONS = frozenset({"limit_reach", "review", "remove"})
ACTIONS = ("allow", "label", "limit_reach", "review", "remove")

# --------------------------------------------------------------------------- percentiles


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) with linear interpolation between closest ranks
    (numpy's default); None for no values."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100 (got {q})")
    if not values:
        return None
    xs = sorted(values)
    if len(xs) == 1:
        return float(xs[0])
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return float(xs[lo] + (xs[hi] - xs[lo]) * (pos - lo))


def latency_summary(values_ms: Sequence[float]) -> dict[str, float | None]:
    return {
        "count": len(values_ms),
        "p50_ms": _round(percentile(values_ms, 50)),
        "p95_ms": _round(percentile(values_ms, 95)),
        "p99_ms": _round(percentile(values_ms, 99)),
        "max_ms": _round(max(values_ms)) if values_ms else None,
    }


def _round(x: float | None, nd: int = 1) -> float | None:
    return None if x is None else round(x, nd)


# --------------------------------------------------------------------------- review queue


def simulate_backlog(arrivals: Sequence[float], capacity_per_s: float,
                     initial: float = 0.0) -> list[float]:  # fmt: skip
    """Queue size at the end of each second: backlog += arrivals - capacity, floored at 0."""
    if capacity_per_s < 0:
        raise ValueError("capacity must be >= 0")
    out, q = [], float(initial)
    for a in arrivals:
        q = max(q + a - capacity_per_s, 0.0)
        out.append(q)
    return out


def review_queue_for(code: str, capacities: Mapping[str, float]) -> str:
    """The review queue (a key of the scenario's capacity) that a language code goes to."""
    return code if code in capacities else "other"


@dataclass(frozen=True)
class QueueVerdict:
    queue: str
    capacity_per_s: float
    arrivals: float
    peak: float
    peak_at_s: int | None
    growing_from_s: int | None  # first second the queue was non-empty and growing
    overflow_at_s: int | None  # first second the queue held more than `overflow_after_s` of work
    final: float
    clear_s: float | None  # wall seconds the reviewers need to clear the final backlog (inf: never)


def review_verdict(queue: str, arrivals: Sequence[float], capacity_per_s: float,
                   overflow_after_s: float) -> QueueVerdict:  # fmt: skip
    """Summarise one language's simulated review queue.

    It "overflows" when it holds more than ``overflow_after_s`` wall seconds of reviewer
    work (the replay uses one scenario hour): the reviewers can no longer get to a post
    within the hour. With no reviewers at all, any queued review is an overflow.
    """
    backlog = simulate_backlog(arrivals, capacity_per_s)
    limit = capacity_per_s * overflow_after_s
    growing = next((i for i, q in enumerate(backlog) if q > 0 and (i == 0 or q > backlog[i - 1])),
                   None)  # fmt: skip
    overflow = next((i for i, q in enumerate(backlog) if q > limit and q >= 1), None)
    peak = max(backlog) if backlog else 0.0
    final = backlog[-1] if backlog else 0.0
    clear = 0.0 if final <= 0 else (final / capacity_per_s if capacity_per_s > 0 else math.inf)
    return QueueVerdict(
        queue=queue,
        capacity_per_s=capacity_per_s,
        arrivals=float(sum(arrivals)),
        peak=round(peak, 2),
        peak_at_s=backlog.index(max(backlog)) if backlog and peak > 0 else None,
        growing_from_s=growing,
        overflow_at_s=overflow,
        final=round(final, 2),
        clear_s=clear,
    )


# --------------------------------------------------------------------------- accounting


@dataclass(frozen=True)
class Accounting:
    accepted: int
    decided: int  # distinct accepted posts with at least one decision
    lost: list[str]  # accepted, no decision in the feed
    duplicates: dict[str, int]  # post id -> times it appeared in the feed (> 1)
    unexpected: list[str]  # decisions for ids this run never had accepted

    def as_dict(self, limit: int = 200) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "decided": self.decided,
            "lost": len(self.lost),
            "duplicates": len(self.duplicates),
            "unexpected": len(self.unexpected),
            "lost_ids": self.lost[:limit],
            "duplicate_ids": dict(list(self.duplicates.items())[:limit]),
            "unexpected_ids": self.unexpected[:limit],
        }


def account(accepted: Iterable[str], decided: Iterable[str]) -> Accounting:
    """Exactly-once check: ``accepted`` post ids vs the post ids of every feed decision
    (in feed order, repeats included)."""
    acc = list(dict.fromkeys(accepted))
    counts = Counter(decided)
    acc_set = set(acc)
    return Accounting(
        accepted=len(acc),
        decided=sum(1 for p in acc if counts.get(p)),
        lost=[p for p in acc if not counts.get(p)],
        duplicates={p: n for p, n in counts.items() if n > 1},
        unexpected=[p for p in counts if p not in acc_set],
    )


# --------------------------------------------------------------------------- quality


def _keyword_category(list_name: str, categories: Iterable[str]) -> str | None:
    head = list_name.split("_")[0].lower()
    for c in categories:
        if c.lower().startswith(head) or c.split("_")[0].lower() == head:
            return c
    return None


def flagged_categories(decision: Mapping[str, Any], categories: Iterable[str]) -> set[str]:
    """Categories the decision flags the post for (see the module docstring)."""
    cats = list(categories)
    if decision.get("action") not in FLAG_ACTIONS:
        return set()
    out: set[str] = set()
    for reason in decision.get("reasons") or []:
        if reason.get("action") not in FLAG_ACTIONS:
            continue
        out.update(c for c in (reason.get("categories") or {}) if c in cats)
        for name, hits in (reason.get("keywords") or {}).items():
            c = _keyword_category(name, cats)
            if c and hits:
                out.add(c)
    return out


def quality(pairs: Iterable[tuple[Mapping[str, Any], Mapping[str, Any]]],
            categories: Sequence[str]) -> dict[str, Any]:  # fmt: skip
    """(truth, decision) pairs -> precision/recall per category x truth language, the same
    over all languages ("all"), and action counts per truth kind (``service.classification``,
    3 digits)."""
    counts: dict[tuple[str, str], Counter] = defaultdict(Counter)
    by_kind: dict[str, Counter] = defaultdict(Counter)
    by_kind_lang: dict[str, Counter] = defaultdict(Counter)
    for truth, decision in pairs:
        lang = truth["language"]
        want = set(truth.get("categories") or ())
        got = flagged_categories(decision, categories)
        for c in categories:
            cell = classification.outcome(c in want, c in got)
            if cell != "tn":
                for key in ((c, lang), (c, "all")):
                    counts[key][cell] += 1
        by_kind[truth["kind"]][decision.get("action")] += 1
        by_kind_lang[f"{truth['kind']}|{lang}"][decision.get("action")] += 1
    rows = []
    for key in sorted(counts, key=lambda k: (k[0], k[1] != "all", k[1])):
        t, f, n = (counts[key][cell] for cell in ("tp", "fp", "fn"))
        rows.append({
            "category": key[0], "language": key[1], "tp": t, "fp": f, "fn": n,
            "support": t + n,
            "precision": classification.precision(t, f, 3),
            "recall": classification.recall(t, n, 3),
        })  # fmt: skip
    return {
        "definition": "flagged for c: action in {limit_reach, review, remove} and a reason "
        "with such an action names c (a category score that fired, or a keyword list "
        "named like c); truth: the generator's categories for the post's kind",
        "rows": rows,
        "actions_by_kind": {k: dict(v) for k, v in sorted(by_kind.items())},
        "actions_by_kind_language": {k: dict(v) for k, v in sorted(by_kind_lang.items())},
    }


# --------------------------------------------------------------------------- fail-if

_OPS = {">=": operator.ge, "<=": operator.le, "==": operator.eq, "!=": operator.ne,
        ">": operator.gt, "<": operator.lt}  # fmt: skip
_COND = re.compile(r"^\s*([a-z][a-z0-9_]*)\s*(>=|<=|==|!=|>|<)\s*(-?\d+(?:\.\d*)?|-?\.\d+)\s*$")

FAIL_IF_METRICS = {
    "p50_ms": "latency p50 over the run (ms)",
    "p95_ms": "latency p95 over the run (ms)",
    "p99_ms": "latency p99 over the run (ms)",
    "max_ms": "largest latency (ms)",
    "lost": "accepted posts with no decision that the service does not know as queued or failed",
    "undecided": "accepted posts still queued when the drain timed out",
    "duplicates": "posts decided more than once",
    "errors": "failed HTTP requests plus rejected posts",
    "rejected": "posts the API rejected",
    "dead_letters": "accepted posts dead-lettered (status failed)",
    "max_queue": "largest stream length seen (posts)",
    "max_lag_ms": "largest consumer lag seen (ms)",
    "sent": "posts sent",
    "decided": "posts decided",
    "throughput": "decisions per second over the run",
    "drain_s": "seconds from the last send until every post was decided",
    "max_review_backlog": "largest review queue depth of any language (waiting + in review)",
    "review_unaccounted": "posts queued for review with no verdict and not in a queue at the end",
}


class FailIfError(ValueError):
    pass


@dataclass(frozen=True)
class Condition:
    metric: str
    op: str
    value: float

    def __str__(self) -> str:
        v = int(self.value) if self.value == int(self.value) else self.value
        return f"{self.metric}{self.op}{v}"

    def holds(self, metrics: Mapping[str, float | None]) -> bool:
        actual = metrics.get(self.metric)
        if actual is None:  # no figure (e.g. no decisions: no p99) -> cannot be judged safe
            return True
        return bool(_OPS[self.op](actual, self.value))


def parse_fail_if(spec: str | None) -> list[Condition]:
    """``"p99_ms>2000,lost>0"`` -> conditions; a bad or unknown one raises FailIfError."""
    if not spec or not spec.strip():
        return []
    out, errors = [], []
    for part in spec.split(","):
        if not part.strip():
            continue
        m = _COND.match(part)
        if not m:
            errors.append(f"{part.strip()!r}: expected METRIC OP NUMBER (ops: > < >= <= == !=)")
            continue
        if m.group(1) not in FAIL_IF_METRICS:
            errors.append(f"{m.group(1)!r}: unknown metric (known: {', '.join(FAIL_IF_METRICS)})")
            continue
        out.append(Condition(m.group(1), m.group(2), float(m.group(3))))
    if errors:
        raise FailIfError("; ".join(errors))
    return out


def evaluate_fail_if(conditions: Sequence[Condition],
                     metrics: Mapping[str, float | None]) -> list[str]:  # fmt: skip
    """The conditions that hold (= failures), each as "p99_ms>2000 (p99_ms = 2450.3)"."""
    return [f"{c} ({c.metric} = {metrics.get(c.metric)})" for c in conditions if c.holds(metrics)]


# --------------------------------------------------------------------------- series helpers


def first_run(values: Sequence[float], above: float, min_len: int = 1) -> int | None:
    """Index of the first run of at least ``min_len`` consecutive values > ``above``."""
    n = 0
    for i, v in enumerate(values):
        n = n + 1 if v is not None and v > above else 0
        if n >= min_len:
            return i - min_len + 1
    return None


def moving_average(values: Sequence[float], window: int) -> list[float]:
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out
