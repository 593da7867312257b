"""Raw detector backends by name, for comparing detectors (bench/langid_eval.py): text ->
(ISO 639-1 code or "und", confidence 0..1). "floodgate" is ours (``detection.detect``); the
others are the libraries it builds on, and two it does not use, called plainly.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from service.language.backends import fasttext_lite
from service.language.detection import detect
from service.language.scripts import UND

Backend = Callable[[str], tuple[str, float]]


def _make_floodgate() -> Backend:
    def run(text: str) -> tuple[str, float]:
        r = detect(text)
        return r.code, r.confidence

    return run


def _make_langdetect() -> Backend:
    from langdetect import DetectorFactory, detect_langs
    from langdetect.lang_detect_exception import LangDetectException

    DetectorFactory.seed = 0  # langdetect is random without a seed

    def run(text: str) -> tuple[str, float]:
        try:
            best = detect_langs(text)[0]
        except LangDetectException:
            return UND, 0.0
        return best.lang.split("-")[0], float(best.prob)

    return run


def _make_lingua() -> Backend:
    from lingua import LanguageDetectorBuilder

    det = LanguageDetectorBuilder.from_all_languages().build()

    def run(text: str) -> tuple[str, float]:
        values = det.compute_language_confidence_values(text)
        if not values or values[0].value <= 0:
            return UND, 0.0
        return values[0].language.iso_code_639_1.name.lower(), float(values[0].value)

    return run


def _make_langid() -> Backend:
    from langid.langid import LanguageIdentifier, model

    ident = LanguageIdentifier.from_modelstring(model, norm_probs=True)

    def run(text: str) -> tuple[str, float]:
        code, prob = ident.classify(text)
        return code, float(prob)

    return run


def _make_fasttext_lite() -> Backend:
    det = fasttext_lite()  # bundled lid.176.ftz only, see fasttext_lite

    def run(text: str) -> tuple[str, float]:
        text = text.strip()
        if not text:
            return UND, 0.0
        best = det.detect(text, model="lite", k=1)[0]
        return str(best["lang"]).split("-")[0], float(best["score"])

    return run


def _make_cld2() -> Backend:
    import pycld2

    def run(text: str) -> tuple[str, float]:
        try:
            _reliable, _nbytes, details = pycld2.detect(text, bestEffort=True)
        except pycld2.error:
            text = text.encode("utf-8", "ignore").decode("utf-8")
            text = "".join(c for c in text if c.isprintable() or c.isspace())
            try:
                _reliable, _nbytes, details = pycld2.detect(text, bestEffort=True)
            except pycld2.error:
                return UND, 0.0
        _name, code, percent, _score = details[0]
        if code in ("un", "xxx"):
            return UND, 0.0
        return code.split("-")[0], percent / 100.0

    return run


#: Backend factories by name; build them with get_detector(name).
DETECTORS: dict[str, Callable[[], Backend]] = {
    "floodgate": _make_floodgate,
    "langdetect": _make_langdetect,
    "lingua": _make_lingua,
    "langid": _make_langid,
    "fasttext-lite": _make_fasttext_lite,
    "cld2": _make_cld2,
}
DEFAULT_DETECTOR = "floodgate"


@functools.cache
def get_detector(name: str = DEFAULT_DETECTOR) -> Backend:
    """Raw backend by name (built once): text -> (code, confidence)."""
    try:
        factory = DETECTORS[name]
    except KeyError:
        raise KeyError(f"unknown language detector {name!r}; known: {sorted(DETECTORS)}") from None
    return factory()
