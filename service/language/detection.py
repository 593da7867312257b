"""Language identification for posts: the decisions (pure logic: no Redis, no HTTP).

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

import math
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from service.language.backends import (
    cld2_top,
    fasttext_scores,
    lingua_preloaded,
    lingua_ranked,
    lingua_restricted,
)
from service.language.scripts import (
    LATIN_CANDIDATES,
    SCRIPT_CANDIDATES,
    SCRIPT_LANGUAGE,
    SCRIPT_WEIGHT,
    UND,
    Run,
    han_script,
    hint_code,
    mask,
    script_runs,
    st_tables,
)

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
# Analysis of one text

@dataclass
class _Group:
    """All runs of one run class in a post (language is decided per group)."""

    cls: str
    runs: list[Run]
    counts: dict[str, int]
    code: str = UND
    script: str = "Zyyy"
    confidence: float = 0.0
    query: str = ""  # text for the statistical detectors, "" when rules decide
    cands: tuple[str, ...] = ()  # languages lingua compares, () when decided
    letters: int = 0  # set once the counts are complete (_analyse)
    weight: float = 0.0  # letters weighted by SCRIPT_WEIGHT


@dataclass
class _Analysis:
    text: str
    hint: str | None
    only_hashtags: bool
    groups: dict[str, _Group]
    prior: dict[str, float] = field(default_factory=dict)


def _analyse(text: str, hint: str | None, market: str | None = None) -> _Analysis:
    masked, only_tags = mask(text)
    groups: dict[str, _Group] = {}
    for run in script_runs(masked):
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
        g.weight = sum(SCRIPT_WEIGHT.get(s, 1.0) * n for s, n in g.counts.items())
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
        if hint_code(a.hint) == "ja" and g.code == "zh" and n <= 8:
            # Short kanji-only text: the hint may say Japanese, unless a
            # Simplified-only character shows it is Chinese.
            simp_only, _ = st_tables()
            chars = "".join(masked[r.start : r.end] for r in g.runs)
            if not any(c in simp_only for c in chars):
                g.code, g.script, g.confidence = "ja", "Jpan", 0.5
        return
    g.script = g.cls
    if g.cls in SCRIPT_LANGUAGE:
        g.code = SCRIPT_LANGUAGE[g.cls]
        g.confidence = min(0.99, 0.6 + 0.1 * n)
        return
    if g.cls in SCRIPT_CANDIDATES:
        g.code = SCRIPT_CANDIDATES[g.cls][0]
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
    code = hint_code(hint)
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
    scores = fasttext_scores(g.query)
    top, top_p = scores[0] if scores else (UND, 0.0)
    post = _posterior({c: p for c, p in scores if c in cands}, a.prior)
    best = max(post, key=post.__getitem__) if post else UND
    cld2 = cld2_top(g.query) if best == top and top_p >= _CHEAP_SURE else None
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
        cld2 = cld2_top(g.query)
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
        default = SCRIPT_CANDIDATES[g.cls][0]
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
        best = SCRIPT_CANDIDATES[g.cls][0]
    _answer(a, g, best, post)


def _latin_letters_only_short(a: _Analysis) -> None:
    """Latin groups too short for lingua: a hint may still name them."""
    g = a.groups.get("Latn")
    hint = hint_code(a.hint)
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


def _lingua_codes(cls: str) -> tuple[str, ...]:
    return LATIN_CANDIDATES if cls == "Latn" else SCRIPT_CANDIDATES[cls]


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
        det = lingua_restricted(cands)
        queries = list(by_query)
        if len(queries) < _LINGUA_PARALLEL_MIN:
            all_values = [det.compute_language_confidence_values(q) for q in queries]
        else:
            all_values = det.compute_language_confidence_values_in_parallel(queries)
        for q, values in zip(queries, all_values, strict=True):
            ranked = lingua_ranked(values)
            for a, g in by_query[q]:
                _apply_lingua(a, g, ranked)
    return [_finish(a) for a in analyses]


def detect(text: str, hint: str | None = None, *, market: str | None = None) -> LanguageResult:
    """Primary language of one post; "und" when unsure. See the module doc."""
    return detect_batch([text], [hint], markets=[market])[0]


def warm_up() -> None:
    """Load every model the default detector can use now (~8 s; lingua otherwise
    loads each language's n-gram models on first use, tens of ms at a time);
    the worker calls this at start-up."""
    lingua_preloaded()
    detect_batch(["warm up the detector", "Привет мир", "مرحبا", "नमस्ते दुनिया"])
