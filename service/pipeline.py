"""Pipeline: a batch of posts -> language, category scores, policy outcome -> decisions.

Used by the worker on queued batches and by the API's synchronous /v1/moderate. It holds
the live policy and the classifier; it does no I/O of its own. Language detection and the
model each run once per batch.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from service import language
from service.classifier import Encoder
from service.classifier.heads import HeadsMismatch, TrainedHeads
from service.classifier.scorer import PolicyScorer
from service.classifier.zeroshot import QUERY
from service.config import Settings
from service.policy import Facts, LoadedPolicy, Outcome, evaluate, load_policy
from service.schemas import Decision, PostIn

log = logging.getLogger("floodgate.pipeline")


@dataclass(frozen=True)
class Job:
    """A post on its way to a decision."""

    post_id: str
    post: PostIn
    enqueued_ms: int | None = None  # None for synchronous calls
    # window (minutes) -> posts by this author in it, counted by the worker in Redis
    author_posts: Mapping[int, int] | None = None


def _account_age_days(post: PostIn, now: datetime) -> float | None:
    if post.author is None or post.author.created_at is None:
        return None
    # PostIn keeps every time in UTC (schemas.Timestamp)
    at = post.created_at or now
    return max((at - post.author.created_at).total_seconds() / 86400, 0.0)


def _scorer_key(lp: LoadedPolicy) -> str:
    p = lp.policy
    return json.dumps(
        [{k: c.model_dump() for k, c in p.categories.items()}, p.benign_examples], sort_keys=True
    )


def _reasons(outcome: Outcome) -> list[dict]:
    return [
        {
            "rule": m.rule_id,
            "action": m.action,
            "categories": dict(m.categories),
            "keywords": {k: list(v) for k, v in m.keywords},
            "signals": dict(m.signals),
        }
        for m in outcome.matches
    ]


class Moderator:
    """Holds the live policy (and an optional shadow candidate) and the scorers for them.

    Policies can be swapped between batches (`use_policy`, `use_shadow`); a scorer is
    rebuilt only when the categories or benign examples it depends on changed.
    """

    def __init__(self, policy: LoadedPolicy, classifier: PolicyScorer) -> None:
        self.encoder = classifier.encoder
        self.heads = getattr(classifier, "heads", None)
        self._scorers: dict[str, PolicyScorer] = {_scorer_key(policy): classifier}
        self.policy = policy
        self.classifier = classifier
        self.shadow: tuple[LoadedPolicy, PolicyScorer] | None = None
        # one forward pass at a time: torch already uses every core for one batch
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, policy: LoadedPolicy | None = None) -> Moderator:
        policy = policy or load_policy(settings.policy_path)
        encoder = Encoder(
            settings.resolved_model_dir,
            max_length=settings.max_length_tokens,
            threads=settings.torch_threads,
            precision=settings.precision,
            tuned_dir=settings.tuned_dir,
            cache_size=settings.embedding_cache_size,
        )
        heads = None
        if settings.heads_dir is not None and TrainedHeads.available(settings.heads_dir):
            try:
                heads = TrainedHeads(settings.heads_dir, encoder_version=encoder.version)
            except HeadsMismatch as exc:  # serve zero-shot rather than wrong scores
                log.warning("%s; scoring zero-shot", exc)
        return cls(policy, PolicyScorer(encoder, policy.policy, heads))

    def _scorer_for(self, lp: LoadedPolicy) -> PolicyScorer:
        key = _scorer_key(lp)
        if key not in self._scorers:
            if len(self._scorers) > 8:  # old versions' scorers are not needed any more
                self._scorers.clear()
            self._scorers[key] = PolicyScorer(self.encoder, lp.policy, self.heads)
        return self._scorers[key]

    def use_policy(self, lp: LoadedPolicy) -> None:
        scorer = self._scorer_for(lp)  # built before the swap: the swap itself is instant
        self.policy, self.classifier = lp, scorer

    def use_shadow(self, lp: LoadedPolicy | None) -> None:
        self.shadow = (lp, self._scorer_for(lp)) if lp is not None else None

    def warm_up(self) -> None:
        """Load the lazily built detectors and run the model once before real traffic."""
        language.warm_up()
        self.decide([Job("warm-up", PostIn(text="hello 你好, warming up"))])

    def decide(self, jobs: Sequence[Job]) -> list[Decision]:
        if not jobs:
            return []
        started = time.perf_counter()
        started_ms = time.time() * 1000
        # read once: a swap between batches must not mix two policies within one batch
        lp, scorer, shadow = self.policy, self.classifier, self.shadow
        texts = [j.post.text for j in jobs]
        langs = language.detect_batch(texts, [j.post.lang_hint for j in jobs])
        with self._lock:
            embeddings = self.encoder.embed(texts, prefix=QUERY, use_cache=True)
        codes = [lang.code for lang in langs]
        scores = scorer.score_embeddings(embeddings, codes)
        shadow_scores = shadow[1].score_embeddings(embeddings, codes) if shadow else None
        now = datetime.now(UTC)
        per_post_ms = (time.perf_counter() - started) * 1000
        decisions = []
        for i, (job, lang) in enumerate(zip(jobs, langs, strict=True)):
            market = job.post.market or lp.policy.default_market
            facts = Facts(
                text=job.post.text,
                language=lang.code,
                script=lang.script,
                mixed=bool(lang.mixed),
                scores=scores[i],
                market=market,
                account_age_days=_account_age_days(job.post, now),
                author_posts=job.author_posts,
            )
            outcomes = evaluate(lp, facts)
            own = outcomes[market]
            shadow_out = None
            if shadow is not None and shadow_scores is not None:
                candidate = evaluate(shadow[0], replace(facts, scores=shadow_scores[i]))
                shadow_out = {
                    "policy": {"name": shadow[0].name, "version": shadow[0].version},
                    "action": candidate[market].action,
                    "rules": [m.rule_id for m in candidate[market].matches],
                    "outcomes": {m: o.action for m, o in candidate.items()},
                }
            decisions.append(
                Decision(
                    post_id=job.post_id,
                    action=own.action,
                    market=market,
                    reasons=_reasons(own),
                    labels=list(own.labels),
                    review_queue=own.queue,
                    outcomes={m: _outcome(o) for m, o in outcomes.items()},
                    language=lang.to_dict(),
                    scores=scores[i],
                    policy={"name": lp.name, "version": lp.version},
                    model={"name": scorer.name, "version": scorer.version},
                    timings={
                        "queue_wait_ms": round(max(started_ms - job.enqueued_ms, 0.0), 1)
                        if job.enqueued_ms
                        else 0.0,
                        "processing_ms": round(per_post_ms, 1),
                    },
                    decided_at=now,
                    shadow=shadow_out,
                )
            )
        return decisions


def _outcome(o: Outcome) -> dict:
    return {
        "action": o.action,
        "rules": [x.rule_id for x in o.matches],
        "labels": list(o.labels),
        "review_queue": o.queue,
    }
