"""Review rules, pure: queue names, priority, capacity, the overflow fallback, feedback sums.

Nothing here reads Redis or a clock; times come in as arguments. ``service.review.store``
and the worker's commit (``store.COMMIT_LUA``) do the I/O with what these functions decide.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from service.policy.model import SEVERITY, SEVERITY_LEVELS, Policy, Review, review_reason
from service.schemas import Decision, Fallback, ReviewInfo

APPEAL = "appeal"
VERDICT = "verdict"  # feedback counters of verdicts by language, kind and action
VERDICTS = ("allow", "label", "limit_reach", "remove")
# actions an author may appeal: the post is shown less or not at all
APPEALABLE = ("limit_reach", "remove", "review")
# the queue score keeps equal priorities first in, first out (seconds, below 1e10)
_AGE_SPAN = 10_000_000_000


# -- queues ----------------------------------------------------------------------------


def queue_name(language: str, reason: str) -> str:
    """`en/self_harm`: a queue per language and reason."""
    return f"{language}/{reason}"


def split_queue(name: str) -> tuple[str, str]:
    language, _, reason = name.partition("/")
    return language, reason


def level(severity: str) -> int:
    """low 1 .. severe 4."""
    return SEVERITY_LEVELS.index(severity) + 1


def priority(severity: str, score: float, reach: int | None = None) -> float:
    """Severity dominates (100 per level), then the category's score (0..50), then the
    author's reach (0..49, logarithmic: 10 followers 7, a million 42): a severe item always
    comes before a high one, a confident one before an unsure one of the same severity."""
    reach_term = min(49.0, 7.0 * math.log10(1 + reach)) if reach else 0.0
    return round(100 * level(severity) + 50 * min(max(score, 0.0), 1.0) + reach_term, 2)


def queue_score(prio: float, enqueued_s: float) -> int:
    """Sorted-set score: higher priority first, then older first."""
    return int(round(prio * 100)) * _AGE_SPAN + (_AGE_SPAN - int(enqueued_s))


# -- capacity ---------------------------------------------------------------------------


def capacity_per_hour(review: Review, language: str) -> float:
    """Items per hour the pools can review in ``language``; a pool that reads several
    languages splits its time evenly among them."""
    return sum(
        p.reviewers * p.items_per_hour / len(p.languages)
        for p in review.pools.values()
        if language in p.languages
    )


def expected_wait_s(depth: int, capacity: float) -> float | None:
    """Seconds until the last of ``depth`` waiting items is reviewed; None: never (no one
    reads the language)."""
    if depth <= 0:
        return 0.0
    if capacity <= 0:
        return None
    return round(depth / capacity * 3600, 1)


def sla_s(review: Review, reason: str) -> float:
    if reason == APPEAL:
        return review.appeal_sla_minutes * 60
    return review.queues[reason].sla_minutes * 60


def admission_limit(capacity: float, sla_seconds: float) -> int:
    """Items a queue may hold so that a new one is still reviewed within the SLA: a new item
    is admitted while depth + 1 <= capacity x SLA (hours); 0 when nobody reads the language."""
    return max(int(math.floor(capacity * sla_seconds / 3600 + 1e-9)), 0)


def overflows(depth: int, limit: int) -> bool:
    """The overflow decision: the queue already holds as many items as its SLA allows."""
    return depth >= limit


def fallback_action(overflow: str, severity: str) -> str:
    """The action a new item takes while its queue overflows: the queue's `overflow`, but a
    severe item never falls below limit_reach (never allow, never only a label)."""
    if severity == "severe" and SEVERITY[overflow] < SEVERITY["limit_reach"]:
        return "limit_reach"
    return overflow


# -- a decision into its queue -----------------------------------------------------------


@dataclass(frozen=True)
class Routing:
    """Where a review outcome goes and how urgent it is."""

    reason: str
    queue: str
    severity: str
    category: str | None
    score: float
    priority: float


def route(decision: Decision, policy: Policy, reach: int | None = None) -> Routing | None:
    """The queue and priority of a decision that asks for review (None otherwise, or when the
    policy declares no review). The first review rule's matched categories give the severity
    (the highest, then its score); the queue's own severity is a floor."""
    review = policy.review
    if review is None or decision.action != "review":
        return None
    rules = {r.id: r for r in policy.rules}
    first = next((r for r in decision.reasons if r.action == "review"), None)
    rule = rules.get(first.rule) if first else None
    reason = review_reason(rule.queue if rule else None)
    if reason not in review.queues:  # a policy swap between decide and commit: be safe
        reason = "general" if "general" in review.queues else next(iter(review.queues))
    spec = review.queues[reason]
    fired = dict(first.categories) if first else {}
    best: tuple[int, float, str | None] = (level(spec.severity or review.default_severity), 0.0, None)
    for cat, score in fired.items():
        cand = (level(review.severity.get(cat, review.default_severity)), score, cat)
        if cand[:2] > best[:2]:
            best = cand
    severity = SEVERITY_LEVELS[best[0] - 1]
    return Routing(reason, queue_name(decision.language.code, reason), severity, best[2],
                   round(best[1], 4), priority(severity, best[1], reach))  # fmt: skip


@dataclass(frozen=True)
class ReviewEntry:
    """What the commit script needs for one post: its item (for review and appeals) and,
    for a review outcome, the queue, score, admission limit and the fallback decision."""

    item_json: str
    queue: str = ""
    score: int = 0
    limit: int = 0
    fallback_json: str = ""
    fallback_stat: str = ""


@dataclass(frozen=True)
class Planned:
    decision_json: str
    review: ReviewEntry | None


def plan(decision: Decision, post: Mapping, policy: Policy, now_s: float) -> Planned:
    """A decision ready to commit: with its routing (and the decision it becomes if its queue
    overflows) when it asks for review, with an item an author may appeal when it limits or
    removes the post, as it is otherwise."""
    review = policy.review
    if review is None or decision.action not in APPEALABLE:
        return Planned(decision.model_dump_json(), None)
    author = post.get("author") or {}
    reach = author.get("followers")
    routing = route(decision, policy, reach)
    item = {
        "post_id": decision.post_id, "text": post.get("text", ""), "author": author,
        "language": decision.language.code, "market": decision.market,
        "action": decision.action, "rules": [r.rule for r in decision.reasons],
        "categories": sorted({c for r in decision.reasons for c in r.categories}),
        "scores": decision.scores, "labels": decision.labels,
        "reach": reach, "decided_at": decision.decided_at.isoformat(),
        # the policy's memory examples the post resembles (why the reviewer sees it)
        "memory": {c: r.model_dump() for c, r in (decision.memory or {}).items()},
    }  # fmt: skip
    if routing is None:
        return Planned(decision.model_dump_json(), ReviewEntry(json.dumps(item, ensure_ascii=False)))
    item.update(queue=routing.queue, reason=routing.reason, severity=routing.severity,
                category=routing.category, priority=routing.priority)  # fmt: skip
    spec = review.queues[routing.reason]
    capacity = capacity_per_hour(review, decision.language.code)
    sla = sla_s(review, routing.reason)
    limit = admission_limit(capacity, sla)
    info = ReviewInfo(queue=routing.queue, reason=routing.reason, severity=routing.severity,
                      priority=routing.priority)  # fmt: skip
    queued = decision.model_copy(update={"review": info})
    action = fallback_action(spec.overflow, routing.severity)
    fallback = Fallback(action=action, sla_s=sla, capacity_per_hour=round(capacity, 2),
                        admission_limit=limit)  # fmt: skip
    own = decision.outcomes[decision.market]
    labels = list(dict.fromkeys([*decision.labels, *spec.overflow_labels]))
    overflowed = decision.model_copy(update={
        "action": action, "labels": labels, "review": info.model_copy(update={"fallback": fallback}),
        "outcomes": {**decision.outcomes, decision.market: own.model_copy(
            update={"action": action, "labels": list(dict.fromkeys([*own.labels, *spec.overflow_labels]))})},
    })  # fmt: skip
    return Planned(
        queued.model_dump_json(),
        ReviewEntry(
            item_json=json.dumps(item, ensure_ascii=False),
            queue=routing.queue,
            score=queue_score(routing.priority, now_s),
            limit=limit,
            fallback_json=overflowed.model_dump_json(),
            fallback_stat=f"{decision.language.code}|{action}",
        ),
    )


# -- visibility --------------------------------------------------------------------------


def reviewer_languages(review: Review | None, name: str, admin: bool) -> frozenset[str] | None:
    """The languages a reviewer reads (its pool's); None: every language (admin keys)."""
    if admin:
        return None
    if review is None or name not in review.reviewers:
        return frozenset()
    return frozenset(review.pools[review.reviewers[name]].languages)


def visible(queue: str, languages: frozenset[str] | None) -> bool:
    return languages is None or split_queue(queue)[0] in languages


# -- verdicts and feedback ---------------------------------------------------------------


def appeal_outcome(standing: str, verdict: str) -> str:
    """An appeal is upheld when the second reviewer keeps the action the author appealed."""
    return "upheld" if verdict == standing else "overturned"


def feedback_fields(item: Mapping, verdict: str) -> list[str]:
    """Counter fields one verdict adds: each rule and category that flagged the post, in its
    language, is judged; confirmed when the human did not allow the post."""
    lang = item.get("language", "und")
    confirmed = verdict != "allow"
    fields = []
    for kind, names in (("rule", item.get("rules", [])), ("category", item.get("categories", []))):
        for name in names:
            fields.append(f"{kind}|{name}|{lang}|judged")
            if confirmed:
                fields.append(f"{kind}|{name}|{lang}|confirmed")
    return fields


def verdict_field(item: Mapping, action: str) -> str:
    """The counter one verdict adds: by the post's language, the item's kind (review or
    appeal) and the verdict's action."""
    return f"{VERDICT}|{item.get('language', 'und')}|{item.get('kind') or 'review'}|{action}"


def verdict_rows(counts: Mapping[str, int | str]) -> list[dict]:
    """Counter hash -> verdicts per language, kind and action."""
    rows = []
    for key, value in sorted(counts.items()):
        parts = key.split("|")
        if parts[0] == VERDICT and len(parts) == 4:
            rows.append({"language": parts[1], "kind": parts[2], "action": parts[3],
                         "count": int(value)})  # fmt: skip
    return rows


def precision_rows(counts: Mapping[str, int | str]) -> dict[str, list[dict]]:
    """Counter hash -> rows per rule and per category (precision = confirmed / judged,
    overturn rate = 1 - precision) and appeal outcomes per language."""
    cells: dict[tuple[str, str, str], dict[str, int]] = {}
    appeals: dict[str, dict[str, int]] = {}
    for key, value in counts.items():
        parts = key.split("|")
        if parts[0] == APPEAL and len(parts) == 3:
            appeals.setdefault(parts[1], {"upheld": 0, "overturned": 0})[parts[2]] = int(value)
        elif len(parts) == 4 and parts[0] in ("rule", "category"):
            cells.setdefault((parts[0], parts[1], parts[2]), {})[parts[3]] = int(value)
    out: dict[str, list[dict]] = {"rules": [], "categories": [], "appeals": []}
    for (kind, name, lang), c in sorted(cells.items()):
        judged, confirmed = c.get("judged", 0), c.get("confirmed", 0)
        prec = round(confirmed / judged, 4) if judged else None
        out["rules" if kind == "rule" else "categories"].append({
            "name": name, "language": lang, "judged": judged, "confirmed": confirmed,
            "precision": prec, "overturn_rate": round(1 - prec, 4) if prec is not None else None,
        })  # fmt: skip
    for lang, c in sorted(appeals.items()):
        total = c["upheld"] + c["overturned"]
        out["appeals"].append({"language": lang, **c,
                               "overturn_rate": round(c["overturned"] / total, 4) if total else None})  # fmt: skip
    return out


def queue_limits(review: Review | None, name: str) -> tuple[float, float | None, int | None]:
    """A queue's capacity (items per hour), SLA (s) and admission limit under ``review``;
    SLA and limit are None for a queue the policy does not declare."""
    language, reason = split_queue(name)
    capacity = capacity_per_hour(review, language) if review else 0.0
    declared = review is not None and (reason == APPEAL or reason in review.queues)
    if review is None or not declared:
        return capacity, None, None
    sla = sla_s(review, reason)
    return capacity, sla, admission_limit(capacity, sla)


def queue_view(
    name: str, review: Review | None, waiting: int, in_review: int, oldest_ms: int | None,
    now_ms: int, counters: Mapping[str, int] = {},  # noqa: B006 (read only)
    backlog: int = 0,
) -> dict:  # fmt: skip
    """One queue as the API lists it: depth, age, capacity, expected wait against the SLA,
    and the overflowed posts waiting (limited) in its backlog for room."""
    language, reason = split_queue(name)
    capacity, sla, limit = queue_limits(review, name)
    wait = expected_wait_s(waiting, capacity)
    return {
        "queue": name, "language": language, "reason": reason,
        "waiting": waiting, "in_review": in_review,
        "oldest_age_s": round((now_ms - oldest_ms) / 1000, 1) if oldest_ms is not None else None,
        "capacity_per_hour": round(capacity, 2), "expected_wait_s": wait, "sla_s": sla,
        "admission_limit": limit,
        "over_sla": sla is not None and (wait is None or wait > sla),
        "backlog": backlog,
        **{k: int(counters.get(k, 0)) for k in ("enqueued", "overflowed", "admitted")},
    }  # fmt: skip


def declared_queues(review: Review | None, languages: Iterable[str]) -> list[str]:
    """Every queue the policy implies for these languages (shown even while empty)."""
    if review is None:
        return []
    return [queue_name(lang, reason) for lang in sorted(languages)
            for reason in [*review.queues, APPEAL]]  # fmt: skip


def public_state(state: str | None, kind: str | None) -> str | None:
    """decided, overflowed, queued, in_review, resolved; appeal_queued, appeal_in_review,
    appeal_resolved once the author appealed."""
    if not state:
        return None
    name = {"leased": "in_review"}.get(state, state)
    return f"appeal_{name}" if kind == "appeal" else name


def standing_action(decision_action: str, item: Mapping) -> str:
    """The action in force: the first verdict's, else the automated one."""
    return (item.get("verdict") or {}).get("action") or decision_action


def merge(decision: dict, item: Mapping | None, history: list[dict]) -> dict:
    """The decision a client reads: the automated one, the human verdicts on top."""
    if item is None:
        return {**decision, "final_action": decision.get("action")}
    review = dict(decision.get("review") or {})
    appeal = None
    if item.get("appeal"):
        appeal = {**item["appeal"], "verdict": item.get("appeal_verdict")}
    review.update(state=public_state(item.get("state"), item.get("kind")),
                  verdict=item.get("verdict"), appeal=appeal, history=history)  # fmt: skip
    latest = item.get("appeal_verdict") or item.get("verdict")
    final = latest["action"] if latest else decision.get("action")
    return {**decision, "review": review, "final_action": final}


def queue_counters(counts: Mapping[str, str | int]) -> dict[str, dict[str, int]]:
    """``<queue>|<counter>`` fields -> {queue: {enqueued, overflowed, admitted, in_review,
    resolved}} (admitted: overflowed items that entered the queue from its backlog later)."""
    out: dict[str, dict[str, int]] = {}
    for key, value in counts.items():
        queue, _, counter = key.rpartition("|")
        out.setdefault(queue, {"enqueued": 0, "overflowed": 0, "admitted": 0, "in_review": 0,
                               "resolved": 0})  # fmt: skip
        out[queue][counter] = int(value)
    return dict(sorted(out.items()))


def summary(feedback: Mapping[str, str | int], counts: Mapping[str, str | int]) -> dict:
    """The `review` section of /v1/stats and `floodgate review report`."""
    return {"queues": queue_counters(counts), **precision_rows(feedback),
            "verdicts": verdict_rows(feedback)}  # fmt: skip


def recent_post(post_id: str, at_ms: int, decision: Mapping | None, item: Mapping | None) -> dict:
    """One of an author's recent posts as a reviewer sees it: the automated action with the
    human one on top, its language, and its text where Floodgate keeps one (a post with a
    review item: reviewed, limited or removed; allowed posts' texts are not stored)."""
    final = merge(dict(decision), item, [])["final_action"] if decision else None
    language = (decision or {}).get("language") or {}
    return {
        "post_id": post_id, "at_ms": at_ms, "status": "decided" if decision else "undecided",
        "action": (decision or {}).get("action"), "final_action": final,
        "language": language.get("code") or (item or {}).get("language"),
        "review_state": public_state(item.get("state"), item.get("kind")) if item else None,
        "text": (item or {}).get("text"),
    }  # fmt: skip
