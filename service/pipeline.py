"""Pipeline: a batch of posts -> language, category scores, policy outcome -> decisions.

Used by the worker on queued batches and by the API's synchronous /v1/moderate. It holds
the live policy and the classifier; it does no I/O of its own. Language detection and the
model each run once per batch.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from service import language
from service.classifier import Classifier, Encoder, ZeroShotScorer
from service.config import Settings
from service.policy import Facts, LoadedPolicy, Outcome, evaluate, load_policy
from service.schemas import Decision, PostIn


@dataclass(frozen=True)
class Job:
    """A post on its way to a decision."""

    post_id: str
    post: PostIn
    enqueued_ms: int | None = None  # None for synchronous calls


def _account_age_days(post: PostIn, now: datetime) -> float | None:
    if post.author is None or post.author.created_at is None:
        return None
    created = post.author.created_at
    if created.tzinfo is None:
        created = created.replace(tzinfo=UTC)
    at = post.created_at or now
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return max((at - created).total_seconds() / 86400, 0.0)


def _reasons(outcome: Outcome) -> list[dict]:
    return [
        {
            "rule": m.rule_id,
            "action": m.action,
            "categories": dict(m.categories),
            "keywords": {k: list(v) for k, v in m.keywords},
        }
        for m in outcome.matches
    ]


class Moderator:
    def __init__(self, policy: LoadedPolicy, classifier: Classifier) -> None:
        self.policy = policy
        self.classifier = classifier
        # one forward pass at a time: torch already uses every core for one batch
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, policy_path: Path | None = None) -> Moderator:
        policy = load_policy(policy_path or settings.policy_path)
        encoder = Encoder(
            settings.resolved_model_dir,
            max_length=settings.max_length_tokens,
            threads=settings.torch_threads,
        )
        return cls(policy, ZeroShotScorer(encoder, policy.policy))

    def warm_up(self) -> None:
        """Load the lazily built detectors and run the model once before real traffic."""
        language.warm_up()
        self.decide([Job("warm-up", PostIn(text="hello 你好, warming up"))])

    def decide(self, jobs: Sequence[Job]) -> list[Decision]:
        if not jobs:
            return []
        started = time.perf_counter()
        started_ms = time.time() * 1000
        texts = [j.post.text for j in jobs]
        langs = language.detect_batch(texts, [j.post.lang_hint for j in jobs])
        with self._lock:
            scores = self.classifier.score(texts)
        now = datetime.now(UTC)
        per_post_ms = (time.perf_counter() - started) * 1000
        lp = self.policy
        decisions = []
        for job, lang, sc in zip(jobs, langs, scores, strict=True):
            market = job.post.market or lp.policy.default_market
            facts = Facts(
                text=job.post.text,
                language=lang.code,
                script=lang.script,
                mixed=bool(lang.mixed),
                scores=sc,
                market=market,
                account_age_days=_account_age_days(job.post, now),
            )
            outcomes = evaluate(lp, facts)
            own = outcomes[market]
            decisions.append(
                Decision(
                    post_id=job.post_id,
                    action=own.action,
                    market=market,
                    reasons=_reasons(own),
                    labels=list(own.labels),
                    review_queue=own.queue,
                    outcomes={
                        m: {
                            "action": o.action,
                            "rules": [x.rule_id for x in o.matches],
                            "labels": list(o.labels),
                            "review_queue": o.queue,
                        }
                        for m, o in outcomes.items()
                    },
                    language=lang.to_dict(),
                    scores=sc,
                    policy={"name": lp.name, "version": lp.version},
                    model={"name": self.classifier.name, "version": self.classifier.version},
                    timings={
                        "queue_wait_ms": round(max(started_ms - job.enqueued_ms, 0.0), 1)
                        if job.enqueued_ms
                        else 0.0,
                        "processing_ms": round(per_post_ms, 1),
                    },
                    decided_at=now,
                )
            )
        return decisions
