"""Zero-shot category scores from the policy's category descriptions and examples.

Each category is represented by the embeddings of its description and example texts (in
English, Chinese or any language the policy gives); the policy's benign examples form the
counter-weight. For a post, the evidence for category c is the mean of its k highest
cosine similarities to c's texts minus the same for the benign texts, and the score is a
logistic function of that margin. e5 similarities are compressed into roughly 0.7-0.95,
so a margin of a few hundredths is already strong evidence: that is what the temperature
encodes. Scores are in [0, 1] but are not calibrated probabilities; trained heads
(a separate step) replace them category by category.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from service.classifier.embedder import QUERY, Embedder
from service.policy import Policy

TOP_K = 3
TEMPERATURE = 0.015
MARGIN = 0.01


class ZeroShotScorer:
    def __init__(
        self, encoder: Embedder, policy: Policy, categories: list[str] | None = None
    ) -> None:
        self.encoder = encoder
        self.categories = list(categories if categories is not None else policy.categories)
        anchors: list[tuple[int, str]] = []  # (category index or -1 for benign, text)
        for ci, cat in enumerate(policy.categories[c] for c in self.categories):
            anchors.append((ci, cat.description))
            for examples in cat.examples.values():
                anchors += [(ci, t) for t in examples]
        for examples in policy.benign_examples.values():
            anchors += [(-1, t) for t in examples]
        if not any(owner == -1 for owner, _ in anchors):
            raise ValueError("zero-shot scoring needs benign_examples in the policy")
        self._owner = np.array([o for o, _ in anchors])
        self._anchors = encoder.embed([t for _, t in anchors], prefix=QUERY)
        digest = hashlib.sha256(
            "\x00".join(f"{o}\x01{t}" for o, t in anchors).encode()
            + f"{TOP_K}/{TEMPERATURE}/{MARGIN}".encode()
        ).hexdigest()[:8]
        self.digest = digest
        self.name = "multilingual-e5-small+zeroshot"
        self.version = f"{encoder.version}.{digest}"

    @staticmethod
    def _topk_mean(sims: np.ndarray, k: int) -> np.ndarray:
        k = min(k, sims.shape[1])
        return np.sort(sims, axis=1)[:, -k:].mean(axis=1)

    def score_embeddings(self, emb: np.ndarray) -> list[dict[str, float]]:
        sims = emb @ self._anchors.T  # (n, anchors)
        benign = self._topk_mean(sims[:, self._owner == -1], TOP_K)
        cols = []
        for ci in range(len(self.categories)):
            evidence = self._topk_mean(sims[:, self._owner == ci], TOP_K) - benign
            cols.append(1.0 / (1.0 + np.exp(-(evidence - MARGIN) / TEMPERATURE)))
        probs = np.stack(cols, axis=1) if cols else np.zeros((len(emb), 0))
        return [
            {name: round(float(p), 4) for name, p in zip(self.categories, row, strict=True)}
            for row in probs
        ]

    def score(self, texts: Sequence[str]) -> list[dict[str, float]]:
        return self.score_embeddings(self.encoder.embed(list(texts), prefix=QUERY))
