"""`POST /v1/moderations`: the OpenAI moderation shape, for tools that already speak it.

`input` is a string or a list of strings (decided together, one batch through the same
pipeline as every other decision). Each result has OpenAI's `flagged`, `categories` and
`category_scores`, mapped from Floodgate's categories as below, and Floodgate's own answer
under `floodgate` (action, market, language, matched rules, labels, review queue, raw
scores, policy and model versions).

| OpenAI category | from Floodgate |
| --- | --- |
| hate, harassment, sexual, violence | the category of the same name |
| self-harm, self-harm/intent, self-harm/instructions | self_harm (intent and instructions are not told apart) |
| illicit | the highest of drugs, gambling, scam_spam |
| hate/threatening, harassment/threatening, illicit/violent | the lower of the two categories (both must hold) |
| sexual/minors, violence/graphic | not detected: always 0 and false |

A category is flagged when the live policy acted on it (it is in a matched rule's reasons);
`flagged` is true when any category is. The score is the calibrated probability.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from service.api.errors import error_response, one_error, validation_errors
from service.api.openapi import error_response as documented
from service.api.security import caller
from service.api.state import AppState, get_state
from service.api.sync import decide_or_answer
from service.schemas import MAX_TEXT_CHARS, Decision, PostIn

router = APIRouter(tags=["posts"])

MAX_INPUTS = 64
Text = Annotated[str, StringConstraints(min_length=1, max_length=MAX_TEXT_CHARS)]
ILLICIT = ("drugs", "gambling", "scam_spam")
SAME = {"hate": "hate", "harassment": "harassment", "sexual": "sexual", "violence": "violence",
        "self-harm": "self_harm", "self-harm/intent": "self_harm",
        "self-harm/instructions": "self_harm"}  # fmt: skip
BOTH = {"hate/threatening": ("hate", "violence"),
        "harassment/threatening": ("harassment", "violence"),
        "illicit/violent": ("illicit", "violence")}  # fmt: skip
UNDETECTED = ("sexual/minors", "violence/graphic")
OPENAI_CATEGORIES = (*SAME, "illicit", *BOTH, *UNDETECTED)


class ModerationsIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"input": "I will find you"},
                                        {"input": ["hello from Texas", "加我微信日结300"]}]},
    )  # fmt: skip
    input: Text | list[Text] = Field(description=f"one text or up to {MAX_INPUTS}")
    model: str | None = Field(default=None, max_length=128, description="accepted, ignored")

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else self.input


class ModerationResult(BaseModel):
    flagged: bool
    categories: dict[str, bool]
    category_scores: dict[str, float]
    category_applied_input_types: dict[str, list[str]]
    floodgate: dict


class ModerationsOut(BaseModel):
    id: str
    model: str
    results: list[ModerationResult]


def to_openai(decision: Decision) -> ModerationResult:
    """One Floodgate decision in OpenAI's moderation result shape (pure)."""
    s = decision.scores
    acted = {c for r in decision.reasons for c in r.categories}
    scores = {k: s.get(c, 0.0) for k, c in SAME.items()}
    flags = {k: c in acted for k, c in SAME.items()}
    scores["illicit"] = max(s.get(c, 0.0) for c in ILLICIT)
    flags["illicit"] = any(c in acted for c in ILLICIT)
    for k, (a, b) in BOTH.items():
        scores[k], flags[k] = min(scores[a], scores[b]), flags[a] and flags[b]
    for k in UNDETECTED:
        scores[k], flags[k] = 0.0, False
    return ModerationResult(
        flagged=any(flags.values()),
        categories={k: flags[k] for k in OPENAI_CATEGORIES},
        category_scores={k: round(float(scores[k]), 6) for k in OPENAI_CATEGORIES},
        category_applied_input_types={k: ["text"] for k in OPENAI_CATEGORIES},
        floodgate={
            "post_id": decision.post_id, "action": decision.action, "market": decision.market,
            "language": decision.language.model_dump(), "labels": decision.labels,
            "rules": [r.rule for r in decision.reasons], "review_queue": decision.review_queue,
            "scores": decision.scores, "policy": decision.policy.model_dump(),
            "model": decision.model.model_dump(),
        },
    )  # fmt: skip


@router.post("/v1/moderations", response_model=ModerationsOut,
             dependencies=[Depends(caller("submit"))], responses={504: documented(
                 "not decided within FLOODGATE_SYNC_DEADLINE_S; the posts stay queued")})  # fmt: skip
async def moderations(body: ModerationsIn, st: AppState = Depends(get_state)) -> Any:
    """Classify one text or a list (OpenAI-compatible), decided by the workers now (priority
    stream); each is stored under its result's `floodgate.post_id`."""
    texts = body.texts()
    if len(texts) > MAX_INPUTS:
        return one_error(422, "validation_error", "input",
                         f"at most {MAX_INPUTS} inputs per request", "too_long")  # fmt: skip
    request = uuid.uuid4().hex
    posts = []
    for i, text in enumerate(texts):
        try:
            posts.append((f"modr-{request[:12]}-{i}", PostIn(text=text)))
        except ValidationError as exc:
            field = "input" if isinstance(body.input, str) else f"input.{i}"
            return error_response(422, "validation_error", validation_errors(exc, root=field))
    decisions = await decide_or_answer(st, posts)
    if not isinstance(decisions, list):
        return decisions
    model = f"floodgate-{decisions[0]['model']['version']}" if decisions else "floodgate"
    return ModerationsOut(id=f"modr-{request}", model=model,
                          results=[to_openai(Decision.model_validate(d)) for d in decisions])  # fmt: skip
