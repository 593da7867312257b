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
from service.queue import FULL
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
    while True:
        todo = [pid for pid in ids if pid not in found]
        async with st.client.pipeline(transaction=False) as pipe:
            for pid in todo:
                pipe.get(st.keys.decision(pid))
                pipe.get(st.keys.failed(pid))
            values = await pipe.execute()
        for i, pid in enumerate(todo):
            decision, failed = values[2 * i], values[2 * i + 1]
            if decision is not None:  # read as GET .../decision reads it (review merged)
                found[pid] = await ReviewStore(st.client, st.keys.prefix).with_review(
                    json.loads(decision)
                )
            elif failed is not None:
                raise SyncFailed(pid, failed)
        todo = [pid for pid in ids if pid not in found]
        if not todo:
            return [found[pid] for pid in ids]
        left = deadline - loop.time()
        if left <= 0:
            raise SyncDeadline(todo, st.settings.sync_deadline_s)
        # woken by the worker's commit; at most a second between checks of the store
        await st.waiter.blpop([st.keys.reply(pid) for pid in todo], timeout=min(left, 1.0))


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
