"""Static checks that go beyond the schema: rules that can never match.

A rule's condition is turned into disjunctive normal form (an OR of ANDs of simple
constraints, pushing `not` inwards), and each AND is checked for contradictions: a
language both required and excluded, disjoint language or market sets, a score interval
that is empty (min_score >= max_score, or `not` of a lower bound above an upper one),
conflicting `mixed`, an account-age or length window that is empty, a rule whose
`markets` exclude every market its condition allows. If every AND is contradictory,
the rule is unreachable. Keyword conditions are treated as always satisfiable.
The check is conservative: when the form grows too large it says nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from service.policy.model import Condition, Policy, Rule

MAX_TERMS = 512


@dataclass(frozen=True)
class _Set:
    """Allowed values: `only` (None = any) minus `never`."""

    only: frozenset[str] | None = None
    never: frozenset[str] = frozenset()

    def both(self, other: _Set) -> _Set:
        if self.only is None:
            only = other.only
        elif other.only is None:
            only = self.only
        else:
            only = self.only & other.only
        return _Set(only, self.never | other.never)

    def empty(self) -> bool:
        return self.only is not None and not (self.only - self.never)


@dataclass(frozen=True)
class _Term:
    language: _Set = _Set()
    script: _Set = _Set()
    market: _Set = _Set()
    mixed: frozenset[bool] = frozenset({True, False})
    # category -> (low inclusive, high exclusive)
    scores: tuple[tuple[str, float, float], ...] = ()
    age: tuple[float, float] = (0.0, math.inf)
    chars: tuple[float, float] = (0.0, math.inf)
    unknown: bool = field(default=False, compare=False)

    def both(self, o: _Term) -> _Term:
        scores: dict[str, tuple[float, float]] = {}
        for name, lo, hi in self.scores + o.scores:
            plo, phi = scores.get(name, (0.0, math.inf))
            scores[name] = (max(plo, lo), min(phi, hi))
        return _Term(
            self.language.both(o.language),
            self.script.both(o.script),
            self.market.both(o.market),
            self.mixed & o.mixed,
            tuple((n, lo, hi) for n, (lo, hi) in sorted(scores.items())),
            (max(self.age[0], o.age[0]), min(self.age[1], o.age[1])),
            (max(self.chars[0], o.chars[0]), min(self.chars[1], o.chars[1])),
        )

    def contradiction(self) -> str | None:
        for what, s in (
            ("language", self.language),
            ("script", self.script),
            ("market", self.market),
        ):
            if s.empty():
                if not s.only:
                    return f"its {what} conditions exclude each other"
                return f"{what} must be in {sorted(s.only)} but {sorted(s.never)} is excluded"
        if not self.mixed:
            return "mixed must be both true and false"
        for name, lo, hi in self.scores:
            if lo >= hi:
                return f"{name} score must be >= {lo:g} and < {hi:g}"
        if self.age[0] >= self.age[1]:
            return f"account age must be >= {self.age[0]:g} and < {self.age[1]:g} days"
        if self.chars[0] >= self.chars[1]:
            return f"text length must be >= {self.chars[0]:g} and < {self.chars[1]:g} characters"
        return None


def _thresholds(policy: Policy, category: str) -> tuple[float, float]:
    cat = policy.categories.get(category)
    if cat is None:
        return 0.0, 1.0
    values = [cat.threshold, *cat.thresholds.values()]
    return min(values), max(values)


def _leaves(c: Condition) -> list[Condition]:
    """Split a node into one single-key condition per key (its keys are ANDed)."""
    out = []
    data = c.model_dump(by_alias=True, exclude_unset=True)
    score_keys = {k: data.pop(k) for k in ("category", "min_score", "max_score") if k in data}
    if score_keys:
        out.append(Condition.model_validate(score_keys))
    for key, value in data.items():
        out.append(Condition.model_validate({key: value}))
    return out


def _dnf(c: Condition, policy: Policy, negate: bool = False) -> list[_Term]:
    parts = _leaves(c)
    if len(parts) > 1:
        subs = [_dnf(p, policy, negate) for p in parts]
        return _or(subs) if negate else _and(subs)
    if c.all is not None:
        subs = [_dnf(x, policy, negate) for x in c.all]
        return _or(subs) if negate else _and(subs)
    if c.any is not None:
        subs = [_dnf(x, policy, negate) for x in c.any]
        return _and(subs) if negate else _or(subs)
    if c.not_ is not None:
        return _dnf(c.not_, policy, not negate)
    return [_leaf(c, policy, negate)]


def _leaf(c: Condition, policy: Policy, negate: bool) -> _Term:
    def setof(values: list[str]) -> _Set:
        return _Set(never=frozenset(values)) if negate else _Set(only=frozenset(values))

    if c.language is not None:
        return _Term(language=setof(c.language))
    if c.script is not None:
        return _Term(script=setof(c.script))
    if c.market is not None:
        return _Term(market=setof(c.market))
    if c.mixed is not None:
        return _Term(mixed=frozenset({c.mixed != negate}))
    if c.category is not None:
        low_default, high_default = _thresholds(policy, c.category)
        lo = (
            c.min_score
            if c.min_score is not None
            else (low_default if c.max_score is None else 0.0)
        )
        hi = c.max_score if c.max_score is not None else math.inf
        if not negate:
            return _Term(scores=((c.category, lo, hi),))
        if c.max_score is None:
            # not(score >= lo): score < lo (per-language thresholds: the highest, conservatively)
            bound = c.min_score if c.min_score is not None else high_default
            return _Term(scores=((c.category, 0.0, bound),))
        return _Term(unknown=True)  # not(lo <= s < hi) is two intervals: not tracked
    if c.account_age_days_lt is not None:
        bound = c.account_age_days_lt
        return _Term(age=(bound, math.inf) if negate else (0.0, bound))
    if c.text_chars_lt is not None:
        bound = c.text_chars_lt
        return _Term(chars=(bound, math.inf) if negate else (0.0, bound))
    return _Term(unknown=True)  # keywords and anything else: assume satisfiable


def _and(groups: list[list[_Term]]) -> list[_Term]:
    terms = [_Term()]
    for group in groups:
        terms = [a.both(b) for a in terms for b in group]
        if len(terms) > MAX_TERMS:
            raise OverflowError
    return terms


def _or(groups: list[list[_Term]]) -> list[_Term]:
    terms = [t for g in groups for t in g]
    if len(terms) > MAX_TERMS:
        raise OverflowError
    return terms


def why_unreachable(rule: Rule, policy: Policy) -> str | None:
    """A reason when the rule can never match any post; None when it can (or we can't tell)."""
    try:
        terms = _dnf(rule.when, policy)
    except OverflowError:
        return None
    if rule.markets is not None:
        scope = _Term(market=_Set(only=frozenset(rule.markets)))
        terms = [replace(t).both(scope) for t in terms]
    reasons = [t.contradiction() for t in terms]
    if all(reasons):
        return reasons[0]
    return None


def unreachable_rules(policy: Policy) -> list[tuple[tuple, str]]:
    """(path in the document, message) for every rule that can never match."""
    out = []
    for i, rule in enumerate(policy.rules):
        reason = why_unreachable(rule, policy)
        if reason:
            out.append((("rules", i, "when"), f"rule {rule.id!r} can never match: {reason}"))
    return out
