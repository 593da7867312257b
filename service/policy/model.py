"""Policy file model: the pydantic classes a policy YAML is validated into."""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from service.yamlsource import LocatedErrors, suggest

ACTIONS = ("allow", "label", "limit_reach", "review", "remove")
SEVERITY = {a: i for i, a in enumerate(ACTIONS)}
Action = Literal["allow", "label", "limit_reach", "review", "remove"]
LANG_CODE = r"^(und|[a-z]{2,3})$"
EXAMPLE_KEY = r"^(und|mixed|[a-z]{2,3})$"  # examples may also be filed as mixed-language


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _keys_with_values(model: BaseModel, empty: str, what: str) -> None:
    """A mapping that names at least one key, and none of them without a value."""
    if not model.model_fields_set:
        raise ValueError(empty)
    nulls = sorted(n for n in model.model_fields_set if getattr(model, n) is None)
    if nulls:
        raise ValueError(f"{what} without a value: {', '.join(nulls)}")


Examples = dict[
    Annotated[str, Field(pattern=EXAMPLE_KEY)], list[Annotated[str, Field(min_length=1)]]
]


class Memory(_Strict):
    """Labelled posts of a category to catch by resemblance, without retraining
    (classifier/memory.py): a post at least `similarity` (cosine, in the model's embedding)
    close to one of them, and closer to it than to any of the policy's benign examples,
    scores at least the category's threshold in its language."""

    # measured (bench/example_memory.py, models/README.md): at 0.85 ten examples of one
    # fraud script lift its recall 0.84 -> 0.91 and flag under 1 in 1,000 ordinary posts
    # besides; at 0.8 a wave of ten hate examples flags 14 of 1,815
    similarity: float = Field(default=0.85, ge=0.5, lt=1.0)
    examples: Examples = {}
    # language -> files beside the policy (relative paths), one example per line, # comments;
    # read at load time into `examples` (their content is part of the policy version)
    files: dict[
        Annotated[str, Field(pattern=EXAMPLE_KEY)], list[Annotated[str, Field(min_length=1)]]
    ] = {}

    @model_validator(mode="after")
    def _some_text(self) -> Memory:
        if not any(self.examples.values()) and not any(self.files.values()):
            raise ValueError("memory needs at least one example (in examples or files)")
        return self


class Category(_Strict):
    description: str = Field(min_length=3)
    threshold: float = Field(ge=0.0, le=1.0)
    # e.g. {"en": 0.8}: one threshold per language where the scorer behaves differently
    thresholds: dict[
        Annotated[str, Field(pattern=LANG_CODE)], Annotated[float, Field(ge=0, le=1)]
    ] = {}
    # language -> example texts; the zero-shot scorer embeds these
    examples: Examples = {}
    # posts to catch by resemblance (an operator's examples of a new wave); see Memory
    memory: Memory | None = None

    def threshold_for(self, language: str) -> float:
        return self.thresholds.get(language, self.threshold)


class KeywordList(_Strict):
    description: str = ""
    terms: list[Annotated[str, Field(min_length=1)]] = []
    regexes: list[Annotated[str, Field(min_length=1)]] = []
    # files beside the policy (relative paths), one term / one regex per line, # comments
    files: list[Annotated[str, Field(min_length=1)]] = []
    regex_files: list[Annotated[str, Field(min_length=1)]] = []

    @field_validator("regexes")
    @classmethod
    def _compiles(cls, value: list[str]) -> list[str]:
        for pattern in value:
            try:
                re.compile(f"(?:{pattern})")  # as the matcher joins it: "(?i)x" fails there
            except re.error as exc:
                raise ValueError(f"bad regex {pattern!r}: {exc}") from exc
        return value


class AuthorPosts(_Strict):
    """The author posted at least `at_least` posts (this one included) in `within_minutes`."""

    within_minutes: int = Field(ge=1, le=24 * 60)
    at_least: int = Field(ge=1)


class Condition(_Strict):
    """One node of a rule's condition tree; the keys present are ANDed together."""

    all: list[Condition] | None = Field(default=None, min_length=1)
    any: list[Condition] | None = Field(default=None, min_length=1)
    not_: Condition | None = Field(default=None, alias="not")
    language: list[Annotated[str, Field(pattern=LANG_CODE)]] | None = None
    script: list[str] | None = None
    mixed: bool | None = None
    category: str | None = None
    # score at or above which `category` matches; default: the category's threshold
    min_score: float | None = Field(default=None, ge=0, le=1)
    max_score: float | None = Field(default=None, ge=0, le=1)
    keywords: str | None = None
    market: list[str] | None = None
    account_age_days_lt: float | None = Field(default=None, gt=0)
    text_chars_lt: int | None = Field(default=None, gt=0)
    author_posts: AuthorPosts | None = None

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _not_empty(self) -> Condition:
        # `language: null` would silently match every post: refuse it
        _keys_with_values(self, "empty condition", "condition keys")
        if (self.min_score is not None or self.max_score is not None) and self.category is None:
            raise ValueError("min_score/max_score need a category")
        return self


class Rule(_Strict):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    description: str = ""
    when: Condition
    action: Action
    labels: list[str] = []
    # review queue name; default: "review:<language>"
    queue: str | None = None
    # on ties in severity the higher priority rule is reported first
    priority: int = 0
    # the rule only applies in these markets (default: all)
    markets: list[str] | None = None


SEVERITY_LEVELS = ("low", "medium", "high", "severe")
Severity = Literal["low", "medium", "high", "severe"]
REASON = r"^[a-z][a-z0-9_]*$"
OverflowAction = Literal["allow", "label", "limit_reach", "remove"]


class ReviewPool(_Strict):
    """People who review: how many, how fast each works, which languages they read."""

    reviewers: int = Field(ge=0)
    items_per_hour: float = Field(gt=0, le=10_000)
    languages: list[Annotated[str, Field(pattern=LANG_CODE)]] = Field(min_length=1)


class ReviewQueueSpec(_Strict):
    """One review reason (a queue per language: `<language>/<reason>`)."""

    description: str = ""
    sla_minutes: float = Field(gt=0, le=30 * 24 * 60)
    # what a new item gets instead of review while the queue's expected wait is over its SLA
    overflow: OverflowAction = "limit_reach"
    # labels added to a decision the fallback applied to
    overflow_labels: list[str] = []
    # a floor for the severity of the queue's items (a self-harm queue is severe whatever
    # category fired)
    severity: Severity | None = None


class Review(_Strict):
    """Human review: queues by reason, reviewer pools and their capacity, who is in which."""

    # per category; orders the queues (priority) and bounds the fallback (severe: never allow)
    severity: dict[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")], Severity] = {}
    default_severity: Severity = "medium"
    # reason -> queue; a review rule names its reason with `queue: review:<reason>`, a rule
    # without a queue goes to `general`
    queues: dict[Annotated[str, Field(pattern=REASON)], ReviewQueueSpec] = Field(min_length=1)
    pools: dict[Annotated[str, Field(pattern=REASON)], ReviewPool] = Field(min_length=1)
    # API key name -> pool: what a reviewer may see (admin keys see every queue)
    reviewers: dict[str, str] = {}
    appeal_sla_minutes: float = Field(default=24 * 60, gt=0, le=30 * 24 * 60)


class Marks(_Strict):
    """A language's alert mark: its share reaches ``baseline x factor`` and ``baseline + jump``."""

    factor: float = Field(ge=1, le=1000)
    jump: float = Field(ge=0, le=1)

    def mark(self, baseline: float) -> float:
        return max(baseline * self.factor, baseline + self.jump)


class DriftAction(_Strict):
    """While ``language``'s alert is raised, decisions use the policy profile ``profile``."""

    language: str = Field(pattern=LANG_CODE)
    profile: str = Field(pattern=REASON)


class LanguageMix(_Strict):
    """Language-mix drift: each language's share of recent posts against a declared baseline.

    A language's alert is raised when its share over the last ``window_minutes`` reaches its
    raise mark, and cleared when it falls under its (lower) clear mark; with fewer than
    ``min_posts`` posts in the window nothing changes."""

    window_minutes: float = Field(default=30, gt=0, le=7 * 24 * 60)
    min_posts: int = Field(default=1000, ge=1)
    # the normal share of each language (of all posts); languages not listed: default_baseline
    baseline: dict[
        Annotated[str, Field(pattern=LANG_CODE)], Annotated[float, Field(ge=0, le=1)]
    ] = {}
    default_baseline: float = Field(default=0.0, ge=0, le=1)
    raise_at: Marks = Marks(factor=5, jump=0.05)
    clear_at: Marks = Marks(factor=2.5, jump=0.03)
    # the first entry whose language is raised names the profile decisions use
    on_drift: list[DriftAction] = []

    def baseline_of(self, language: str) -> float:
        return self.baseline.get(language, self.default_baseline)

    @model_validator(mode="after")
    def _consistent(self) -> LanguageMix:
        errors: list[tuple[tuple, str]] = []
        if sum(self.baseline.values()) > 1 + 1e-9:
            errors.append((("baseline",), f"baseline shares add up to "
                           f"{sum(self.baseline.values()):g}, more than 1"))  # fmt: skip
        r, c = self.raise_at, self.clear_at
        # hysteresis: the clear mark is under the raise mark whatever the baseline
        if not (c.jump < r.jump and (c.factor < r.factor or r.factor == c.factor == 1)):
            errors.append((("clear_at",), "clear_at must be under raise_at: a smaller jump, and "
                           "a smaller factor (unless both factors are 1)"))  # fmt: skip
        seen: set[str] = set()
        for i, d in enumerate(self.on_drift):
            if d.language in seen:
                errors.append(
                    (("on_drift", i, "language"), f"language {d.language!r} is listed twice")
                )
            seen.add(d.language)
        if errors:
            raise LocatedErrors(errors)
        return self


class _Change(_Strict):
    """A profile's change to one part of the policy: at least one key, none of them null."""

    @model_validator(mode="after")
    def _set(self) -> _Change:
        _keys_with_values(self, "empty change: name what the profile changes", "keys")
        return self


class RuleChange(_Change):
    """What a profile changes in one rule; keys left out keep the rule's own."""

    action: Action | None = None
    labels: list[str] | None = None
    queue: str | None = None
    priority: int | None = None
    markets: list[str] | None = None
    enabled: bool = True  # false: the rule does not apply under the profile


class CategoryChange(_Change):
    """A profile's thresholds for one category (per-language ones are merged)."""

    threshold: float | None = Field(default=None, ge=0, le=1)
    thresholds: dict[
        Annotated[str, Field(pattern=LANG_CODE)], Annotated[float, Field(ge=0, le=1)]
    ] = {}


class Profile(_Strict):
    """A named overlay on the policy: changed rules and category thresholds."""

    description: str = ""
    rules: dict[str, RuleChange] = {}
    categories: dict[str, CategoryChange] = {}


def review_reason(rule_queue: str | None) -> str:
    """A rule's `queue` as a review reason: `review:self_harm` and `self_harm` are
    `self_harm`; a rule without a queue goes to `general`."""
    if not rule_queue:
        return "general"
    return rule_queue.removeprefix("review:")


class Policy(_Strict):
    name: str = Field(min_length=1)
    description: str = ""
    markets: list[str] = Field(default=["cn", "intl"], min_length=1)
    default_market: str = "cn"
    categories: dict[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")], Category]
    # texts the zero-shot scorer treats as the benign anchor, per language
    benign_examples: dict[Annotated[str, Field(pattern=EXAMPLE_KEY)], list[str]] = {}
    keywords: dict[str, KeywordList] = {}
    rules: list[Rule] = Field(min_length=1)
    # human review (queues, reviewer pools, fallback); absent: review outcomes are not queued
    review: Review | None = None
    # language-mix drift alerts, and named profiles the policy switches to while one is raised
    language_mix: LanguageMix | None = None
    profiles: dict[Annotated[str, Field(pattern=REASON)], Profile] = {}

    def drift_profile(self, raised: Collection[str]) -> str | None:
        """The profile decisions use while the languages in ``raised`` drift: the first
        ``on_drift`` entry whose language is raised (None: the policy as written)."""
        if self.language_mix is None:
            return None
        return next((d.profile for d in self.language_mix.on_drift if d.language in raised), None)

    def author_windows(self) -> list[int]:
        """The `author_posts` windows (minutes) the rules use: what the worker must count."""
        return sorted({
            cond.author_posts.within_minutes
            for rule in self.rules
            for _, cond in _walk(rule.when)
            if cond.author_posts is not None
        })  # fmt: skip

    @model_validator(mode="after")
    def _references(self) -> Policy:
        errors: list[tuple[tuple, str]] = []  # (path in the document, message)
        if self.default_market not in self.markets:
            errors.append(
                (("default_market",), f"default_market {self.default_market!r} is not in markets")
            )
        seen: set[str] = set()
        for i, rule in enumerate(self.rules):
            at = ("rules", i)
            if rule.id in seen:
                errors.append((at + ("id",), f"rules[{i}]: duplicate rule id {rule.id!r}"))
            seen.add(rule.id)
            for market in rule.markets or ():
                if market not in self.markets:
                    errors.append(
                        (at + ("markets",), f"rules[{i}] ({rule.id}): unknown market {market!r}")
                    )
            for path, cond in _walk(rule.when, at + ("when",)):
                if cond.category and cond.category not in self.categories:
                    errors.append((
                        path + ("category",),
                        f"rules[{i}] ({rule.id}): unknown category {cond.category!r}"
                        f"{suggest(cond.category, self.categories)}",
                    ))  # fmt: skip
                if cond.keywords and cond.keywords not in self.keywords:
                    errors.append((
                        path + ("keywords",),
                        f"rules[{i}] ({rule.id}): unknown keyword list {cond.keywords!r}"
                        f"{suggest(cond.keywords, self.keywords)}",
                    ))  # fmt: skip
                for market in cond.market or ():
                    if market not in self.markets:
                        errors.append(
                            (
                                path + ("market",),
                                f"rules[{i}] ({rule.id}): unknown market {market!r}",
                            )
                        )
        if errors:
            raise LocatedErrors(errors)
        return self

    @model_validator(mode="after")
    def _review_references(self) -> Policy:
        if self.review is None:
            return self
        r, errors = self.review, []
        for name in r.severity:
            if name not in self.categories:
                errors.append((("review", "severity", name), f"unknown category "
                               f"{name!r}{suggest(name, self.categories)}"))  # fmt: skip
        for who, pool in r.reviewers.items():
            if pool not in r.pools:
                errors.append((("review", "reviewers", who), f"unknown pool "
                               f"{pool!r}{suggest(pool, r.pools)}"))  # fmt: skip
        for name, spec in r.queues.items():
            level = spec.severity or r.default_severity
            if level == "severe" and spec.overflow in ("allow", "label"):
                errors.append((("review", "queues", name, "overflow"),
                               f"a severe queue never falls back to "
                               f"{spec.overflow!r} (limit_reach or remove)"))  # fmt: skip
        for i, rule in enumerate(self.rules):
            if rule.action != "review":
                continue
            reason = review_reason(rule.queue)
            if reason not in r.queues:
                at = ("rules", i, "queue") if rule.queue else ("rules", i, "action")
                errors.append((at, f"rules[{i}] ({rule.id}): review queue {reason!r} is not "
                               f"declared under review.queues{suggest(reason, r.queues)}"))  # fmt: skip
        if errors:
            raise LocatedErrors(errors)
        return self

    @model_validator(mode="after")
    def _profile_references(self) -> Policy:
        errors = []
        rule_ids = [r.id for r in self.rules]
        for name, profile in self.profiles.items():
            for rid in profile.rules:
                if rid not in rule_ids:
                    errors.append((("profiles", name, "rules", rid),
                                   f"unknown rule {rid!r}{suggest(rid, rule_ids)}"))  # fmt: skip
            for cat in profile.categories:
                if cat not in self.categories:
                    errors.append((("profiles", name, "categories", cat),
                                   f"unknown category {cat!r}{suggest(cat, self.categories)}"))  # fmt: skip
            for rid, change in profile.rules.items():
                for market in change.markets or ():
                    if market not in self.markets:
                        errors.append((("profiles", name, "rules", rid, "markets"),
                                       f"unknown market {market!r}"))  # fmt: skip
        for i, d in enumerate(self.language_mix.on_drift if self.language_mix else ()):
            if d.profile not in self.profiles:
                errors.append((("language_mix", "on_drift", i, "profile"),
                               f"unknown profile {d.profile!r}{suggest(d.profile, self.profiles)}"))  # fmt: skip
        if errors:
            raise LocatedErrors(errors)
        return self


def _walk(cond: Condition, path: tuple = ()) -> Iterable[tuple[tuple, Condition]]:
    yield path, cond
    for key, children in (("all", cond.all or []), ("any", cond.any or [])):
        for j, child in enumerate(children):
            yield from _walk(child, path + (key, j))
    if cond.not_ is not None:
        yield from _walk(cond.not_, path + ("not",))


def policy_json_schema() -> dict[str, Any]:
    return Policy.model_json_schema(by_alias=True)
