"""Category scores for one policy: trained heads where they exist, zero-shot for the rest,
then the policy's example memory.

A policy may define categories the heads were never trained on (a new scam pattern during
an incident): those are scored zero-shot from the policy's description and examples,
beside the trained ones, from the same embeddings. A category's `memory:` examples then
raise the score of posts that closely resemble one of them (memory.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from service.classifier.embedder import QUERY, Embedder
from service.classifier.heads import TrainedHeads
from service.classifier.memory import ExampleMemory, Recall, lift
from service.classifier.zeroshot import ZeroShotScorer
from service.policy import Policy


class PolicyScorer:
    def __init__(
        self, encoder: Embedder, policy: Policy, heads: TrainedHeads | None = None
    ) -> None:
        self.encoder = encoder
        self.heads = heads
        self.policy = policy
        self.categories = list(policy.categories)
        self.trained = [c for c in self.categories if heads is not None and c in heads.outputs]
        rest = [c for c in self.categories if c not in self.trained]
        self.zeroshot = ZeroShotScorer(encoder, policy, categories=rest) if rest else None
        # the same weights reading another view of the text give other scores: "+view" says
        # the model read policy.text.model_view (FLOODGATE_INPUT_VIEW), no suffix the raw text
        parts = [encoder.version + ("+view" if encoder.view is not None else "")]
        names = ["multilingual-e5-small"]
        if self.trained:
            parts.append(heads.version)
            names.append("heads")
        if self.zeroshot is not None:
            parts.append(self.zeroshot.digest)
            names.append("zeroshot")
        self.memory = ExampleMemory(encoder, policy) if ExampleMemory.wanted(policy) else None
        if self.memory is not None:
            parts.append(f"m{self.memory.digest}")
            names.append("memory")
        self.name = "+".join(names)
        self.version = ".".join(parts)

    def score_embeddings(
        self, embeddings: np.ndarray, languages: Sequence[str] | None = None
    ) -> list[dict[str, float]]:
        return self.assess(embeddings, languages)[0]

    def assess(
        self,
        embeddings: np.ndarray,
        languages: Sequence[str] | None = None,
        judged_by: Policy | None = None,
    ) -> tuple[list[dict[str, float]], list[dict[str, Recall]]]:
        """Category scores per post, and the memory examples that raised them (to the
        thresholds of `judged_by`: the policy under a drift profile; default its own)."""
        n = len(embeddings)
        languages = list(languages or ["und"] * n)
        out: list[dict[str, float]] = [{} for _ in range(n)]
        if self.trained:
            probs = self.heads.probabilities(embeddings, languages)
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
        scores = [{c: row[c] for c in self.categories} for row in out]
        if self.memory is None:
            return scores, [{} for _ in range(n)]
        recalls = self.memory.recall(embeddings)
        return lift(scores, recalls, languages, judged_by or self.policy), recalls

    def score(
        self, texts: Sequence[str], languages: Sequence[str] | None = None
    ) -> list[dict[str, float]]:
        return self.score_embeddings(self.encoder.embed(list(texts), prefix=QUERY), languages)
