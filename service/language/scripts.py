"""What a character is, for language detection: its Unicode script, how much content it
carries, Simplified vs Traditional Chinese (OpenCC's tables), the languages each script can
be, and the preparation of a post's text: URLs, e-mails and mentions masked, the rest cut
into runs of one script class. Tables and pure functions; the decisions are in
``detection``.
"""

from __future__ import annotations

import bisect
import functools
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

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
SCRIPT_CANDIDATES: dict[str, tuple[str, ...]] = {
    "Cyrl": ("ru", "uk", "be", "bg", "mk", "sr", "kk", "mn"),
    "Arab": ("ar", "fa", "ur"),
    "Deva": ("hi", "mr"),
}
# Scripts that (for our purposes) name one language.
SCRIPT_LANGUAGE: dict[str, str] = {
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
SCRIPT_WEIGHT = {"Hani": HAN_WEIGHT, "Kana": KANA_WEIGHT, "Bopo": 1.0, "Hang": HANGUL_WEIGHT}


# --------------------------------------------------------------------------
# Simplified / Traditional characters

@functools.lru_cache(maxsize=1)
def st_tables() -> tuple[frozenset[str], frozenset[str]]:
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
    simp_only, trad_only = st_tables()
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


def hint_code(hint: str | None) -> str | None:
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


def mask(text: str) -> tuple[str, bool]:
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
# Runs of one script class

@dataclass
class Run:
    cls: str  # run class: "CJ" or a script code
    start: int
    end: int
    counts: dict[str, int]


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
# still works, it just ends a regex match (see script_runs).
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


def script_runs(masked: str) -> list[Run]:
    """Runs of one script class; characters that carry no language between two
    letters of the same class (spaces, punctuation, emoji) do not split a run."""
    runs: list[Run] = []
    cur: Run | None = None
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
            cur = Run(cls, m.start(), m.end(), counts)
            runs.append(cur)
        else:
            cur.end = m.end()
            for k, n in counts.items():
                cur.counts[k] = cur.counts.get(k, 0) + n
    return runs
