"""Text folding for keyword matching: what an evader changes, we fold back.

* full-width / half-width and other compatibility forms: NFKC (`ＣＡＳＩＮＯ` -> `casino`)
* case: casefold
* Traditional -> Simplified characters, so one list covers both (`賭場` -> `赌场`), from
  OpenCC's character table shipped in the opencc-purepy package
* invisible characters (zero-width space / joiner, soft hyphen...): removed
* spacing and emoji tricks between characters: a second, *collapsed* form joins CJK
  characters separated by up to three non-word characters (`加 微 信`, `加😀微😀信` -> `加微信`)
  and single Latin letters separated the same way (`c a s i n o`, `c.a.s.i.n.o` -> `casino`)

Keyword terms are folded the same way when the policy loads, and matched against both the
folded and the collapsed form of a post (``KeywordMatcher``).
"""

from __future__ import annotations

import importlib.util
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

_CJK = r"\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
_SEP = r"[\W_]{1,3}"
_CJK_GAP = re.compile(rf"(?<=[{_CJK}]){_SEP}(?=[{_CJK}])")
# a lone Latin letter/digit, a gap, another lone one: "c a s", "c.a.s"
_LETTER_GAP = re.compile(r"(?<![^\W_])([^\W_])" + _SEP + r"(?=[^\W_](?![^\W_]))", re.ASCII)


@lru_cache(maxsize=1)
def _traditional_to_simplified() -> dict[int, str]:
    spec = importlib.util.find_spec("opencc_purepy")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("opencc-purepy is required for Traditional/Simplified folding")
    table = Path(next(iter(spec.submodule_search_locations))) / "dicts" / "TSCharacters.txt"
    mapping: dict[int, str] = {}
    for line in table.read_text("utf-8").splitlines():
        trad, _, simp = line.partition("\t")
        targets = simp.split()
        if len(trad) == 1 and targets and len(targets[0]) == 1 and targets[0] != trad:
            mapping[ord(trad)] = targets[0]
    return mapping


def fold(text: str) -> str:
    """NFKC, casefold, Traditional -> Simplified, invisible characters removed."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Cf")
    return text.translate(_traditional_to_simplified())


def collapse(folded: str) -> str:
    """Join characters an evader spaced out (see the module docstring)."""
    text = _CJK_GAP.sub("", folded)
    # repeated because a match consumes the letter before each gap
    previous = None
    while previous != text:
        previous, text = text, _LETTER_GAP.sub(r"\1", text)
    return text


# a word character that is not CJK (kana, CJK ideographs, hangul)
_LATIN_WORD = rf"[^\W{_CJK}]"


def term_pattern(term: str) -> str:
    """The regex for one folded keyword term. Latin words match on word boundaries ("ass"
    must not fire on "class"), a CJK neighbour counting as a boundary ("加我telegram"); CJK
    has no spaces, so CJK terms match anywhere."""
    escaped = re.escape(term)
    return rf"(?<!{_LATIN_WORD}){escaped}(?!{_LATIN_WORD})" if term.isascii() else escaped


@dataclass(frozen=True)
class KeywordMatcher:
    terms: tuple[str, ...]
    pattern: re.Pattern | None

    @classmethod
    def build(cls, terms: list[str], regexes: list[str]) -> KeywordMatcher:
        terms = tuple(sorted({fold(t) for t in terms if fold(t).strip()}, key=len, reverse=True))
        parts = [term_pattern(term) for term in terms]
        parts += [f"(?:{r})" for r in regexes]
        return cls(terms, re.compile("|".join(parts), re.IGNORECASE) if parts else None)

    def find(self, *forms: str) -> list[str]:
        """Hits in any of the text's forms (folded, collapsed)."""
        if self.pattern is None:
            return []
        return sorted({m.group(0) for form in forms for m in self.pattern.finditer(form)})


# -- the model's view of a post -----------------------------------------------------------
# What an evader inserts between CJK characters: spaces, symbols and emoji (Unicode S*),
# variation selectors and modifiers, and a few ASCII marks. Not punctuation such as "，" or
# "、": between clauses it is ordinary writing, and the model reads it.
_GAP_MARKS = frozenset(".-_*/|~·•+=^")
_CJK_RUN = re.compile(rf"(?<=[{_CJK}])([^{_CJK}]{{1,4}})(?=[{_CJK}])")


def _gap_like(run: str) -> bool:
    return all(
        ch.isspace() or ch in _GAP_MARKS or unicodedata.category(ch)[0] in "SM" for ch in run
    )


def _drop_gaps(text: str) -> str:
    """Spaces and marks between CJK characters go; an emoji or symbol goes only where the
    same one separates CJK characters at least twice (`加😀微😀信`): once, it may stand for
    a word (`🐶东西`)."""
    runs = [m.group(1) for m in _CJK_RUN.finditer(text)]
    repeated = {r for r in runs if runs.count(r) >= 2}

    def keep(m: re.Match) -> str:
        run = m.group(1)
        if not _gap_like(run):
            return run
        plain = all(ch.isspace() or ch in _GAP_MARKS for ch in run)
        return "" if plain or run in repeated else run

    return _CJK_RUN.sub(keep, text)


def model_view(text: str) -> str:
    """The text the classifier reads: the keyword folding without its casefold (case carries
    tone: "SHUT UP") and without dropping punctuation. NFKC (full-width letters and digits),
    invisible characters removed, Traditional -> Simplified, and the spacing and emoji an
    evader puts between CJK characters or single Latin letters removed (`加 😀 微 信` ->
    `加微信`, `c a s i n o` -> `casino`)."""
    text = unicodedata.normalize("NFKC", text)
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Cf")
    text = text.translate(_traditional_to_simplified())
    text = _drop_gaps(text)
    previous = None
    while previous != text:
        previous, text = text, _LETTER_GAP.sub(r"\1", text)
    return text
