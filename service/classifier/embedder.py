"""The embedder: what the scorers and the pipeline ask of the model's first stage.

Texts in, one unit-length vector per text out, and a ``version`` naming the weights and the
arithmetic (trained heads and disk caches are keyed by it), and the ``view`` of a text the
model reads (None: the text as written). Two things are embedders: the
``Encoder`` the worker runs, and the ``EmbeddingCache`` offline runs (backtest, diff,
training) put in front of it, so a scorer built on the cache never loads the model for a
text it has seen. e5 wants a prefix on every text; the scorers use ``QUERY`` on both sides.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

QUERY = "query: "  # e5's prefix for symmetric similarity tasks


def read(view: Callable[[str], str] | None, text: str) -> str:
    """What a model with ``view`` reads of ``text``: its view, or the text as written."""
    return view(text) if view is not None else text


@runtime_checkable
class Embedder(Protocol):
    version: str
    # what the model reads of a text (policy.text.model_view), or None: the text as written
    view: Callable[[str], str] | None

    def embed(self, texts: Sequence[str], *, prefix: str = QUERY) -> np.ndarray:
        """(len(texts), dim) float32 embeddings of unit length, in the order of ``texts``."""
        ...
