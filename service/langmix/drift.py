"""Language-mix drift, pure: windows of time buckets, shares, marks, and the alert's moves.

Nothing here reads Redis or a clock: counts and times come in as arguments, and
``service.langmix.store`` does the I/O with what these functions decide.

A language's alert is *raised* when its share of the window's posts reaches its raise mark,
``max(baseline x raise_at.factor, baseline + raise_at.jump)``, and *cleared* when the share
falls under its clear mark, computed the same way from ``clear_at`` (the policy refuses a
clear mark that is not under the raise mark, so an alert cannot flap around one value).
With fewer than ``min_posts`` posts in the window nothing moves: too few posts to tell.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field

from service.policy.model import LanguageMix

# transitions kept in the state (newest last), shown in /v1/stats
HISTORY = 20


# -- windows of buckets ---------------------------------------------------------------------


def bucket_of(t_s: float, bucket_s: int) -> int:
    """The start (epoch seconds) of the bucket ``t_s`` falls in."""
    return int(t_s // bucket_s) * bucket_s


def window_buckets(now_s: float, window_s: float, bucket_s: int) -> list[int]:
    """The buckets a window ending at ``now_s`` reads, oldest first: the current (partial)
    bucket and as many before it as make up ``window_s``."""
    n = max(1, math.ceil(window_s / bucket_s))
    last = bucket_of(now_s, bucket_s)
    return [last - i * bucket_s for i in range(n - 1, -1, -1)]


def bucket_ttl_s(window_s: float, bucket_s: int) -> int:
    """How long a bucket is kept: the window, and two buckets to spare."""
    return int(math.ceil(window_s)) + 2 * bucket_s


def count_languages(languages: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for code in languages:
        out[code] = out.get(code, 0) + 1
    return out


def merge_counts(buckets: Iterable[Mapping[str, str | int]]) -> dict[str, int]:
    """Per-language totals over the window's buckets (hashes language -> count)."""
    out: dict[str, int] = {}
    for bucket in buckets:
        for code, n in bucket.items():
            out[code] = out.get(code, 0) + int(n)
    return out


def shares(counts: Mapping[str, int]) -> dict[str, float]:
    total = sum(counts.values())
    if total <= 0:
        return {}
    return {code: n / total for code, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))}


# -- marks and the alert ----------------------------------------------------------------------


def raise_mark(spec: LanguageMix, language: str) -> float:
    return spec.raise_at.mark(spec.baseline_of(language))


def clear_mark(spec: LanguageMix, language: str) -> float:
    return spec.clear_at.mark(spec.baseline_of(language))


@dataclass(frozen=True)
class Alert:
    """A raised language: since when, and what its share was against what baseline."""

    language: str
    since_ms: int
    share: float
    baseline: float
    mark: float


@dataclass(frozen=True)
class Transition:
    event: str  # "raised" | "cleared"
    language: str
    at_ms: int
    share: float
    baseline: float
    mark: float  # the mark crossed
    posts: int


@dataclass(frozen=True)
class Reading:
    """One judgement of the window: shares, the alerts after it, what moved."""

    posts: int
    shares: dict[str, float]
    judged: bool  # False: fewer than min_posts in the window, nothing moved
    raised: dict[str, Alert]
    transitions: tuple[Transition, ...] = field(default=())

    @property
    def changed(self) -> bool:
        return bool(self.transitions)


def assess(
    counts: Mapping[str, int], spec: LanguageMix, raised: Mapping[str, Alert], now_ms: int
) -> Reading:
    """Judge the window's per-language ``counts`` against ``spec``, the alerts ``raised``
    so far: a raised language clears under its clear mark, any other raises at its own."""
    posts = sum(counts.values())
    current = shares(counts)
    if posts < spec.min_posts:
        return Reading(posts, current, False, dict(raised))
    after = dict(raised)
    moves = []
    for code in sorted(set(current) | set(raised)):
        share, baseline = current.get(code, 0.0), spec.baseline_of(code)
        if code in raised:
            mark = clear_mark(spec, code)
            if share < mark:
                del after[code]
                moves.append(Transition("cleared", code, now_ms, share, baseline, mark, posts))
        else:
            mark = raise_mark(spec, code)
            if share >= mark:
                after[code] = Alert(code, now_ms, share, baseline, mark)
                moves.append(Transition("raised", code, now_ms, share, baseline, mark, posts))
    return Reading(posts, current, True, after, tuple(moves))


# -- the state kept in Redis --------------------------------------------------------------------


def alerts_of(state: Mapping | None) -> dict[str, Alert]:
    """The raised alerts of a stored state (see ``snapshot``)."""
    return {code: Alert(**a) for code, a in ((state or {}).get("raised") or {}).items()}


def snapshot(
    reading: Reading,
    spec: LanguageMix,
    *,
    previous: Mapping | None,
    now_ms: int,
    bucket_s: int,
    profile: str | None,
    policy_version: str,
    evaluator: str,
) -> dict:
    """The state to store after ``reading``: what /v1/stats shows and every worker reads."""
    languages = sorted(set(reading.shares) | set(spec.baseline) | set(reading.raised))
    history = [*((previous or {}).get("history") or []), *map(asdict, reading.transitions)]
    return {
        "evaluated_at_ms": now_ms,
        "evaluated_by": evaluator,
        "policy_version": policy_version,
        "window_s": round(spec.window_minutes * 60, 3),
        "bucket_s": bucket_s,
        "min_posts": spec.min_posts,
        "posts": reading.posts,
        "judged": reading.judged,
        "shares": {k: round(v, 4) for k, v in reading.shares.items()},
        "marks": {
            code: {
                "baseline": spec.baseline_of(code),
                "raise": round(raise_mark(spec, code), 4),
                "clear": round(clear_mark(spec, code), 4),
            }
            for code in languages
        },  # fmt: skip
        "raised": {code: asdict(a) for code, a in sorted(reading.raised.items())},
        "profile": profile,
        "history": history[-HISTORY:],
    }


def summary(state: Mapping | None, now_ms: int) -> dict | None:
    """The state as /v1/stats shows it (None: never evaluated), with its age."""
    if not state:
        return None
    age = max(now_ms - int(state.get("evaluated_at_ms", now_ms)), 0)
    return {**state, "age_s": round(age / 1000, 1)}
