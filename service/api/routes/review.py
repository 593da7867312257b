"""Human review: list the queues a reviewer may see, claim items with a lease, resolve them
with a verdict; authors' appeals; the measured precision of rules per language.

Reviewers are API keys with the `review` role (admin keys too). The live policy's
`review.reviewers` maps a key's name to a pool, and a reviewer sees only the queues of the
languages its pool reads; an admin key sees every queue. Every claim and verdict names the
key (Principal.name), and each verdict is appended to the audit stream.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import JSONResponse

from service.api.errors import not_found, one_error
from service.api.metrics import ReviewFamilies
from service.api.openapi import error_response as documented
from service.api.security import caller
from service.api.state import AppState, get_state
from service.auth import Principal
from service.policy import LoadedPolicy, load_policy
from service.policy.model import Review
from service.policy.parse import load_bundle
from service.review import rules
from service.review.store import ReviewStore, now_ms
from service.schemas import POST_ID, AppealIn, ClaimIn, ResolveIn

router = APIRouter(tags=["review"])
REVIEW, SUBMIT = Depends(caller("review")), Depends(caller("submit"))
_policies: dict[str, LoadedPolicy] = {}  # live version -> parsed policy (small: versions change rarely)


async def live_review(st: AppState) -> Review | None:
    """The live policy's review section (the file's policy while none is published)."""
    live = (await asyncio.to_thread(st.registry.current))["live"] or ""
    if live not in _policies:
        bundle = await asyncio.to_thread(st.registry.bundle, live) if live else None
        lp = await asyncio.to_thread(
            load_bundle if bundle else load_policy, bundle or st.settings.policy_path
        )
        if len(_policies) > 16:
            _policies.clear()
        _policies[live] = lp
    return _policies[live].policy.review


def store(st: AppState) -> ReviewStore:
    return ReviewStore(st.client, st.settings.key_prefix, st.settings.audit_maxlen)


async def _languages(st: AppState, who: Principal) -> tuple[Review | None, frozenset[str] | None]:
    review = await live_review(st)
    return review, rules.reviewer_languages(review, who.name, "admin" in who.roles)


def _not_a_reviewer(who: Principal) -> JSONResponse:
    return one_error(403, "forbidden", "authorization",
                     f"key {who.name!r} is not in a reviewer pool (the policy's review.reviewers)",
                     "not_a_reviewer")  # fmt: skip


@router.get("/v1/review/queues")
async def queues(st: AppState = Depends(get_state), who: Principal = REVIEW) -> Any:
    """The queues you may see: items waiting and in review, the oldest item's age, the
    language's capacity, the expected wait against the SLA, how many items overflowed, and
    how many of those still wait (limited) in the backlog for room in the queue."""
    review, languages = await _languages(st, who)
    if languages is not None and not languages:
        return _not_a_reviewer(who)
    out = await queue_views(st, review, languages)
    return {"reviewer": who.name, "languages": sorted(languages) if languages is not None else None,
            "queues": out}  # fmt: skip


async def queue_views(
    st: AppState, review: Review | None, languages: frozenset[str] | None
) -> list[dict]:
    """Every queue of these languages (None: all, as an admin sees them and /metrics
    exports them), the policy's declared ones included while empty."""
    s = store(st)
    names = await s.queue_names()
    if languages is not None:
        langs: set[str] | frozenset[str] = languages
    else:  # every language with a queue or a pool
        pooled = {lang for p in (review.pools.values() if review else ()) for lang in p.languages}
        langs = {rules.split_queue(q)[0] for q in names} | pooled
    names |= set(rules.declared_queues(review, langs))
    names = {q for q in names if rules.visible(q, languages)}
    figures = await s.queue_figures(names)
    now = now_ms()
    return [rules.queue_view(q, review, f["waiting"], f["in_review"], f["oldest_ms"], now,
                             f["counters"], f["backlog"]) for q, f in figures.items()]  # fmt: skip


async def review_families(st: AppState) -> ReviewFamilies:
    """/metrics' review figures: every queue (as an admin sees them) and the verdicts."""
    review = await live_review(st)
    queues = await queue_views(st, review, None)
    return ReviewFamilies(queues, rules.verdict_rows(await store(st).feedback()))


@router.post("/v1/review/claim")
async def claim(body: ClaimIn, st: AppState = Depends(get_state), who: Principal = REVIEW) -> Any:
    """Lease the next `count` items (highest priority first) of one queue, or of every queue
    you may see. An item you do not resolve within the lease goes back into its queue. Each
    claim first refills the queues from their backlogs (posts that overflowed and were
    limited meanwhile), best first, up to their admission limits."""
    review, languages = await _languages(st, who)
    if languages is not None and not languages:
        return _not_a_reviewer(who)
    s = store(st)
    if body.queue is not None:
        if not rules.visible(body.queue, languages):
            return one_error(403, "forbidden", "queue", f"your pool does not read the language "
                             f"of {body.queue!r}", "language_not_read")  # fmt: skip
        names = [body.queue]
    else:
        names = sorted(q for q in await s.queue_names() if rules.visible(q, languages))
    lease_s = st.settings.review_lease_s
    # each queue is refilled from its backlog up to the live policy's admission limit
    limits = {q: rules.queue_limits(review, q)[2] for q in names}
    items = await s.claim(who.name, limits, body.count, lease_s)
    return {"reviewer": who.name, "lease_s": lease_s, "items": [i for i in items if i]}


@router.post("/v1/review/items/{post_id}/resolve", responses={
    404: documented("no review item for this post"),
    409: documented("not leased by you, or an appeal of your own verdict")})
async def resolve(
    body: ResolveIn, post_id: str = Path(pattern=POST_ID), st: AppState = Depends(get_state),
    who: Principal = REVIEW,
) -> Any:  # fmt: skip
    """Resolve an item you hold with a verdict (allow, label, limit_reach, remove) and a
    reason. On an appeal the verdict upholds or overturns the action the author appealed;
    an appeal is resolved by a reviewer other than the one who gave the first verdict."""
    s = store(st)
    item = await s.item(post_id)
    if item is None:
        return not_found("post_id", f"no review item for post {post_id!r}")
    verdict: dict[str, Any] = {"action": body.action, "reason": body.reason, "reviewer": who.name,
                               "at": now_ms(), "queue": item.get("queue")}  # fmt: skip
    feedback: list[str] = []
    if item["kind"] == "appeal":
        _, decision = await st.reader.lookup(post_id)
        standing = rules.standing_action(decision["action"] if isinstance(decision, dict) else "",
                                         item)  # fmt: skip
        verdict["outcome"] = rules.appeal_outcome(standing, body.action)
        feedback.append(f"{rules.APPEAL}|{item.get('language', 'und')}|{verdict['outcome']}")
        if item.get("verdict") is None:  # no human judged the automated decision before
            feedback += rules.feedback_fields(item, body.action)
    else:
        feedback += rules.feedback_fields(item, body.action)
    feedback.append(rules.verdict_field(item, body.action))
    result = await s.resolve(post_id, who.name, verdict, feedback)
    if result == "missing":
        return not_found("post_id", f"no review item for post {post_id!r}")
    if result == "same_reviewer":
        return one_error(409, "conflict", "post_id", "an appeal is resolved by a reviewer other "
                         "than the one who gave the first verdict", "same_reviewer")  # fmt: skip
    if result != "ok":
        return one_error(409, "conflict", "post_id", f"you do not hold a lease on {post_id!r} "
                         "(not claimed, claimed by another reviewer, or the lease expired)",
                         "not_leased")  # fmt: skip
    return {"post_id": post_id, "verdict": verdict, "final_action": body.action}


@router.get("/v1/review/items/{post_id}/context", responses={
    403: documented("your pool does not read the post's language"),
    404: documented("no review item for this post")})
async def context(
    post_id: str = Path(pattern=POST_ID), limit: int = Query(10, ge=1, le=50),
    st: AppState = Depends(get_state), who: Principal = REVIEW,
) -> Any:  # fmt: skip
    """What a reviewer reads beside an item: the post's language as detected (script,
    confidence, mixed segments) and its author's latest posts (newest first, up to `limit`,
    this one left out), each with its automated and final action, language, review state
    and, where Floodgate keeps it (posts with a review item), its text. Recent posts are
    those the live policy counts per author (its longest `author_posts` window)."""
    _, languages = await _languages(st, who)
    if languages is not None and not languages:
        return _not_a_reviewer(who)
    s = store(st)
    item = await s.item(post_id)
    if item is None:
        return not_found("post_id", f"no review item for post {post_id!r}")
    if not rules.visible(rules.queue_name(item.get("language", "und"), ""), languages):
        return one_error(403, "forbidden", "post_id", "your pool does not read the language "
                         f"of {post_id!r}", "language_not_read")  # fmt: skip
    [decision] = await st.reader.decisions([post_id])
    author = (item.get("author") or {}).get("id")
    recent = [(p, at) for p, at in (await st.reader.author_posts(author, limit + 1) if author else [])
              if p != post_id][:limit]  # fmt: skip
    ids = [p for p, _ in recent]
    decisions, items = await st.reader.decisions(ids), await s.items(ids)
    return {
        "post_id": post_id, "language": (decision or {}).get("language"),
        "author": item.get("author") or None,
        "recent_posts": [rules.recent_post(p, at, d, i)
                         for (p, at), d, i in zip(recent, decisions, items, strict=True)],
    }  # fmt: skip


@router.post("/v1/posts/{post_id}/appeal", status_code=202, responses={
    404: documented("unknown post id"),
    409: documented("nothing to appeal, still waiting for review, or appealed already")})
async def appeal(
    body: AppealIn, post_id: str = Path(pattern=POST_ID), st: AppState = Depends(get_state),
    _: Principal = SUBMIT,
) -> Any:  # fmt: skip
    """The author appeals a post's decision (limited, removed, or a reviewer's verdict): the
    post goes into its language's appeal queue, once."""
    review = await live_review(st)
    s = store(st)
    item = await s.item(post_id)
    if item is None or review is None:
        status, _ = await st.reader.lookup(post_id)
        if status == "unknown":
            return not_found("post_id", f"unknown post id {post_id!r}")
        return one_error(409, "conflict", "post_id", "nothing to appeal: the post was neither "
                         "limited, removed nor reviewed", "not_appealable")  # fmt: skip
    queue = rules.queue_name(item.get("language", "und"), rules.APPEAL)
    prio = item.get("priority") or rules.priority(review.default_severity, 0.0, item.get("reach"))
    appeal_doc = {"reason": body.reason, "at": now_ms()}
    result = await s.appeal(post_id, appeal_doc, queue, rules.queue_score(prio, now_ms() / 1000))
    if result == "pending":
        return one_error(409, "conflict", "post_id", "the post is still waiting for its first "
                         "review", "review_pending")  # fmt: skip
    if result == "already":
        return one_error(409, "conflict", "post_id", "the post was appealed already",
                         "already_appealed")  # fmt: skip
    if result != "ok":
        return not_found("post_id", f"no review item for post {post_id!r}")
    return {"post_id": post_id, "status": "appealed", "queue": queue}


@router.get("/v1/review/report")
async def report(st: AppState = Depends(get_state), _: Principal = REVIEW) -> dict:
    """Measured precision of each rule and category per language (verdicts that confirmed
    the automated flag), appeal outcomes, and the queues' counters."""
    s = store(st)
    return rules.summary(await s.feedback(), await s.counts())
