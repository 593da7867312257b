"""Synchronous decisions: /v1/moderate and /v1/moderations ride the workers' batches.

The posts go on the priority stream (queue.Keys.sync_posts) that every worker reads before
the main one, are decided in the workers' batches by the one pipeline, stored like any other
post (retrievable by id, in the audit stream), and the caller waits for them: the worker's
commit pushes to each post's reply list, which the API waits on (BLPOP), checking the
stored decision between waits, so a post decided before, or by a duplicate call, is found
too. The API process never loads the model.
"""

from __future__ import annotations

import asyncio
import json

from service.api.errors import BACKLOG_FULL, error_response, one_error
from service.api.state import AppState
from service.queue import FULL, QUEUED
from service.review.store import ReviewStore
from service.schemas import PostIn


class SyncRefused(Exception):
    """The priority stream is at its backlog bound: nothing was queued."""


class SyncDeadline(Exception):
    """Not decided within the deadline; the posts stay queued and will be decided."""

    def __init__(self, post_ids: list[str], seconds: float) -> None:
        super().__init__(f"not decided within {seconds:g} s")
        self.post_ids, self.seconds = post_ids, seconds


class SyncFailed(Exception):
    """A post was dead-lettered (it cannot be decided)."""

    def __init__(self, post_id: str, error: str) -> None:
        super().__init__(error)
        self.post_id, self.error = post_id, error


async def decide_now(st: AppState, posts: list[tuple[str, PostIn]]) -> list[dict]:
    """Decisions for (post_id, post) pairs, in order, made by the workers: each exactly as
    GET /v1/posts/{id}/decision shows it (the human review merged in)."""
    outcomes = await st.producer.enqueue_many(
        [(pid, p.model_dump(mode="json", exclude_none=True)) for pid, p in posts], priority=True
    )
    if FULL in outcomes:
        raise SyncRefused()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + st.settings.sync_deadline_s
    ids = [pid for pid, _ in posts]
    found: dict[str, dict] = {}
    # a post queued just now cannot be decided yet: wait first. A duplicate may have been
    # decided long ago (its reply list gone): look first.
    wait = all(o == QUEUED for o in outcomes)
    while True:
        todo = [pid for pid in ids if pid not in found]
        left = deadline - loop.time()
        if left <= 0:
            raise SyncDeadline(todo, st.settings.sync_deadline_s)
        # at most a second between looks at the store (a dead letter pushes no reply); never
        # under 10 ms: a BLPOP timeout that rounds to 0 would wait forever on older servers
        values = await _look(st, todo, max(min(left, 1.0), 0.01) if wait else 0)
        wait = True
        for pid, (decision, failed) in zip(todo, values, strict=True):
            if decision is not None:  # read as GET .../decision reads it (review merged)
                found[pid] = await ReviewStore(st.client, st.keys.prefix).with_review(
                    json.loads(decision)
                )
            elif failed is not None:
                raise SyncFailed(pid, failed)
        if len(found) == len(ids):
            return [found[pid] for pid in ids]


async def _look(st: AppState, post_ids: list[str], wait_s: float) -> list[tuple]:
    """(decision, failed) of each post, after waiting up to ``wait_s`` for a worker's reply.

    One round trip: BLPOP and the reads go in one pipeline on a waiter connection, and
    Redis runs a blocked client's next commands only once the BLPOP returns."""
    client = st.waiter if wait_s > 0 else st.client
    async with client.pipeline(transaction=False) as pipe:
        if wait_s > 0:
            pipe.blpop([st.keys.reply(pid) for pid in post_ids], timeout=wait_s)
        for pid in post_ids:
            pipe.get(st.keys.decision(pid))
            pipe.get(st.keys.failed(pid))
        values = await pipe.execute()
    values = values[1:] if wait_s > 0 else values
    return [(values[2 * i], values[2 * i + 1]) for i in range(len(post_ids))]


async def decide_or_answer(st: AppState, posts: list[tuple[str, PostIn]]):
    """decide_now for a route: the decisions, or the JSON error to answer (429 over the
    in-flight bound or a full backlog, 504 past the deadline, 422 for a dead-lettered post)."""
    if st.sync_slots.locked():  # bounded: a flood of sync calls must not starve the API
        return one_error(429, "too_many_requests", "request",
                         f"{st.settings.max_sync_inflight} synchronous calls are in flight; "
                         "retry after Retry-After seconds", "sync_inflight",
                         {"Retry-After": "1"})  # fmt: skip
    async with st.sync_slots:
        try:
            return await decide_now(st, posts)
        except SyncRefused:
            return error_response(429, "backlog_full", [BACKLOG_FULL], {"Retry-After": "5"})
        except SyncDeadline as exc:
            return error_response(504, "deadline_exceeded", [
                {"field": "post_id", "type": "deadline",
                 "message": f"{pid!r} was not decided within {exc.seconds:g} s; it stays queued "
                            f"and will be decided: GET /v1/posts/{pid}/decision"}
                for pid in exc.post_ids])  # fmt: skip
        except SyncFailed as exc:
            return one_error(422, "undecidable", "post",
                             f"{exc.post_id!r} could not be decided: {exc.error[:500]}",
                             "dead_lettered")  # fmt: skip
