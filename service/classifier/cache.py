"""A disk cache of text embeddings (and language detections) for offline runs: backtests, diffs.

Embedding thousands of labelled posts takes minutes on a CPU; a policy edit changes none of
them. ``EmbeddingCache`` keeps every embedding it computes in SQLite under
``<directory>/<encoder version>/embeddings.sqlite``, keyed by the prefix, the encoder's
max_length (it decides truncation) and the SHA-1 of the text, and computes only what it has
not seen. Each batch is committed in its own transaction, so a run killed mid-way keeps all
finished batches and never leaves a half-written row; the next run resumes.

Language detection does not depend on the policy either: ``detect`` caches
``language.detect_batch`` results in ``<directory>/language.sqlite``, keyed by the text, the
hint and a fingerprint of the detector's source (an edit to ``service/language/`` starts a
fresh cache instead of serving stale answers).

The cache is an ``Embedder`` like the ``Encoder`` (``version``, ``embed(texts, prefix=...)``),
so a ``ZeroShotScorer`` built on it caches the policy's anchor texts too: a warm run never
loads the model at all.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from service import language as _language
from service.classifier.embedder import QUERY, read
from service.language import LanguageResult, Segment
from service.progress import on_terminal, progress_bar

_CHUNK = 256  # texts per encoder call and per committed transaction
_LOOKUP = 500  # keys per SELECT ... IN (...)


def _sha1(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()


def detector_version() -> str:
    """Fingerprint of the language detector: its source files and lingua's version."""
    h = hashlib.sha1()
    for source in sorted(Path(_language.__file__).parent.glob("*.py")):
        h.update(source.read_bytes())
    try:
        from importlib.metadata import version

        h.update(version("lingua-language-detector").encode())
    except Exception:  # not installed under that name: the source hash still guards edits
        pass
    return h.hexdigest()[:12]


def _connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, timeout=30)
    db.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer; crash-safe
    db.execute("PRAGMA synchronous=NORMAL")
    return db


def _progress(total: int, description: str, enabled: bool | None):
    """A progress bar on stderr, or None (not a terminal, or few items)."""
    if enabled is None:
        enabled = total >= _CHUNK and on_terminal()
    return progress_bar(total, description, enabled=enabled, transient=True)


class EmbeddingCache:
    """Cached ``encoder.embed``; see the module doc.

    ``encoder`` is an ``Encoder``, or the path of a built model directory (the model is then
    loaded only when something is missing from the cache), or a zero-argument factory
    together with ``version``.

    Counters (for tests and reports): ``hits`` and ``misses`` count texts looked up,
    ``computed`` the texts actually run through the encoder, ``encoder_calls`` its calls;
    ``language_hits`` / ``language_computed`` the same for language detection.
    """

    def __init__(
        self,
        directory: Path | str,
        encoder: Any,
        *,
        version: str | None = None,
        max_length: int = 256,
        threads: int = 0,
        precision: str = "fp32",
        tuned_dir: Path | None = None,
        progress: bool | None = None,
        view: Callable[[str], str] | None = None,
    ) -> None:
        self.directory = Path(directory)
        # the encoder's view of a text (Encoder.view): keys hash what the model reads, so an
        # entry is right for every text with the same view
        self.view = view if view is not None else getattr(encoder, "view", None)
        self._encoder = None
        self._factory: Callable[[], Any] | None = None
        self.model_dir: Path | None = None  # set when the cache loads the encoder itself
        self.threads = threads
        self.tuned_dir = tuned_dir
        if isinstance(encoder, str | Path):
            # (the encoder module imports torch only when an Encoder is built)
            from service.classifier.encoder import (
                encoder_version,
                resolve_precision,
                with_precision,
            )

            model_dir = self.model_dir = Path(encoder)
            precision = resolve_precision(precision)
            self.version = version or with_precision(encoder_version(model_dir, tuned_dir), precision)
            self.max_length = max_length

            def load() -> Any:
                from service.classifier.encoder import Encoder

                return Encoder(model_dir, max_length=max_length, threads=threads,
                               precision=precision, tuned_dir=tuned_dir, view=view)  # fmt: skip

            self._factory = load
        elif callable(encoder) and not hasattr(encoder, "embed"):
            if version is None:
                raise ValueError("an encoder factory needs an explicit version")
            self.version, self.max_length, self._factory = version, max_length, encoder
        else:
            self._encoder = encoder
            self.version = version or encoder.version
            self.max_length = getattr(encoder, "max_length", max_length)
        self.dim: int | None = getattr(self._encoder, "dim", None)
        self.progress = progress
        self.path = self.directory / self.version / "embeddings.sqlite"
        self.language_path = self.directory / "language.sqlite"
        self._db: sqlite3.Connection | None = None
        self._lang_db: sqlite3.Connection | None = None
        self._detector = detector_version()
        self.hits = self.misses = self.computed = self.encoder_calls = 0
        self.language_hits = self.language_computed = 0

    def variant(self, *, precision: str, max_length: int) -> EmbeddingCache:
        """A sibling cache (same directory and model) for other arithmetic or truncation."""
        if self.model_dir is None:
            raise ValueError("only a cache built from a model directory has variants")
        return EmbeddingCache(self.directory, self.model_dir, max_length=max_length,
                              threads=self.threads, precision=precision,
                              tuned_dir=self.tuned_dir, progress=self.progress)  # fmt: skip

    # -- the encoder, loaded on demand -------------------------------------------------

    @property
    def encoder(self) -> Any:
        if self._encoder is None:
            assert self._factory is not None
            self._encoder = self._factory()
            if self._encoder.version != self.version:
                raise RuntimeError(
                    f"encoder version {self._encoder.version} != cache version {self.version}"
                )
            self.dim = self._encoder.dim
        return self._encoder

    @property
    def encoder_loaded(self) -> bool:
        return self._encoder is not None

    # -- embeddings ----------------------------------------------------------------------

    def _emb_db(self) -> sqlite3.Connection:
        if self._db is None:
            self._db = _connect(self.path)
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS emb (key TEXT PRIMARY KEY, dim INTEGER NOT NULL,"
                " vec BLOB NOT NULL)"
            )
            self._db.commit()
        return self._db

    def _key(self, text: str, prefix: str) -> str:
        return f"{self.max_length}\x1f{prefix}\x1f{_sha1(read(self.view, text))}"

    def _lookup(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        db = self._emb_db()
        found: dict[str, np.ndarray] = {}
        for i in range(0, len(keys), _LOOKUP):
            part = keys[i : i + _LOOKUP]
            rows = db.execute(
                f"SELECT key, dim, vec FROM emb WHERE key IN ({','.join('?' * len(part))})", part
            )
            for key, dim, blob in rows:
                vec = np.frombuffer(blob, dtype=np.float32)
                if vec.shape[0] == dim:  # a torn row cannot exist in SQLite; belt and braces
                    found[key] = vec
        return found

    def embed(
        self, texts: Sequence[str], prefix: str = QUERY, *, progress: bool | None = None
    ) -> np.ndarray:
        """Embeddings (n, dim) like ``Encoder.embed``; only texts never seen are computed."""
        texts = list(texts)
        keys = [self._key(t, prefix) for t in texts]
        unique = list(dict.fromkeys(keys))
        found = self._lookup(unique)
        missing = [k for k in unique if k not in found]
        self.hits += len(texts) - sum(1 for k in keys if k not in found)
        self.misses += sum(1 for k in keys if k not in found)
        if missing:
            text_of = dict(zip(keys, texts, strict=True))
            found.update(self._compute(missing, text_of, prefix, progress))
        if not texts:
            return np.zeros((0, self.dim or 0), dtype=np.float32)
        out = np.stack([found[k] for k in keys]).astype(np.float32, copy=False)
        self.dim = out.shape[1]
        return out

    def _compute(
        self, missing: list[str], text_of: dict[str, str], prefix: str, progress: bool | None
    ) -> dict[str, np.ndarray]:
        encoder = self.encoder
        db = self._emb_db()
        computed: dict[str, np.ndarray] = {}
        bar = _progress(len(missing), "embedding", self.progress if progress is None else progress)
        try:
            for start in range(0, len(missing), _CHUNK):
                part = missing[start : start + _CHUNK]
                vecs = np.asarray(
                    encoder.embed([text_of[k] for k in part], prefix=prefix), dtype=np.float32
                )
                self.encoder_calls += 1
                self.computed += len(part)
                with db:  # one transaction per chunk: all of it is stored, or none
                    db.executemany(
                        "INSERT OR REPLACE INTO emb (key, dim, vec) VALUES (?, ?, ?)",
                        [(k, v.shape[0], v.tobytes()) for k, v in zip(part, vecs, strict=True)],
                    )
                computed.update(zip(part, vecs, strict=True))
                if bar is not None:
                    bar.advance(bar.task_ids[0], len(part))
        finally:
            if bar is not None:
                bar.stop()
        return computed

    # -- language detection ------------------------------------------------------------

    def _language_db(self) -> sqlite3.Connection:
        if self._lang_db is None:
            self._lang_db = _connect(self.language_path)
            self._lang_db.execute(
                "CREATE TABLE IF NOT EXISTS lang (key TEXT PRIMARY KEY, result TEXT NOT NULL)"
            )
            self._lang_db.commit()
        return self._lang_db

    def detect(
        self,
        texts: Sequence[str],
        hints: Sequence[str | None] | None = None,
        markets: Sequence[str | None] | None = None,
    ) -> list[LanguageResult]:
        """``language.detect_batch`` with the results cached on disk (keyed by the text, the
        hint, the market and the configured priors, besides the detector's source)."""
        texts = list(texts)
        hints = list(hints) if hints is not None else [None] * len(texts)
        markets = list(markets) if markets is not None else [None] * len(texts)
        if not len(hints) == len(markets) == len(texts):
            raise ValueError("hints and markets must be as long as texts")
        priors = _sha1(json.dumps([_language.MARKET_PRIORS, _language.DEFAULT_PRIOR], sort_keys=True))[:8]
        keys = [
            f"{self._detector}\x1f{h or ''}\x1f{m or ''}\x1f{priors}\x1f{_sha1(t)}"
            for t, h, m in zip(texts, hints, markets, strict=True)
        ]
        db = self._language_db()
        found: dict[str, LanguageResult] = {}
        unique = list(dict.fromkeys(keys))
        for i in range(0, len(unique), _LOOKUP):
            part = unique[i : i + _LOOKUP]
            rows = db.execute(
                f"SELECT key, result FROM lang WHERE key IN ({','.join('?' * len(part))})", part
            )
            found.update((k, _language_from_json(r)) for k, r in rows)
        todo = {k: i for i, k in enumerate(keys) if k not in found}
        self.language_hits += len(keys) - sum(1 for k in keys if k in todo)
        if todo:
            idx = list(todo.values())
            results = _language.detect_batch([texts[i] for i in idx], [hints[i] for i in idx],
                                             markets=[markets[i] for i in idx])  # fmt: skip
            self.language_computed += len(idx)
            with db:
                db.executemany(
                    "INSERT OR REPLACE INTO lang (key, result) VALUES (?, ?)",
                    [(k, json.dumps(r.to_dict(), ensure_ascii=False))
                     for k, r in zip(todo, results, strict=True)],
                )  # fmt: skip
            found.update(zip(todo, results, strict=True))
        return [found[k] for k in keys]

    def close(self) -> None:
        for db in (self._db, self._lang_db):
            if db is not None:
                db.close()
        self._db = self._lang_db = None

    def __enter__(self) -> EmbeddingCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stats(self) -> dict[str, int]:
        return {
            "embedding_hits": self.hits,
            "embedding_misses": self.misses,
            "embedding_computed": self.computed,
            "encoder_calls": self.encoder_calls,
            "language_hits": self.language_hits,
            "language_computed": self.language_computed,
        }


def _language_from_json(raw: str) -> LanguageResult:
    d = json.loads(raw)
    return LanguageResult(
        code=d["code"],
        script=d["script"],
        confidence=d["confidence"],
        mixed=tuple(Segment(**s) for s in d["mixed"]),
    )
