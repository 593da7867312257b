"""The classifier's parts built from Settings, in one place: the encoder the worker runs, the
on-disk embedding cache offline runs use (backtests, diffs, training), and the trained heads
that belong to either.

Serving code (the pipeline) and offline tools (backtest, the CLI) both build through here,
so they read the same model directory, tuned layers, arithmetic and truncation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from service.classifier.cache import EmbeddingCache
from service.classifier.encoder import Encoder
from service.classifier.heads import HeadsMismatch, TrainedHeads
from service.config import Settings
from service.policy.text import model_view

log = logging.getLogger("floodgate.classifier")


def input_view(settings: Settings) -> Callable[[str], str] | None:
    """What the model reads of a post: ``policy.text.model_view`` (FLOODGATE_INPUT_VIEW), or
    the text as written."""
    return model_view if settings.input_view else None


def load_encoder(settings: Settings) -> Encoder:
    """The encoder the worker serves with (tuned layers, arithmetic, in-memory cache)."""
    return Encoder(
        settings.resolved_model_dir,
        max_length=settings.max_length_tokens,
        threads=settings.torch_threads,
        precision=settings.precision,
        tuned_dir=settings.tuned_dir,
        cache_size=settings.embedding_cache_size,
        view=input_view(settings),
    )


def open_embedding_cache(
    settings: Settings,
    directory: Path | str | None = None,
    model_dir: Path | str | None = None,
    *,
    progress: bool | None = None,
) -> EmbeddingCache:
    """The disk cache under ``<data dir>/cache/embeddings`` for the configured encoder; the
    model itself is loaded only when a text is missing from the cache."""
    return EmbeddingCache(
        Path(directory) if directory else settings.data_dir / "cache" / "embeddings",
        Path(model_dir) if model_dir else settings.resolved_model_dir,
        max_length=settings.max_length_tokens,
        threads=settings.torch_threads,
        precision=settings.precision,
        tuned_dir=settings.tuned_dir,
        progress=progress,
        view=input_view(settings),
    )


def load_heads(settings: Settings, encoder_version: str) -> TrainedHeads | None:
    """The trained heads for this encoder, or None: none configured or trained, or trained
    on another encoder (then the categories are scored zero-shot rather than wrongly)."""
    directory = settings.heads_dir
    if directory is None or not TrainedHeads.available(directory):
        return None
    try:
        return TrainedHeads(directory, encoder_version=encoder_version)
    except HeadsMismatch as exc:
        log.warning("%s; scoring zero-shot", exc)
        return None
