"""Category scores for one policy: trained heads where they exist, zero-shot for the rest.

A policy may define categories the heads were never trained on (a new scam pattern during
an incident): those are scored zero-shot from the policy's description and examples,
beside the trained ones, from the same embeddings.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from service.classifier.embedder import QUERY, Embedder
from service.classifier.heads import TrainedHeads
from service.classifier.zeroshot import ZeroShotScorer
from service.policy import Policy


class PolicyScorer:
    def __init__(
        self, encoder: Embedder, policy: Policy, heads: TrainedHeads | None = None
    ) -> None:
        self.encoder = encoder
        self.heads = heads
        self.categories = list(policy.categories)
        self.trained = [c for c in self.categories if heads is not None and c in heads.outputs]
        rest = [c for c in self.categories if c not in self.trained]
        self.zeroshot = ZeroShotScorer(encoder, policy, categories=rest) if rest else None
        parts = [encoder.version]
        names = ["multilingual-e5-small"]
        if self.trained:
            parts.append(heads.version)
            names.append("heads")
        if self.zeroshot is not None:
            parts.append(self.zeroshot.digest)
            names.append("zeroshot")
        self.name = "+".join(names)
        self.version = ".".join(parts)

    def score_embeddings(
        self, embeddings: np.ndarray, languages: Sequence[str] | None = None
    ) -> list[dict[str, float]]:
        n = len(embeddings)
        out: list[dict[str, float]] = [{} for _ in range(n)]
        if self.trained:
            probs = self.heads.probabilities(embeddings, list(languages or ["und"] * n))
            cols = [self.heads.outputs.index(c) for c in self.trained]
            for i in range(n):
                out[i].update(
                    {
                        c: round(float(probs[i, j]), 4)
                        for c, j in zip(self.trained, cols, strict=True)
                    }
                )
        if self.zeroshot is not None:
            for i, scores in enumerate(self.zeroshot.score_embeddings(embeddings)):
                out[i].update(scores)
        return [{c: row[c] for c in self.categories} for row in out]

    def score(
        self, texts: Sequence[str], languages: Sequence[str] | None = None
    ) -> list[dict[str, float]]:
        return self.score_embeddings(self.encoder.embed(list(texts), prefix=QUERY), languages)
