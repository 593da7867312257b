"""Policy: the YAML operators edit, validated with file:line errors, and its pure evaluation.

A policy names categories (each with a score threshold, optional per-language overrides,
and a description plus example texts in several languages that the zero-shot scorer
embeds), keyword lists, the markets it decides for, and rules. A rule is a condition tree
(all / any / not over language, script, mixed-language, category scores, keyword hits,
account age and market) and an action. Evaluation is a pure function of the post's facts
and the policy: no Redis, no model, no clock.

The decision for a market is the most severe action among the rules that match there;
every matching rule is listed in the reasons. A post gets one outcome per market, and its
own market's outcome is its ``action``.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

ACTIONS = ("allow", "label", "limit_reach", "review", "remove")
SEVERITY = {a: i for i, a in enumerate(ACTIONS)}
Action = Literal["allow", "label", "limit_reach", "review", "remove"]
LANG_CODE = r"^(und|[a-z]{2,3})$"
EXAMPLE_KEY = r"^(und|mixed|[a-z]{2,3})$"  # examples may also be filed as mixed-language


# --------------------------------------------------------------------------- model


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Category(_Strict):
    description: str = Field(min_length=3)
    threshold: float = Field(ge=0.0, le=1.0)
    # e.g. {"en": 0.8}: one threshold per language where the scorer behaves differently
    thresholds: dict[
        Annotated[str, Field(pattern=LANG_CODE)], Annotated[float, Field(ge=0, le=1)]
    ] = {}
    # language -> example texts; the zero-shot scorer embeds these
    examples: dict[
        Annotated[str, Field(pattern=EXAMPLE_KEY)], list[Annotated[str, Field(min_length=1)]]
    ] = {}

    def threshold_for(self, language: str) -> float:
        return self.thresholds.get(language, self.threshold)


class KeywordList(_Strict):
    description: str = ""
    terms: list[Annotated[str, Field(min_length=1)]] = []
    regexes: list[Annotated[str, Field(min_length=1)]] = []

    @field_validator("regexes")
    @classmethod
    def _compiles(cls, value: list[str]) -> list[str]:
        for pattern in value:
            try:
                re.compile(f"(?:{pattern})")  # as the matcher joins it: "(?i)x" fails there
            except re.error as exc:
                raise ValueError(f"bad regex {pattern!r}: {exc}") from exc
        return value


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

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _not_empty(self) -> Condition:
        if not self.model_fields_set:
            raise ValueError("empty condition")
        # `language: null` would silently match every post: refuse it
        nulls = sorted(n for n in self.model_fields_set if getattr(self, n) is None)
        if nulls:
            raise ValueError(f"condition keys without a value: {', '.join(nulls)}")
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
                        f"{_suggest(cond.category, self.categories)}",
                    ))  # fmt: skip
                if cond.keywords and cond.keywords not in self.keywords:
                    errors.append((
                        path + ("keywords",),
                        f"rules[{i}] ({rule.id}): unknown keyword list {cond.keywords!r}"
                        f"{_suggest(cond.keywords, self.keywords)}",
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
            raise _LocatedErrors(errors)
        return self


class _LocatedErrors(ValueError):
    """Several errors found after parsing, each with its path in the document (for file:line)."""

    def __init__(self, located: list[tuple[tuple, str]]) -> None:
        super().__init__("; ".join(msg for _, msg in located))
        self.located = located


def _walk(cond: Condition, path: tuple = ()) -> Iterable[tuple[tuple, Condition]]:
    yield path, cond
    for key, children in (("all", cond.all or []), ("any", cond.any or [])):
        for j, child in enumerate(children):
            yield from _walk(child, path + (key, j))
    if cond.not_ is not None:
        yield from _walk(cond.not_, path + ("not",))


def _suggest(name: str, options: Iterable[str]) -> str:
    import difflib

    close = difflib.get_close_matches(name, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


# --------------------------------------------------------------------------- loading


class PolicyError(ValueError):
    """A policy that cannot be used; ``errors`` are ``file:line:col: message`` strings."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


@dataclass(frozen=True)
class LoadedPolicy:
    policy: Policy
    version: str  # sha256 of the file's bytes, shortened
    source: str
    matchers: dict[str, KeywordMatcher] = field(repr=False)

    @property
    def name(self) -> str:
        return self.policy.name


def load_policy(path: Path | str) -> LoadedPolicy:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise PolicyError([f"{path}: cannot read: {exc.strerror}"]) from exc
    return parse_policy(raw, source=str(path))


def parse_policy(raw: bytes | str, source: str = "<policy>") -> LoadedPolicy:
    data = raw.encode() if isinstance(raw, str) else raw
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1  # in bytes
        raise PolicyError([f"{source}:{line}:{col}: not valid UTF-8 at byte {exc.start}"]) from exc
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        raise PolicyError([f"{where}: YAML syntax: {getattr(exc, 'problem', exc)}"]) from exc
    if not isinstance(doc, dict):
        raise PolicyError([f"{source}:1:1: a policy is a mapping (name, categories, rules, ...)"])
    duplicates = _duplicate_keys(node, source)
    if duplicates:
        raise PolicyError(duplicates)
    lines = _positions(node)
    try:
        policy = Policy.model_validate(doc)
    except ValidationError as exc:
        raise PolicyError(_format_errors(exc, lines, source)) from None
    version = hashlib.sha256(data).hexdigest()[:16]
    matchers = {name: KeywordMatcher.build(kl) for name, kl in policy.keywords.items()}
    return LoadedPolicy(policy=policy, version=version, source=source, matchers=matchers)


def _duplicate_keys(node: yaml.Node | None, source: str) -> list[str]:
    """YAML lets a later key silently replace an earlier one; in a policy that hides edits."""
    errors: list[str] = []
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key, value in node.value:
            name = str(key.value)
            if name in seen:
                errors.append(f"{source}:{key.start_mark.line + 1}:{key.start_mark.column + 1}: "
                              f"duplicate key {name!r} (first on line {seen[name]})")  # fmt: skip
            else:
                seen[name] = key.start_mark.line + 1
            errors += _duplicate_keys(value, source)
    elif isinstance(node, yaml.SequenceNode):
        for value in node.value:
            errors += _duplicate_keys(value, source)
    return errors


def _positions(node: yaml.Node | None, path: tuple = ()) -> dict[tuple, tuple[int, int]]:
    """Map every key path in the YAML document to its (line, column), 1-based."""
    out: dict[tuple, tuple[int, int]] = {}
    if node is None:
        return out
    out[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            child = path + (key.value,)
            out.update(_positions(value, child))
            out[child + ("<key>",)] = (key.start_mark.line + 1, key.start_mark.column + 1)
    elif isinstance(node, yaml.SequenceNode):
        for i, value in enumerate(node.value):
            out.update(_positions(value, path + (i,)))
    return out


def _format_errors(exc: ValidationError, lines: dict, source: str) -> list[str]:
    messages = []
    for err in _expand(exc.errors()):
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        # pydantic reports aliases ("not") already; find the deepest located prefix
        pos = None
        for cut in range(len(loc), -1, -1):
            key = loc[:cut]
            if err["type"] == "extra_forbidden" and cut == len(loc) and key + ("<key>",) in lines:
                pos = lines[key + ("<key>",)]
                break
            if key in lines:
                pos = lines[key]
                break
        where = f"{source}:{pos[0]}:{pos[1]}" if pos else source
        dotted = ".".join(str(p) for p in loc) or "(top)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = f"unknown key {loc[-1]!r}{_suggest_field(loc)}"
        messages.append(f"{where}: {dotted}: {msg}")
    return messages


def _expand(errors: list[dict]) -> Iterable[dict]:
    # a validator's _LocatedErrors become one error each, at its own path
    for err in errors:
        located = getattr((err.get("ctx") or {}).get("error"), "located", None)
        if located is None:
            yield err
            continue
        for path, msg in located:
            yield {**err, "loc": tuple(err["loc"]) + path, "msg": msg}


def _suggest_field(loc: tuple) -> str:
    # nearest valid key for a typo, looked up on the model that owns the key
    owners = {
        "rules": Rule,
        "categories": Category,
        "keywords": KeywordList,
        "when": Condition,
        "all": Condition,
        "any": Condition,
        "not": Condition,
    }
    model: type[BaseModel] = Policy
    for part in loc[:-1]:
        if isinstance(part, str) and part in owners:
            model = owners[part]
    names = {f.alias or n for n, f in model.model_fields.items()}
    return _suggest(str(loc[-1]), names)


# --------------------------------------------------------------------------- matching


def normalize_text(text: str) -> str:
    """Fold the text for keyword matching: NFKC (full-width -> half-width), lower case."""
    return unicodedata.normalize("NFKC", text).casefold()


# a word character that is not CJK (kana, CJK ideographs, hangul)
_LATIN_WORD = r"[^\W\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af]"


@dataclass(frozen=True)
class KeywordMatcher:
    terms: tuple[str, ...]
    pattern: re.Pattern | None

    @classmethod
    def build(cls, kl: KeywordList) -> KeywordMatcher:
        terms = tuple(sorted({normalize_text(t) for t in kl.terms}, key=len, reverse=True))
        parts = []
        for term in terms:
            # Latin words match on word boundaries ("ass" must not fire on "class");
            # CJK has no spaces, so CJK terms match anywhere.
            escaped = re.escape(term)
            # ("加我telegram": a CJK neighbour is a boundary, it is not part of the Latin word)
            parts.append(
                rf"(?<!{_LATIN_WORD}){escaped}(?!{_LATIN_WORD})" if term.isascii() else escaped
            )
        parts += [f"(?:{r})" for r in kl.regexes]
        return cls(terms, re.compile("|".join(parts), re.IGNORECASE) if parts else None)

    def find(self, folded_text: str) -> list[str]:
        if self.pattern is None:
            return []
        return sorted({m.group(0) for m in self.pattern.finditer(folded_text)})


# --------------------------------------------------------------------------- evaluation


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


@dataclass(frozen=True)
class RuleMatch:
    rule_id: str
    action: str
    labels: tuple[str, ...]
    queue: str | None
    categories: tuple[tuple[str, float], ...]  # categories whose score conditions fired
    keywords: tuple[tuple[str, tuple[str, ...]], ...]


@dataclass(frozen=True)
class Outcome:
    market: str
    action: str
    matches: tuple[RuleMatch, ...]
    labels: tuple[str, ...]
    queue: str | None


class _Trace:
    __slots__ = ("categories", "keywords")

    def __init__(self) -> None:
        self.categories: dict[str, float] = {}
        self.keywords: dict[str, tuple[str, ...]] = {}


def _holds(
    c: Condition, f: Facts, lp: LoadedPolicy, folded: str, trace: _Trace, cache: dict
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
            cache[c.keywords] = tuple(lp.matchers[c.keywords].find(folded))
        hits = cache[c.keywords]
        if not hits:
            return False
        trace.keywords[c.keywords] = hits
    if c.all is not None and not all(_holds(x, f, lp, folded, trace, cache) for x in c.all):
        return False
    # `any` evaluates every branch (no short-circuit) so reasons list all that fired
    if c.any is not None and not [x for x in c.any if _holds(x, f, lp, folded, trace, cache)]:
        return False
    return not (c.not_ is not None and _holds(c.not_, f, lp, folded, _Trace(), cache))


def evaluate(lp: LoadedPolicy, facts: Facts) -> dict[str, Outcome]:
    """Outcome per market of ``lp`` for a post with ``facts`` (its own market included)."""
    folded = normalize_text(facts.text)
    cache: dict[str, tuple[str, ...]] = {}
    outcomes: dict[str, Outcome] = {}
    markets = list(lp.policy.markets)
    if facts.market not in markets:
        markets.append(facts.market)
    for market in markets:
        f = Facts(**{**facts.__dict__, "market": market})
        matches = []
        for rule in lp.policy.rules:
            if rule.markets is not None and market not in rule.markets:
                continue
            trace = _Trace()
            if _holds(rule.when, f, lp, folded, trace, cache):
                matches.append(
                    RuleMatch(
                        rule_id=rule.id,
                        action=rule.action,
                        labels=tuple(rule.labels),
                        queue=rule.queue
                        or (f"review:{f.language}" if rule.action == "review" else None),
                        categories=tuple(sorted(trace.categories.items())),
                        keywords=tuple(sorted(trace.keywords.items())),
                    )
                )
        priority = {r.id: r.priority for r in lp.policy.rules}
        matches.sort(key=lambda m: (-SEVERITY[m.action], -priority[m.rule_id], m.rule_id))
        action = matches[0].action if matches else "allow"
        labels = tuple(dict.fromkeys(label for m in matches for label in m.labels))
        queue = (
            next((m.queue for m in matches if m.action == "review"), None)
            if action == "review"
            else None
        )
        outcomes[market] = Outcome(market, action, tuple(matches), labels, queue)
    return outcomes


def policy_json_schema() -> dict[str, Any]:
    return Policy.model_json_schema(by_alias=True)
