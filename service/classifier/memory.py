"""Example memory: posts a policy lists under a category, caught by resemblance.

A trained head learns from thousands of examples and changes only when it is retrained; a
spam wave or a new slang term changes within hours. A category's `memory:` in the policy
lists labelled posts per language. A post whose embedding is at least `similarity` (cosine)
close to one of them, and closer to that example than to any of the policy's
`benign_examples`, scores at least the category's threshold in its language: the rules on
the category then act on it as on a post the model flagged. Nothing is retrained; loading
the policy embeds the examples (a few hundred take well under a second), and the decision
names the example that was recalled.

Pure arithmetic on embeddings; the scorer (scorer.py) applies it after the heads.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from service.classifier.embedder import QUERY, Embedder
from service.policy import Policy


@dataclass(frozen=True)
class Recall:
    """A post's nearest memory example of one category, close enough to count."""

    similarity: float
    example: str

    def to_dict(self) -> dict:
        return {"similarity": round(self.similarity, 4), "example": self.example}


class ExampleMemory:
    """The memory examples of a policy's categories, embedded once (a policy with none
    needs no ExampleMemory: `ExampleMemory.wanted`)."""

    @staticmethod
    def wanted(policy: Policy) -> bool:
        return any(spec.memory is not None for spec in policy.categories.values())

    def __init__(self, encoder: Embedder, policy: Policy) -> None:
        self.categories = [c for c, spec in policy.categories.items() if spec.memory is not None]
        texts: list[str] = []
        owner: list[int] = []
        for ci, c in enumerate(self.categories):
            for examples in policy.categories[c].memory.examples.values():
                texts += examples
                owner += [ci] * len(examples)
        self._texts, self._owner = texts, np.array(owner, dtype=np.int64)
        self._similarity = np.array(
            [policy.categories[c].memory.similarity for c in self.categories], dtype=np.float32
        )
        benign = [t for examples in policy.benign_examples.values() for t in examples]
        self._examples = encoder.embed(texts, prefix=QUERY) if texts else np.zeros((0, 0))
        self._benign = encoder.embed(benign, prefix=QUERY) if benign else None
        self.digest = hashlib.sha256(
            "\x00".join(
                [f"{c}\x01{policy.categories[c].memory.similarity}" for c in self.categories]
                + [f"{o}\x01{t}" for o, t in zip(owner, texts, strict=True)]
                + [f"-1\x01{t}" for t in benign]
            ).encode()
        ).hexdigest()[:8]

    def recall(self, embeddings: np.ndarray) -> list[dict[str, Recall]]:
        """Per post, the categories whose memory recalls it, with the nearest example."""
        n = len(embeddings)
        out: list[dict[str, Recall]] = [{} for _ in range(n)]
        if not self._texts or n == 0:
            return out
        sims = embeddings @ self._examples.T  # (posts, examples)
        floor = (
            (embeddings @ self._benign.T).max(axis=1)
            if self._benign is not None
            else np.full(n, -1.0, dtype=np.float32)
        )
        for ci, category in enumerate(self.categories):
            cols = np.flatnonzero(self._owner == ci)
            best = cols[sims[:, cols].argmax(axis=1)]
            top = sims[np.arange(n), best]
            hit = (top >= self._similarity[ci]) & (top > floor)
            for i in np.flatnonzero(hit):
                out[i][category] = Recall(float(top[i]), self._texts[best[i]])
        return out


def lift(
    scores: Sequence[dict[str, float]],
    recalls: Sequence[dict[str, Recall]],
    languages: Sequence[str],
    policy: Policy,
) -> list[dict[str, float]]:
    """The scores with every recalled category raised to at least its threshold in the
    post's language (a head that already scores higher keeps its score)."""
    out = []
    for row, recalled, lang in zip(scores, recalls, languages, strict=True):
        row = dict(row)
        for c in recalled:
            row[c] = max(row.get(c, 0.0), policy.categories[c].threshold_for(lang))
        out.append(row)
    return out
