"""Posts: submit one or a batch (queued for the workers), read a post's decision, and the
synchronous path."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Depends, Path
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from service.api.errors import BACKLOG_FULL, error_response, not_found, validation_errors
from service.api.openapi import error_response as documented
from service.api.security import author_checks, author_limit, caller, rate_limited
from service.api.state import AppState, get_state
from service.api.sync import decide_or_answer
from service.auth import Principal
from service.queue import FULL, QUEUED
from service.review.store import ReviewStore
from service.schemas import (
    POST_ID,
    Accepted,
    BatchIn,
    BatchItemResult,
    BatchResult,
    Decision,
    Failed,
    Pending,
    PostIn,
)

router = APIRouter(tags=["posts"])
SUBMIT, READ = Depends(caller("submit")), Depends(caller("read"))


def new_id() -> str:
    return f"p_{uuid.uuid4().hex}"


async def retry_after(st: AppState) -> int:
    """Seconds until the workers have drained 5 % of the backlog bound, at the rate of the
    last 10 s (1..60): long enough to matter, short enough not to idle them."""
    rate = await st.reader.recent_rate(10)
    return int(min(60, max(1, 0.05 * st.settings.max_backlog / max(rate, 1.0))))


async def charged_authors(st: AppState, posts: list[PostIn]) -> list[str | None]:
    """Per post, the author whose rate limit it uses: none for a post whose id was accepted
    before (a client retrying a post it already delivered gets `duplicate`, not a 429, and
    the retry costs its author nothing)."""
    authors = [p.author.id if p.author else None for p in posts]
    if author_limit(st) is None:
        return authors  # no author limits: nothing to charge, nothing to look up
    known = await st.producer.known([p.post_id if a else None for p, a in zip(posts, authors, strict=True)])
    return [None if seen else a for a, seen in zip(authors, known, strict=True)]


@router.post("/v1/posts", status_code=202, response_model=Accepted)
async def submit(
    post: PostIn, st: AppState = Depends(get_state), _: Principal = SUBMIT
) -> Any:
    """Queue a post. The 202 is sent once the post is durably in Redis; 429 with
    Retry-After when the backlog is at its bound or the author posts too fast."""
    [limit] = await author_checks(st, await charged_authors(st, [post]))
    if limit is not None and not limit.allowed:
        raise rate_limited(limit, "author.id")
    post_id = post.post_id or new_id()
    [outcome] = await st.producer.enqueue_many(
        [(post_id, post.model_dump(mode="json", exclude_none=True))]
    )
    if outcome == FULL:
        st.metrics.posts.labels("refused").inc()
        return error_response(429, "backlog_full", [BACKLOG_FULL],
                              {"Retry-After": str(await retry_after(st))})  # fmt: skip
    st.metrics.posts.labels(outcome).inc()
    return Accepted(post_id=post_id, status=outcome)


@router.post("/v1/posts/batch", status_code=202, response_model=BatchResult)
async def submit_batch(
    batch: BatchIn, st: AppState = Depends(get_state), _: Principal = SUBMIT
) -> Any:
    """Queue up to 1,000 posts; each is accepted or rejected on its own (a post refused for a
    full backlog is `rejected` with type `backlog_full`, and the answer has Retry-After)."""
    results: list[BatchItemResult] = []
    valid: list[tuple[int, str, PostIn]] = []
    for i, raw in enumerate(batch.posts):
        try:
            post = PostIn.model_validate(raw)
        except ValidationError as exc:
            errors = validation_errors(exc, root=f"posts.{i}")
            results.append(BatchItemResult(index=i, status="rejected", errors=errors))
            continue
        valid.append((i, post.post_id or new_id(), post))
    limits = await author_checks(st, await charged_authors(st, [p for _, _, p in valid]))
    good: list[tuple[int, str, dict]] = []
    for (i, post_id, post), limit in zip(valid, limits, strict=True):
        if limit is not None and not limit.allowed:  # this author posts too fast: this post only
            errors = [{"field": f"posts.{i}.author.id", "type": "rate_limited",
                       "message": f"author over its rate limit; retry after {limit.retry_after_header} s"}]  # fmt: skip
            results.append(BatchItemResult(index=i, post_id=post_id, status="rejected", errors=errors))
        else:
            good.append((i, post_id, post.model_dump(mode="json", exclude_none=True)))
    outcomes = await st.producer.enqueue_many([(pid, p) for _, pid, p in good])
    for (i, post_id, _), outcome in zip(good, outcomes, strict=True):
        if outcome == FULL:
            results.append(BatchItemResult(index=i, post_id=post_id, status="rejected",
                                           errors=[BACKLOG_FULL]))  # fmt: skip
        else:
            results.append(BatchItemResult(index=i, post_id=post_id, status=outcome))
    results.sort(key=lambda r: r.index)
    accepted = sum(r.status != "rejected" for r in results)
    refused = outcomes.count(FULL)
    posts = st.metrics.posts
    posts.labels("queued").inc(outcomes.count(QUEUED))
    posts.labels("duplicate").inc(accepted - outcomes.count(QUEUED))
    posts.labels("refused").inc(refused)
    posts.labels("rejected").inc(len(results) - accepted - refused)
    body = BatchResult(accepted=accepted, rejected=len(results) - accepted, results=results)
    if refused:  # the refused posts may be sent again after Retry-After
        return JSONResponse(body.model_dump(mode="json"), status_code=202,
                            headers={"Retry-After": str(await retry_after(st))})  # fmt: skip
    return body


@router.get(
    "/v1/posts/{post_id}/decision",
    response_model=Decision | Failed,
    responses={202: {"model": Pending}, 404: {"description": "unknown post id"}},
)
async def get_decision(
    post_id: str = Path(pattern=POST_ID), st: AppState = Depends(get_state),
    _: Principal = READ,
) -> Any:  # fmt: skip
    """The decision (200), still queued (202), dead-lettered (200, status failed), unknown (404)."""
    status, value = await st.reader.lookup(post_id)
    if status == "decided":  # with the human verdict on top, once a reviewer gave one
        return JSONResponse(await ReviewStore(st.client, st.keys.prefix).with_review(value))
    if status == "failed":
        return Failed(post_id=post_id, error=value)
    if status == "pending":
        return JSONResponse(Pending(post_id=post_id).model_dump(), status_code=202)
    return not_found("post_id", f"unknown post id {post_id!r}")


@router.post("/v1/moderate", response_model=Decision, responses={504: documented(
    "not decided within FLOODGATE_SYNC_DEADLINE_S; the post stays queued and will be decided")})
async def moderate(
    post: PostIn, st: AppState = Depends(get_state), _: Principal = SUBMIT
) -> Any:
    """Decide one post now: it rides the workers' batches on the priority stream, is stored
    like any other (same decision as queued, retrievable by id) and answered when decided;
    504 past FLOODGATE_SYNC_DEADLINE_S (the post stays queued and will be decided)."""
    out = await decide_or_answer(st, [(post.post_id or new_id(), post)])
    return JSONResponse(out[0]) if isinstance(out, list) else out
