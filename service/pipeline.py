"""Pipeline: a batch of posts -> language, category scores, policy outcome -> decisions.

Used by the worker on queued batches and by the API's synchronous /v1/moderate. It holds
the live policy and the classifier; it does no I/O of its own. Language detection and the
model each run once per batch.

The two steps after the model, ``score`` (embeddings + languages -> category scores) and
``judge`` (scores + what is known of each post -> the policy's outcome per market), are the
one way posts are decided: ``Moderator.decide`` calls them on live batches, the backtest
and policy diff on labelled posts whose languages and embeddings come from a disk cache.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import numpy as np

from service import language
from service.classifier.embedder import QUERY
from service.classifier.loader import load_encoder, load_heads
from service.classifier.memory import Recall
from service.classifier.scorer import PolicyScorer
from service.config import Settings
from service.language import LanguageResult
from service.policy import Facts, LoadedPolicy, Outcome, Policy, evaluate, load_policy
from service.schemas import Decision, PostIn


def configure_language(settings: Settings) -> None:
    """The language priors from Settings (where set), for the worker and the backtest alike."""
    if settings.language_market_priors is not None or settings.language_default_prior is not None:
        language.configure_priors(settings.language_market_priors, settings.language_default_prior)


@dataclass(frozen=True)
class Job:
    """A post on its way to a decision."""

    post_id: str
    post: PostIn
    enqueued_ms: int | None = None  # None for synchronous calls
    # window (minutes) -> posts by this author in it, counted by the worker in Redis
    author_posts: Mapping[int, int] | None = None


@dataclass(frozen=True)
class Forward:
    """A batch after language detection, the model and its category scores
    (Moderator.forward), with the policy it is to be judged by, taken with the scores."""

    jobs: list[Job]
    languages: list[LanguageResult]
    scores: list[dict[str, float]]
    recalls: list[dict[str, Recall]]  # the policy's memory examples that raised a score
    shadow_scores: list[dict[str, float]] | None
    policy: LoadedPolicy  # the live policy under the drift profile in force
    shadow: LoadedPolicy | None
    model: dict[str, str]  # the scorer's name and version
    started_ms: float  # epoch ms when the batch entered the decide path
    seconds: float  # spent in forward


@dataclass(frozen=True)
class Subject:
    """What the policy may know of a post beside its language and scores."""

    text: str
    market: str | None = None  # None: the policy's default market
    account_age_days: float | None = None
    author_posts: Mapping[int, int] | None = None


@dataclass(frozen=True)
class Assessment:
    """One post through the policy: the facts it was judged on, its outcome per market."""

    facts: Facts
    outcomes: dict[str, Outcome]

    @property
    def own(self) -> Outcome:
        """The outcome in the post's own market."""
        return self.outcomes[self.facts.market]


def score(
    scorer: PolicyScorer,
    embeddings: np.ndarray,
    languages: Sequence[LanguageResult],
    judged_by: Policy | None = None,
) -> tuple[list[dict[str, float]], list[dict[str, Recall]]]:
    """Category scores of each post from its embedding and detected language, and the
    policy's memory examples that raised them (to the thresholds of `judged_by`, the policy
    under its drift profile; default the scorer's own policy)."""
    return scorer.assess(embeddings, [lang.code for lang in languages], judged_by)


def judge(
    subjects: Sequence[Subject],
    languages: Sequence[LanguageResult],
    scores: Sequence[Mapping[str, float]],
    lp: LoadedPolicy,
    *,
    market: str | None = None,
) -> list[Assessment]:
    """Evaluate ``lp`` on each post; ``market`` judges every post as if posted there
    (default: the post's own market, else the policy's default market)."""
    out = []
    for subject, lang, post_scores in zip(subjects, languages, scores, strict=True):
        facts = Facts(
            text=subject.text,
            language=lang.code,
            script=lang.script,
            mixed=bool(lang.mixed),
            scores=post_scores,
            market=market or subject.market or lp.policy.default_market,
            account_age_days=subject.account_age_days,
            author_posts=subject.author_posts,
        )
        out.append(Assessment(facts, evaluate(lp, facts)))
    return out


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
        # the serving Encoder: besides the Embedder's embed it keeps an in-memory LRU of texts
        # across batches (use_cache), for spam floods that repeat themselves
        self.encoder = classifier.encoder
        self.heads = getattr(classifier, "heads", None)
        self._scorers: dict[str, PolicyScorer] = {_scorer_key(policy): classifier}
        self.policy = policy
        self.classifier = classifier
        self.shadow: tuple[LoadedPolicy, PolicyScorer] | None = None
        # languages whose language-mix alert is raised (service/langmix): each policy decides
        # under the profile its `on_drift` names for them
        self.drift: frozenset[str] = frozenset()
        # one forward pass at a time: torch already uses every core for one batch
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, policy: LoadedPolicy | None = None) -> Moderator:
        configure_language(settings)
        policy = policy or load_policy(settings.policy_path)
        encoder = load_encoder(settings)
        heads = load_heads(settings, encoder.version)  # None: zero-shot, not wrong scores
        return cls(policy, PolicyScorer(encoder, policy.policy, heads))

    def _scorer_for(self, lp: LoadedPolicy) -> PolicyScorer:
        key = _scorer_key(lp)
        if key not in self._scorers:
            if len(self._scorers) > 8:  # old versions' scorers are not needed any more
                self._scorers.clear()
            with self._lock:  # zero-shot anchors use the encoder, maybe beside a forward pass
                self._scorers[key] = PolicyScorer(self.encoder, lp.policy, self.heads)
        return self._scorers[key]

    def use_policy(self, lp: LoadedPolicy) -> None:
        scorer = self._scorer_for(lp)  # built before the swap: the swap itself is instant
        self.policy, self.classifier = lp, scorer

    def use_shadow(self, lp: LoadedPolicy | None) -> None:
        self.shadow = (lp, self._scorer_for(lp)) if lp is not None else None

    def use_drift(self, raised: Collection[str]) -> None:
        """The languages whose drift alert is raised; set between batches, like policies."""
        self.drift = frozenset(raised)

    @property
    def judging(self) -> LoadedPolicy:
        """The live policy as decisions use it now: under its drift profile, if any."""
        return self.policy.under(self.drift)

    def release_memory(self) -> None:
        """Give the system back the heap the forward passes grew: glibc keeps freed buffers
        (~180 MB after batches of 64) for reuse. For idle moments (it takes 10-30 ms); a no-op
        off glibc. (Keeping big buffers off the heap instead cost 15-23 % more CPU.)"""
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)

    def warm_up(self) -> None:
        """Load the lazily built detectors and run the model once before real traffic."""
        language.warm_up()
        self.decide([Job("warm-up", PostIn(text="hello 你好, warming up"))])

    def decide(self, jobs: Sequence[Job]) -> list[Decision]:
        """Decisions for a batch: ``conclude(forward(jobs))``. The worker runs the two halves
        in different threads, so one batch's policy and commit overlap the next one's
        forward pass; nothing else differs."""
        return self.conclude(self.forward(jobs)) if jobs else []

    def forward(self, jobs: Sequence[Job]) -> Forward:
        """Everything torch does for a batch: language, embeddings, category scores; and
        the policies it is to be judged by, read once with them (a swap between batches
        must not mix two policies within one batch)."""
        started, started_ms = time.perf_counter(), time.time() * 1000
        drift = self.drift
        lp, scorer, shadow = self.policy.under(drift), self.classifier, self.shadow
        texts = [j.post.text for j in jobs]
        # the post's own market weighs languages (language.MARKET_PRIORS), as in the backtest
        langs = language.detect_batch(texts, [j.post.lang_hint for j in jobs],
                                      markets=[j.post.market for j in jobs])  # fmt: skip
        with self._lock:
            embeddings = self.encoder.embed(texts, prefix=QUERY, use_cache=True)
        scores, recalls = score(scorer, embeddings, langs, lp.policy)
        shadow_lp = shadow[0].under(drift) if shadow else None
        shadow_scores = score(shadow[1], embeddings, langs, shadow_lp.policy)[0] if shadow else None
        return Forward(list(jobs), langs, scores, recalls, shadow_scores, lp, shadow_lp,
                       {"name": scorer.name, "version": scorer.version},
                       started_ms, time.perf_counter() - started)  # fmt: skip

    def conclude(self, fw: Forward) -> list[Decision]:
        """The policy's outcome and the decisions of a batch that went forward: pure
        Python, no torch (the worker runs it beside the next batch's forward pass)."""
        if not fw.jobs:
            return []
        jobs, langs, scores, shadow_scores, lp = fw.jobs, fw.languages, fw.scores, fw.shadow_scores, fw.policy
        now = datetime.now(UTC)
        per_post_ms = fw.seconds * 1000
        subjects = [
            Subject(j.post.text, j.post.market, _account_age_days(j.post, now), j.author_posts)
            for j in jobs
        ]
        decisions = []
        for i, (job, lang, judged) in enumerate(
            zip(jobs, langs, judge(subjects, langs, scores, lp), strict=True)
        ):
            facts, outcomes, own = judged.facts, judged.outcomes, judged.own
            market = facts.market
            shadow_out = None
            if fw.shadow is not None and shadow_scores is not None:
                candidate_lp = fw.shadow
                candidate = evaluate(candidate_lp, replace(facts, scores=shadow_scores[i]))
                shadow_out = {
                    "policy": _policy_ref(candidate_lp),
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
                    memory={c: r.to_dict() for c, r in fw.recalls[i].items()} or None,
                    policy=_policy_ref(lp),
                    model=dict(fw.model),
                    timings={
                        "queue_wait_ms": round(max(fw.started_ms - job.enqueued_ms, 0.0), 1)
                        if job.enqueued_ms
                        else 0.0,
                        "processing_ms": round(per_post_ms, 1),
                    },
                    decided_at=now,
                    shadow=shadow_out,
                )
            )
        return decisions


def _policy_ref(lp: LoadedPolicy) -> dict:
    """What a decision records of its policy: name, version, and the profile it was under."""
    return {"name": lp.name, "version": lp.version, "profile": lp.profile}


def _outcome(o: Outcome) -> dict:
    return {
        "action": o.action,
        "rules": [x.rule_id for x in o.matches],
        "labels": list(o.labels),
        "review_queue": o.queue,
    }
