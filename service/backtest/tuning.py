"""Thresholds from decisions: per category and language, the threshold at which the policy's
own rules, run through ``pipeline.judge`` as the worker runs them, best tell the posts
labelled with the category from the rest.

A category's threshold changes one thing in the policy: whether a condition on the category
without its own ``min_score`` holds, i.e. whether ``score >= threshold``. So every post is
judged twice per category (the condition forced true, then forced false) and the decision at
any threshold is read off those two, exactly and without judging again per candidate.

"Caught by a category" means a matching rule whose action is at least ``limit_reach`` fired
on that category: a post that only got a label, or that a rule on another category caught,
does not count. A post counts as a negative for a category only where its data says so
(``known``): a hate dataset's "not hate" row says nothing about spam.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from service import classification
from service.backtest.data import LabeledPost
from service.backtest.scoring import ScoredPost, judge_posts
from service.classifier.datasets import CATEGORIES, load_examples, trained_examples
from service.pipeline import Assessment
from service.policy import SEVERITY, LoadedPolicy

FLAGGING = SEVERITY["limit_reach"]
GRID = tuple(round(x, 3) for x in np.arange(0.05, 0.951, 0.025))
NEVER = 2.0  # above any score: the condition never holds
DIGITS = 4
# How precise decisions must stay for a threshold to be lowered, per language. English
# actions limit a post until one of very few bilingual reviewers gets to it (most never
# will), so a lower English threshold must keep 70 % of what it acts on a real violation;
# Chinese actions queue the post for a large Chinese review team, where recall is worth
# more than the reviewers' time on a false alarm.
MIN_PRECISION = {"en": 0.7}
# F1 gains smaller than this, or than 1 / positives (about what one positive post changing
# side moves F1 by), do not move a threshold: they are noise (English scam_spam once moved
# 0.575 -> 0.225 for a gain under one point, Chinese violence 0.325 -> 0.725 on 21
# positives for one of 0.046)
NEAR_TIE = 0.01


def caught_by(a: Assessment, category: str) -> bool:
    """A rule acting at least ``limit_reach`` fired on ``category`` (own market)."""
    return any(
        SEVERITY[m.action] >= FLAGGING and any(c == category for c, _ in m.categories)
        for m in a.own.matches
    )


def flagged(a: Assessment) -> bool:
    return SEVERITY[a.own.action] >= FLAGGING


def with_threshold(lp: LoadedPolicy, category: str, language: str, value: float) -> LoadedPolicy:
    """``lp`` with one category's threshold for one language replaced (not validated: the
    tuner uses values outside 0..1 to force a condition)."""
    cats = dict(lp.policy.categories)
    cat = cats[category]
    cats[category] = cat.model_copy(update={"thresholds": {**cat.thresholds, language: value}})
    return replace(lp, policy=lp.policy.model_copy(update={"categories": cats}))


def _prf(pred: np.ndarray, truth: np.ndarray) -> dict[str, float | None]:
    tp = int((pred & truth).sum())
    return {
        **classification.prf(tp, int((pred & ~truth).sum()), int((~pred & truth).sum()), DIGITS),
        "flagged": int(pred.sum()),
    }


def best_threshold(
    scores: np.ndarray,
    when_fired: np.ndarray,
    when_not: np.ndarray,
    truth: np.ndarray,
    grid: Sequence[float] = GRID,
    prefer: float = 0.5,
    min_precision: float = 0.0,
    tolerance: float = NEAR_TIE,
) -> tuple[float, float]:
    """(threshold, F1 of its decisions): of the thresholds whose F1 is within ``tolerance``
    of the best, the one closest to ``prefer`` (the policy's), so a flat F1 curve leaves the
    threshold where it was. A threshold below ``prefer`` qualifies only where its decisions
    are at least ``min_precision`` precise: the floor stops lowering, never forces raising.
    Pure: the decisions at threshold t are ``when_fired`` where ``score >= t`` and
    ``when_not`` elsewhere."""
    candidates: list[tuple[float, float]] = []
    for t in grid:
        pred = np.where(scores >= t, when_fired, when_not)
        m = classification.prf(int((pred & truth).sum()), int((pred & ~truth).sum()),
                               int((~pred & truth).sum()), DIGITS)  # fmt: skip
        if t < prefer and (m["precision"] or 0.0) < min_precision:
            continue
        candidates.append((t, m["f1"] or 0.0))
    if not candidates:
        return prefer, -1.0
    top = max(f1 for _, f1 in candidates)
    return min(((t, f1) for t, f1 in candidates if f1 >= top - tolerance),
               key=lambda c: (abs(c[0] - prefer), -c[1]))  # fmt: skip


def tune(
    scored: Sequence[ScoredPost],
    lp: LoadedPolicy,
    known: Sequence[frozenset[str]] | None = None,
    *,
    languages: Sequence[str] = ("en", "zh"),
    categories: Sequence[str] | None = None,
    min_positives: int = 20,
    min_precision: Mapping[str, float] = MIN_PRECISION,
    grid: Sequence[float] = GRID,
) -> dict[str, Any]:
    """Per category x language: the decisions' precision, recall and F1 at the policy's
    threshold and at the best one (see ``best_threshold``; a gain under ``NEAR_TIE`` or
    1 / positives keeps the policy's); ``thresholds`` holds the new values (cells with
    fewer than ``min_positives`` positives keep theirs)."""
    cats = list(categories or lp.policy.categories)
    rows, thresholds = [], {}
    for cat in cats:
        for lang in languages:
            idx = [i for i, sp in enumerate(scored) if sp.language.code == lang
                   and (known is None or cat in known[i])]  # fmt: skip
            sub = [scored[i] for i in idx]
            truth = np.array([cat in sp.post.labels for sp in sub], dtype=bool)
            current = lp.policy.categories[cat].threshold_for(lang)
            row: dict[str, Any] = {"category": cat, "language": lang, "posts": len(sub),
                                   "positives": int(truth.sum()), "threshold": current}  # fmt: skip
            if not sub:
                continue
            on = np.array(
                [caught_by(a, cat) for a in judge_posts(sub, with_threshold(lp, cat, lang, 0.0))]
            )
            off = np.array(
                [caught_by(a, cat) for a in judge_posts(sub, with_threshold(lp, cat, lang, NEVER))]
            )
            s = np.array([sp.scores[cat] for sp in sub])
            row["before"] = _prf(np.where(s >= current, on, off), truth)
            if row["positives"] < min_positives:
                row["tuned"], row["reason"] = current, f"< {min_positives} positives: kept"
            else:
                floor = min_precision.get(lang, 0.0)
                tie = max(NEAR_TIE, 1 / row["positives"])
                t, _ = best_threshold(s, on, off, truth, grid, current, floor, tie)
                row["tuned"], row["reason"] = t, "best F1 of the decisions"
                thresholds.setdefault(cat, {})[lang] = t
            row["after"] = _prf(np.where(s >= row["tuned"], on, off), truth)
            rows.append(row)
    return {"rows": rows, "thresholds": thresholds}


def decision_table(
    scored: Sequence[ScoredPost],
    lp: LoadedPolicy,
    known: Sequence[frozenset[str]] | None = None,
    languages: Sequence[str] = ("en", "zh"),
) -> list[dict[str, Any]]:
    """End to end at the policy's thresholds, per category x language: precision and recall
    of "caught by a rule on the category", and of "flagged" (any action >= limit_reach) on
    the posts labelled with it; plus an ``any`` row (flagged vs any label)."""
    judged = judge_posts(scored, lp)
    rows = []
    for cat in [*lp.policy.categories, "any"]:
        for lang in languages:
            idx = [i for i, sp in enumerate(scored) if sp.language.code == lang
                   and (cat == "any" or known is None or cat in known[i])]  # fmt: skip
            if not idx:
                continue
            if cat == "any":
                idx = [i for i in idx if known is None or scored[i].post.labels
                       or len(known[i]) == len(lp.policy.categories)]  # fmt: skip
                truth = np.array([bool(scored[i].post.labels) for i in idx], dtype=bool)
                pred = np.array([flagged(judged[i]) for i in idx], dtype=bool)
            else:
                truth = np.array([cat in scored[i].post.labels for i in idx], dtype=bool)
                pred = np.array([caught_by(judged[i], cat) for i in idx], dtype=bool)
            if not truth.any():
                continue
            rows.append({"category": cat, "language": lang, "posts": len(idx),
                         "positives": int(truth.sum()), **_prf(pred, truth)})  # fmt: skip
    return rows


_CATEGORY = re.compile(r"^  ([a-z][a-z0-9_]*):\s*(#.*)?$")
_THRESHOLD = re.compile(r"^    threshold:\s*[0-9.]+\s*(#.*)?$")
_THRESHOLDS = re.compile(r"^    thresholds:")


def set_thresholds(text: str, thresholds: Mapping[str, Mapping[str, float]]) -> str:
    """The policy YAML ``text`` with each named category's per-language ``thresholds:`` set
    (one flow-style line after its ``threshold:``; an existing one-line ``thresholds:`` is
    replaced). Only the ``categories:`` block is touched; comments stay. Raises ValueError
    when a category or its ``threshold:`` line is not where this layout expects it."""
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    section, current, done = None, None, set()
    for line in lines:
        if line[:1] not in (" ", "\n", "#", ""):
            section = line.split(":", 1)[0]
            current = None
        elif section == "categories" and (m := _CATEGORY.match(line)):
            current = m.group(1)
        if section == "categories" and current in thresholds and _THRESHOLDS.match(line):
            continue  # replaced below, after `threshold:`
        out.append(line)
        if section == "categories" and current in thresholds and _THRESHOLD.match(line):
            values = ", ".join(f"{lg}: {v:.3f}".rstrip("0").rstrip(".")
                               for lg, v in sorted(thresholds[current].items()))  # fmt: skip
            out.append(f"    thresholds: {{{values}}}\n")
            done.add(current)
    missing = sorted(set(thresholds) - done)
    if missing:
        raise ValueError(f"no `threshold:` line found for categories {missing}")
    return "".join(out)


def split_posts(
    split: str, manifest: dict | None = None
) -> tuple[list[LabeledPost], list[frozenset[str]]]:
    """The training data's ``split`` ("calibration" or "test") as labelled posts, with the
    categories each post's source labels (a benign row: all of them): the data the heads of
    ``manifest`` were trained on (``datasets.trained_examples``), else the default budget."""
    posts, known = [], []
    examples = trained_examples(manifest) if manifest else load_examples()
    for ex in examples:
        if ex.split != split:
            continue
        hint = ex.language if ex.language in ("en", "zh") else None
        posts.append(LabeledPost(ex.text, tuple(sorted(ex.labels)), hint, source=ex.source))
        known.append(frozenset(CATEGORIES) if ex.benign else frozenset(ex.covers | ex.labels))
    return posts, known
