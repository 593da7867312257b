"""Labelled posts through the pipeline's decide path, with languages and embeddings from disk.

A backtest decides exactly as the worker does: the same ``PolicyScorer`` (trained heads,
zero-shot for categories without one) and the same ``pipeline.score`` and ``pipeline.judge``.
Only the sources differ: language detections and text embeddings come from an
``EmbeddingCache`` (computed once, kept on disk), the zero-shot anchors go through the cache
too, so a warm run never loads the model; labelled data has no accounts or author history.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from service import pipeline
from service.backtest.data import LabeledPost
from service.classifier.cache import EmbeddingCache
from service.classifier.embedder import QUERY
from service.classifier.loader import load_heads, open_embedding_cache
from service.classifier.scorer import PolicyScorer
from service.config import Settings, get_settings
from service.language import LanguageResult
from service.pipeline import Assessment, Subject
from service.policy import LoadedPolicy, load_policy


@dataclass(frozen=True)
class ScoredPost:
    post: LabeledPost
    language: LanguageResult
    scores: dict[str, float] = field(hash=False)


def as_policy(policy: LoadedPolicy | Path | str) -> LoadedPolicy:
    return policy if isinstance(policy, LoadedPolicy) else load_policy(policy)


def open_cache(cache: EmbeddingCache | None, progress: bool | None) -> EmbeddingCache:
    """``cache``, or the configured one under ``<data dir>/cache/embeddings``, so that a
    backtest scores what the worker would (the model loads only for texts not seen yet)."""
    return cache or open_embedding_cache(Settings(), progress=progress)


@contextmanager
def _stage(message: str, enabled: bool | None) -> Iterator[None]:
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        yield
        return
    with Console(stderr=True).status(message):
        yield


class Embedded:
    """Languages and text embeddings of posts: policy-independent, computed once; scores
    per scorer version, so two policies with the same scorer share them (a diff)."""

    def __init__(
        self,
        posts: Sequence[LabeledPost],
        cache: EmbeddingCache,
        progress: bool | None,
        heads: Any = "auto",
    ) -> None:
        self.posts = list(posts)
        self.cache = cache
        # "auto": the heads the service would load for this encoder (None: zero-shot only)
        self.heads = load_heads(get_settings(), cache.version) if heads == "auto" else heads
        texts = [p.text for p in self.posts]
        pipeline.configure_language(get_settings())
        with _stage(f"detecting the language of {len(texts)} posts", progress):
            self.languages = cache.detect(texts, [p.language for p in self.posts],
                                          [p.market for p in self.posts])  # fmt: skip
        self.embeddings = cache.embed(texts, prefix=QUERY, progress=progress)
        self._scores: dict[str, list[dict[str, float]]] = {}
        self.scorer_versions: dict[str, str] = {}

    def scored(self, lp: LoadedPolicy) -> list[ScoredPost]:
        scorer = PolicyScorer(self.cache, lp.policy, self.heads)
        self.scorer_versions[lp.version] = scorer.version
        if scorer.version not in self._scores:
            self._scores[scorer.version] = pipeline.score(scorer, self.embeddings, self.languages)[0]
        scores = self._scores[scorer.version]
        return [
            ScoredPost(p, lang, sc)
            for p, lang, sc in zip(self.posts, self.languages, scores, strict=True)
        ]


def score_posts(
    posts: Sequence[LabeledPost],
    policy: LoadedPolicy | Path | str,
    encoder_cache: EmbeddingCache,
    *,
    progress: bool | None = None,
    heads: Any = "auto",
) -> list[ScoredPost]:
    """Each post's language and its category scores under ``policy`` (as the worker would).

    ``heads``: "auto" loads the service's trained heads; None scores zero-shot only.
    """
    return Embedded(posts, encoder_cache, progress, heads).scored(as_policy(policy))


def judge_posts(
    scored: Sequence[ScoredPost], policy: LoadedPolicy, market: str | None = None
) -> list[Assessment]:
    """``pipeline.judge`` on scored posts: each post's facts and outcome per market."""
    return pipeline.judge(
        [Subject(sp.post.text, sp.post.market) for sp in scored],
        [sp.language for sp in scored],
        [sp.scores for sp in scored],
        policy,
        market=market,
    )
