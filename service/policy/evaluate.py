"""Evaluation: a post's facts + a loaded policy -> an outcome per market. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from service.policy.model import SEVERITY, Condition, Rule
from service.policy.text import collapse, fold

if TYPE_CHECKING:
    from service.policy.parse import LoadedPolicy


@dataclass(frozen=True)
class Facts:
    """Everything a rule may look at, computed before evaluation."""

    text: str
    language: str
    script: str
    mixed: bool
    scores: Mapping[str, float]
    market: str
    account_age_days: float | None = None
    # window in minutes -> posts by the same author in it (this one included); the worker
    # counts them in Redis for the windows the policy uses
    author_posts: Mapping[int, int] | None = None


@dataclass(frozen=True)
class RuleMatch:
    rule_id: str
    action: str
    labels: tuple[str, ...]
    queue: str | None
    categories: tuple[tuple[str, float], ...]  # categories whose score conditions fired
    keywords: tuple[tuple[str, tuple[str, ...]], ...]
    signals: tuple[tuple[str, float], ...] = ()  # author signals that fired


@dataclass(frozen=True)
class Outcome:
    market: str
    action: str
    matches: tuple[RuleMatch, ...]
    labels: tuple[str, ...]
    queue: str | None


class _Trace:
    __slots__ = ("categories", "keywords", "signals")

    def __init__(self) -> None:
        self.categories: dict[str, float] = {}
        self.keywords: dict[str, tuple[str, ...]] = {}
        self.signals: dict[str, float] = {}


def _holds(
    c: Condition, f: Facts, lp: LoadedPolicy, forms: tuple[str, ...], trace: _Trace, cache: dict
) -> bool:
    if c.language is not None and f.language not in c.language:
        return False
    if c.script is not None and f.script not in c.script:
        return False
    if c.mixed is not None and f.mixed != c.mixed:
        return False
    if c.market is not None and f.market not in c.market:
        return False
    if c.text_chars_lt is not None and len(f.text.strip()) >= c.text_chars_lt:
        return False
    if c.account_age_days_lt is not None and (
        f.account_age_days is None or f.account_age_days >= c.account_age_days_lt
    ):
        return False
    if c.account_age_days_lt is not None:
        trace.signals["account_age_days"] = round(f.account_age_days or 0.0, 2)
    if c.author_posts is not None:
        window = c.author_posts.within_minutes
        count = (f.author_posts or {}).get(window)
        if count is None or count < c.author_posts.at_least:
            return False
        trace.signals[f"author_posts_{window}m"] = count
    if c.category is not None:
        score = f.scores.get(c.category, 0.0)
        low = c.min_score
        if low is None and c.max_score is None:
            low = lp.policy.categories[c.category].threshold_for(f.language)
        if low is not None and score < low:
            return False
        if c.max_score is not None and score >= c.max_score:
            return False
        trace.categories[c.category] = score
    if c.keywords is not None:
        if c.keywords not in cache:
            cache[c.keywords] = tuple(lp.matchers[c.keywords].find(*forms))
        hits = cache[c.keywords]
        if not hits:
            return False
        trace.keywords[c.keywords] = hits
    if c.all is not None and not all(_holds(x, f, lp, forms, trace, cache) for x in c.all):
        return False
    # `any` evaluates every branch (no short-circuit) so reasons list all that fired
    if c.any is not None and not [x for x in c.any if _holds(x, f, lp, forms, trace, cache)]:
        return False
    return not (c.not_ is not None and _holds(c.not_, f, lp, forms, _Trace(), cache))


def evaluate(lp: LoadedPolicy, facts: Facts) -> dict[str, Outcome]:
    """Outcome per market of ``lp`` for a post with ``facts`` (its own market included)."""
    folded = fold(facts.text)
    forms = (folded, collapse(folded))
    cache: dict[str, tuple[str, ...]] = {}
    outcomes: dict[str, Outcome] = {}
    markets = list(lp.policy.markets)
    if facts.market not in markets:
        markets.append(facts.market)
    for market in markets:
        f = replace(facts, market=market)
        matched: list[tuple[Rule, RuleMatch]] = []
        for rule in lp.policy.rules:
            if rule.markets is not None and market not in rule.markets:
                continue
            trace = _Trace()
            if _holds(rule.when, f, lp, forms, trace, cache):
                matched.append((rule, RuleMatch(
                        rule_id=rule.id,
                        action=rule.action,
                        labels=tuple(rule.labels),
                        queue=rule.queue
                        or (f"review:{f.language}" if rule.action == "review" else None),
                        categories=tuple(sorted(trace.categories.items())),
                        keywords=tuple(sorted(trace.keywords.items())),
                        signals=tuple(sorted(trace.signals.items())),
                    )))  # fmt: skip
        # most severe first; among equals the higher priority, then the id (stable reasons)
        matched.sort(key=lambda rm: (-SEVERITY[rm[0].action], -rm[0].priority, rm[0].id))
        matches = [m for _, m in matched]
        action = matches[0].action if matches else "allow"
        labels = tuple(dict.fromkeys(label for m in matches for label in m.labels))
        queue = (
            next((m.queue for m in matches if m.action == "review"), None)
            if action == "review"
            else None
        )
        outcomes[market] = Outcome(market, action, tuple(matches), labels, queue)
    return outcomes
