"""Schemas: the JSON shapes at the edges (API requests and responses, stored decisions)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

MAX_TEXT_CHARS = 10_000
MAX_BATCH = 1_000
POST_ID = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"
_MARKET = r"^[a-z][a-z0-9_-]{0,31}$"
# the times a post or an account can really carry; outside them a timestamp is a bug or a
# probe, and year 1 once crashed a worker converting a naive time through the local zone
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2100, 1, 1, tzinfo=UTC)


def _utc_in_range(value: datetime) -> datetime:
    """A naive time is read as UTC; every time is kept in UTC within [EARLIEST, LATEST)."""
    try:
        utc = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError:  # year 1 with a positive offset is year 0 in UTC
        utc = None
    if utc is None or not EARLIEST <= utc < LATEST:
        raise ValueError(
            f"time {value.isoformat()} is outside {EARLIEST.year}-01-01 .. {LATEST.year}-01-01"
        )
    return utc


Timestamp = Annotated[datetime, AfterValidator(_utc_in_range)]


class Author(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, max_length=128)
    created_at: Timestamp | None = None
    # the author's reach (followers), when known: orders the review queues
    followers: int | None = Field(default=None, ge=0)


class PostIn(BaseModel):
    """A post as a client submits it."""

    model_config = ConfigDict(
        extra="forbid",
        str_strip_whitespace=False,
        json_schema_extra={"examples": [
            {"post_id": "p1", "text": "hello from Texas 大家好", "market": "intl"},
            {"text": "加我薇信，日结300，刷单返利", "market": "cn", "lang_hint": "zh-Hans",
             "author": {"id": "u_8812", "created_at": "2025-01-13T09:00:00Z"},
             "created_at": "2025-01-13T09:05:00Z"},
        ]},
    )  # fmt: skip

    text: str = Field(description="1-10,000 characters after trimming whitespace")
    post_id: str | None = Field(
        default=None,
        pattern=POST_ID,
        description="client id; re-submitting the same id never makes a second decision",
    )
    author: Author | None = None
    market: str | None = Field(default=None, pattern=_MARKET, description='e.g. "cn", "intl"',
                               examples=["cn", "intl"])  # fmt: skip
    created_at: Timestamp | None = Field(
        default=None, description="ISO 8601; a time without a zone is read as UTC"
    )
    lang_hint: str | None = Field(
        default=None, pattern=r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})*$",
        description="the client's guess (BCP 47), weighs in as a prior", examples=["en", "zh-Hant"],
    )  # fmt: skip

    @field_validator("text")
    @classmethod
    def _text(cls, value: str) -> str:
        stripped = value.strip()
        if not stripped:
            raise ValueError("text is empty")
        if len(stripped) > MAX_TEXT_CHARS:
            raise ValueError(f"text is longer than {MAX_TEXT_CHARS} characters ({len(stripped)})")
        if re.search(r"[\ud800-\udfff]", stripped):
            raise ValueError("text contains unpaired surrogates (not valid Unicode)")
        return stripped


class Accepted(BaseModel):
    post_id: str
    status: Literal["queued", "duplicate"] = "queued"


class BatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"posts": [{"post_id": "b1", "text": "hello from Texas"},
                   {"post_id": "b2", "text": "今天做了红烧肉", "market": "cn"}]}]})  # fmt: skip

    # each item is validated on its own (a bad post is rejected alone, not the batch), so the
    # field takes anything; the documented item schema is a post
    posts: list[Any] = Field(
        min_length=1, max_length=MAX_BATCH,
        json_schema_extra={"items": {"$ref": "#/components/schemas/PostIn"}},
        examples=[[{"text": "hello from Texas"}, {"text": "今天做了红烧肉", "market": "cn"}]],
    )  # fmt: skip


class BatchItemResult(BaseModel):
    index: int
    post_id: str | None = None
    status: Literal["queued", "duplicate", "rejected"]
    errors: list[dict[str, Any]] | None = None


class BatchResult(BaseModel):
    accepted: int
    rejected: int
    results: list[BatchItemResult]


class Segment(BaseModel):
    code: str
    script: str
    text: str
    start: int
    end: int


class LanguageOut(BaseModel):
    code: str
    script: str
    confidence: float
    mixed: list[Segment] = []


class Reason(BaseModel):
    rule: str
    action: str
    categories: dict[str, float] = {}
    keywords: dict[str, list[str]] = {}
    signals: dict[str, float] = {}


class MarketOutcome(BaseModel):
    action: str
    rules: list[str]
    labels: list[str] = []
    review_queue: str | None = None


class VersionRef(BaseModel):
    name: str
    version: str


class PolicyRef(VersionRef):
    """The policy a decision was made with, and the profile it was under (None: the policy
    as written; a name: a language-mix drift alert had switched it to that profile)."""

    profile: str | None = None


class Timings(BaseModel):
    queue_wait_ms: float
    processing_ms: float


class ShadowOutcome(BaseModel):
    """What a candidate policy running in shadow mode would have decided (not applied)."""

    policy: PolicyRef
    action: Literal["allow", "label", "limit_reach", "review", "remove"]
    rules: list[str]
    outcomes: dict[str, str]


VerdictAction = Literal["allow", "label", "limit_reach", "remove"]


class Fallback(BaseModel):
    """The queue was over its SLA when the post came: it took the overflow action instead."""

    applied: bool = True
    action: str
    instead_of: str = "review"
    sla_s: float
    capacity_per_hour: float
    admission_limit: int


class Verdict(BaseModel):
    action: VerdictAction
    reason: str
    reviewer: str
    at: int  # ms since the epoch (Redis time)
    queue: str
    outcome: Literal["upheld", "overturned"] | None = None  # for an appeal's verdict


class ReviewInfo(BaseModel):
    """Where a review decision went; a read adds the human side (state, verdicts, history)."""

    queue: str | None = None  # none for a decision that was only appealed
    reason: str | None = None
    severity: str | None = None
    priority: float | None = None
    fallback: Fallback | None = None
    state: str | None = None
    verdict: Verdict | None = None
    appeal: dict[str, Any] | None = None
    history: list[dict[str, Any]] | None = None


class MemoryRecall(BaseModel):
    """The policy's `memory:` example of a category that this post resembles."""

    similarity: float
    example: str


class Decision(BaseModel):
    post_id: str
    status: Literal["decided"] = "decided"
    action: Literal["allow", "label", "limit_reach", "review", "remove"]
    market: str
    reasons: list[Reason]
    labels: list[str] = []
    review_queue: str | None = None
    outcomes: dict[str, MarketOutcome]
    language: LanguageOut
    scores: dict[str, float]
    # categories the policy's example memory raised to their threshold: the nearest example
    memory: dict[str, MemoryRecall] | None = None
    policy: PolicyRef
    model: VersionRef
    timings: Timings
    decided_at: datetime
    shadow: ShadowOutcome | None = None
    # human review: where the post was queued, or the fallback it took (policy `review:`)
    review: ReviewInfo | None = None
    # on a read: the human verdict's action over the automated one, once there is a verdict
    final_action: str | None = None


class Pending(BaseModel):
    post_id: str
    status: Literal["pending"] = "pending"


class Failed(BaseModel):
    post_id: str
    status: Literal["failed"] = "failed"
    error: str


class PolicySourceIn(BaseModel):
    """A policy a client names (a file in the policy directory) or uploads; never a path."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"name": "candidate.yaml"}, {"text": "name: candidate\n..."}]},
    )
    name: str | None = Field(
        default=None,
        min_length=1,
        max_length=255,
        description="a policy file inside the server's policy directory, e.g. candidate.yaml",
    )
    text: str | None = Field(
        default=None, min_length=1, description="the policy YAML itself; includes are read "
        "from the policy directory",
    )  # fmt: skip

    @model_validator(mode="after")
    def _one(self) -> PolicySourceIn:
        if (self.name is None) == (self.text is None):
            raise ValueError("give exactly one of name and text")
        return self


class ClaimIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"queue": "en/general", "count": 5}, {"count": 1}]})  # fmt: skip
    queue: str | None = Field(default=None, max_length=80,
                              description="e.g. en/general; default: every queue you may see")  # fmt: skip
    count: int = Field(default=1, ge=1, le=50)


class ResolveIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"action": "remove", "reason": "sells followers"},
        {"action": "allow", "reason": "friendly banter between friends"}]})  # fmt: skip
    action: VerdictAction
    reason: str = Field(min_length=1, max_length=2000)


class AppealIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"reason": "this is my own shop's real discount, not a scam"}]})  # fmt: skip
    reason: str = Field(min_length=1, max_length=2000, description="the author's words")
