"""The audit stream: every stored decision, in order, page by page."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query

from service.api.errors import one_error
from service.api.security import caller
from service.api.state import AppState, get_state

router = APIRouter(tags=["posts"], dependencies=[Depends(caller("read"))])


@router.get("/v1/decisions")
async def decision_feed(
    after: str = Query("0", pattern=r"^\d{1,20}(-\d{1,20})?$",
                       description="cursor from the last page"),  # fmt: skip
    limit: int = Query(500, ge=1, le=5000),
    st: AppState = Depends(get_state),
) -> Any:
    """Every decision in the order it was stored (the audit stream), page by page.

    Start with `after=0` and pass the returned `next` to get the following page; an
    empty page means caught up (poll again later with the same cursor).
    """
    if any(int(part) >= 2**64 for part in after.split("-")):  # a stream id is 2 x u64
        return one_error(422, "validation_error", "after", "cursor out of range", "value_error")
    items, cursor = await st.reader.feed(after, limit)
    return {"decisions": items, "next": cursor}
