"""Synchronous decisions inside the API process: /v1/moderate and /v1/moderations.

The posts go through the same pipeline as the workers' (pipeline.Moderator, the live policy
version followed the same way), in one batch per request; nothing is queued or stored. The
model loads on the first call, so an API that is never asked keeps torch out of memory.
"""

from __future__ import annotations

import asyncio

from service.api.state import AppState
from service.policy.parse import load_bundle
from service.schemas import Decision, PostIn


async def decide_now(st: AppState, posts: list[tuple[str, PostIn]]) -> list[Decision]:
    """Decisions for (post_id, post) pairs, in order, with the live policy."""
    from service.pipeline import Job, Moderator  # torch loads on the first sync call only

    async with st.moderator_lock:
        if st.moderator is None:
            st.moderator = await asyncio.to_thread(Moderator.from_settings, st.settings)
        # decide with the live version, like the workers
        live = (await asyncio.to_thread(st.registry.current))["live"]
        if live and live != st.moderator.policy.version:
            bundle = await asyncio.to_thread(st.registry.bundle, live)
            if bundle:
                lp = await asyncio.to_thread(load_bundle, bundle)
                await asyncio.to_thread(st.moderator.use_policy, lp)
    jobs = [Job(post_id, post) for post_id, post in posts]
    return await asyncio.to_thread(st.moderator.decide, jobs)
