"""Keyword rules from a public Chinese lexicon, kept only where the labelled data allows.

The Sensitive-lexicon word lists (konsheng, MIT; ../shared/data/train/zh_lexicon_konsheng)
cover what the labelled data lacks in Chinese: sexual services, ads, weapon sales. They are
also noisy: "兼职" (part-time job), "网络" (network) or "美腿" (legs) are ordinary words on a
lifestyle platform. `floodgate model lexicon` therefore keeps a term only if it does not
fire on the training data's negatives for its category:

* a term is *tested* on every example of the train and calibration splits (never the test
  split, which measures the result) whose source labels the category: positives are
  examples labelled with it, negatives are benign examples and examples whose source
  covers the category without labelling it (the same rule as training, see `datasets`);
* kept: no negative hit, or at least `MIN_POSITIVE_HITS` positive hits at a precision of
  at least `MIN_PRECISION`;
* dropped before testing: one-character terms and Latin terms under four letters
  ("SM", "BT", "LY" are initials of anything), and terms with no letter at all.

Matching is the policy's own (`service.policy.text`): the kept terms are written as keyword
list files the policy includes (policies/lists/lexicon_*.txt), so what is measured is what
the served policy matches. Which lists are used, for which category, and why the others are
not, is in `LISTS` / `NOT_USED` below.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from service.classifier.datasets import SHARED_TRAIN, Example
from service.policy.text import collapse, fold, term_pattern

LEXICON_DIR = SHARED_TRAIN / "zh_lexicon_konsheng"

# A lexicon hit counts when the category's score is at least this (the default policy's
# lexicon rules use the same number; a test keeps them equal): a term alone, unseen in the
# training data, is weak evidence on a lifestyle platform where "本店" or "美腿" are ordinary.
LEXICON_MIN_SCORE = 0.2

SOURCE = "konsheng/Sensitive-lexicon (MIT, Copyright (c) 2024~2099 Konsheng)"
MIN_PRECISION = 0.8
MIN_POSITIVE_HITS = 3


@dataclass(frozen=True)
class LexiconList:
    name: str  # the keyword list's name in the policy, and its file: lists/<name>.txt
    category: str  # the category its terms are evidence for
    files: tuple[str, ...]
    why: str


LISTS = (
    LexiconList("lexicon_sexual", "sexual", ("Vocabulary_色情类型.txt", "Vocabulary_色情词库.txt"),
                "pornography and sexual services (色情): the sexual category"),
    LexiconList("lexicon_ads", "scam_spam", ("Vocabulary_广告类型.txt",),
                "ads (广告): paid posting, fake invoices, loans, 'private detective' offers: "
                "scam_spam"),
    LexiconList("lexicon_weapons", "violence", ("Vocabulary_涉枪涉爆.txt",),
                "guns and explosives for sale or to make (涉枪涉爆): nearest is violence "
                "(instructions to hurt people); Floodgate has no weapons category"),
)  # fmt: skip
NOT_USED = {
    "Vocabulary_暴恐词库.txt": "mostly names of a banned religious movement and their "
    "spellings, and pharmaceutical names: censorship and doping, not a harm this policy "
    "moderates",
    "Vocabulary_非法网址.txt": "14,595 bare domains, mostly from the 2000s; a URL reputation "
    "service is the tool for this, not 15k keywords on every post",
}

_LETTER = re.compile(r"[^\W\d_]")
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


@dataclass
class TermStats:
    positive: int = 0
    negative: int = 0
    examples: list[str] = field(default_factory=list)  # negatives it fired on (a few)

    @property
    def precision(self) -> float | None:
        hits = self.positive + self.negative
        return self.positive / hits if hits else None


@dataclass
class Selection:
    lst: LexiconList
    read: int
    too_short: list[str]
    stats: dict[str, TermStats]
    kept: list[str]

    @property
    def dropped(self) -> dict[str, TermStats]:
        kept = set(self.kept)
        return {t: s for t, s in self.stats.items() if t not in kept}


def read_terms(lst: LexiconList, root: Path = LEXICON_DIR) -> list[str]:
    """The list's terms, folded the way the policy folds them, in file order, once each."""
    seen: dict[str, None] = {}
    for name in lst.files:
        path = root / name
        if not path.exists():
            raise FileNotFoundError(f"{path}: lexicon file missing (see ../shared/data)")
        for line in path.read_text("utf-8").splitlines():
            term = fold(line.strip())
            if term and not term.startswith("#"):
                seen.setdefault(term, None)
    return list(seen)


def too_short(term: str) -> bool:
    letters = _LETTER.findall(term)
    if not letters:
        return True
    if term.isascii():
        return len(term.replace(" ", "")) < 4
    return len(term) < 2


def _is_negative(ex: Example, category: str) -> bool:
    return not ex.labels or (category in ex.covers and category not in ex.labels)


@dataclass(frozen=True)
class Folded:
    """An example with the forms keyword matching reads, computed once for every list."""

    example: Example
    forms: tuple[str, str]  # folded, collapsed
    cjk: bool


def folded(examples: Iterable[Example]) -> list[Folded]:
    out = []
    for ex in examples:
        f = fold(ex.text)
        out.append(Folded(ex, (f, collapse(f)), bool(_CJK.search(f))))
    return out


def term_stats(terms: list[str], category: str, items: Iterable[Folded]) -> dict[str, TermStats]:
    """Hits of every term on positives and negatives of `category` (see the module doc)."""
    stats = {t: TermStats() for t in terms}
    cjk_terms = [t for t in terms if not t.isascii()]
    latin = {t: re.compile(term_pattern(t)) for t in terms if t.isascii()}
    for item in items:
        ex, forms = item.example, item.forms
        positive = category in ex.labels
        if not positive and not _is_negative(ex, category):
            continue
        hits = [t for t, p in latin.items() if any(p.search(f) for f in forms)]
        if item.cjk:
            hits += [t for t in cjk_terms if t in forms[0] or t in forms[1]]
        for t in hits:
            s = stats[t]
            if positive:
                s.positive += 1
            else:
                s.negative += 1
                if len(s.examples) < 3:
                    s.examples.append(ex.text[:80])
    return stats


def keep(s: TermStats) -> bool:
    if s.negative == 0:
        return True
    return s.positive >= MIN_POSITIVE_HITS and (s.precision or 0.0) >= MIN_PRECISION


def select(
    examples: list[Example], root: Path = LEXICON_DIR, lists: tuple[LexiconList, ...] = LISTS
) -> list[Selection]:
    """Per list: the terms read, those too short to test, the hit counts, the kept terms."""
    tested = folded(e for e in examples if e.split != "test")
    out = []
    for lst in lists:
        terms = read_terms(lst, root)
        short = [t for t in terms if too_short(t)]
        candidates = [t for t in terms if not too_short(t)]
        stats = term_stats(candidates, lst.category, tested)
        kept = [t for t in candidates if keep(stats[t])]
        out.append(Selection(lst, len(terms), short, stats, kept))
    return out


def write_lists(selections: list[Selection], directory: Path) -> list[Path]:
    """One keyword file per list (a term per line), headed by where it came from."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for sel in selections:
        path = directory / f"{sel.lst.name}.txt"
        header = [
            f"# {sel.lst.category}: {sel.lst.why}.",
            f"# Terms selected from {SOURCE}, files {', '.join(sel.lst.files)},",
            "# by `floodgate model lexicon` (service/classifier/lexicon.py): kept "
            f"{len(sel.kept)} of {sel.read};",
            "# a term is dropped when it fires on the labelled training data's negatives. "
            "Regenerate; do not edit.",
        ]
        path.write_text("\n".join(header + sel.kept) + "\n", "utf-8")
        paths.append(path)
    return paths


def summary(selections: list[Selection]) -> list[dict]:
    rows = []
    for sel in selections:
        dropped = sel.dropped
        hit = Counter(
            "unseen" if s.positive + s.negative == 0 else "positive only" if s.negative == 0
            else "kept despite negatives" if keep(s) else "dropped"
            for s in sel.stats.values()
        )  # fmt: skip
        rows.append({
            "list": sel.lst.name,
            "category": sel.lst.category,
            "read": sel.read,
            "too_short": len(sel.too_short),
            "tested": len(sel.stats),
            "dropped_for_negatives": len(dropped),
            "kept": len(sel.kept),
            "kept_seen_on_positives": sum(sel.stats[t].positive > 0 for t in sel.kept),
            "outcomes": dict(hit),
            "dropped_examples": {
                t: {"negative": s.negative, "positive": s.positive, "on": s.examples[:1]}
                for t, s in sorted(dropped.items(), key=lambda kv: -kv[1].negative)[:10]
            },
        })  # fmt: skip
    return rows
