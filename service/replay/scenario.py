"""Influx scenarios: the YAML model, validated with ``file:line:col: field: message`` errors.

A scenario is a list of phases over scenario time. Each phase has a duration, a total
arrival rate (constant, or ramping linearly from ``start`` to ``end``), the language mix and
the post-kind mix of ordinary posts (optionally a kind mix per language), the authors (share
of new accounts, posts per author) and spam bursts (a share of the phase's posts that come
from new accounts posting near-duplicates in quick succession). Scenario-wide: the start
date, how scenario time maps to wall time (``time_scale``), which market authors of each
language post in, and the human review capacity per language.

Units: durations are seconds or strings such as ``"30s"``, ``"6h"``, ``"1d"``; rates are
posts per second or strings such as ``"180/d"``, ``"7.5/h"``, ``"3/s"``; ``time_scale`` is a
number (scenario seconds per wall second) or a ratio of durations such as ``"1d/1min"``.

The language groups, post kinds and each kind's ground-truth categories are in ``kinds``.
"""

from __future__ import annotations

import functools
import re
from bisect import bisect_right
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from service.replay.corpus import Corpus, CorpusError, load_corpus
from service.replay.kinds import LANGUAGES, Kind, Language, ScenarioError
from service.yamlsource import LocatedErrors, format_errors, read_yaml

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
DEFAULT_SCENARIO = REPO_ROOT / "seeds" / "scenarios" / "refugee_surge.yaml"

SHARE_TOLERANCE = 1e-3  # shares must sum to 1 within this

# --------------------------------------------------------------------------- units

_UNITS = {"ms": 0.001, "s": 1.0, "sec": 1.0, "min": 60.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)?\s*([a-z]+)\s*$")


def parse_duration(value: Any) -> Any:
    """Seconds from a number or a string like "90s", "6h", "1.5d", "min" (= 1 min)."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like '6h'")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value.lower())
        if m and m.group(2) in _UNITS:
            return float(m.group(1) or 1) * _UNITS[m.group(2)]
        raise ValueError(f"bad duration {value!r}: use seconds or a number with ms/s/min/h/d")
    return value


def parse_rate(value: Any) -> Any:
    """Per-second rate from a number or a string like "180/d", "7.5/h", "3/s"."""
    if isinstance(value, bool):
        raise ValueError("a rate is a number per second or a string like '120/h'")
    if isinstance(value, str):
        count, sep, per = value.partition("/")
        try:
            n = float(count)
        except ValueError:
            n = None
        if not sep or n is None:
            raise ValueError(f"bad rate {value!r}: use a number per second or 'N/unit' (N/h, N/d)")
        return n / parse_duration(per)
    return value


def parse_time_scale(value: Any) -> Any:
    """Scenario seconds per wall second, from a number or a ratio like "1d/1min"."""
    if isinstance(value, str) and "/" in value:
        scen, _, wall = value.partition("/")
        return parse_duration(scen) / parse_duration(wall)
    return value


Seconds = Annotated[float, BeforeValidator(parse_duration), Field(gt=0)]
Rate = Annotated[float, BeforeValidator(parse_rate), Field(ge=0)]
Share = Annotated[float, Field(ge=0, le=1)]


def _sums_to_one(value: dict[str, float]) -> dict[str, float]:
    total = sum(value.values())
    if abs(total - 1.0) > SHARE_TOLERANCE:
        raise ValueError(f"shares must sum to 1 (they sum to {total:.4g})")
    return value


LanguageMix = Annotated[dict[Language, Share], Field(min_length=1), AfterValidator(_sums_to_one)]
KindMix = Annotated[dict[Kind, Share], Field(min_length=1), AfterValidator(_sums_to_one)]
MarketMix = Annotated[
    dict[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$")], Share],
    Field(min_length=1),
    AfterValidator(_sums_to_one),
]


# --------------------------------------------------------------------------- model


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RampRate(_Strict):
    start: Rate
    end: Rate


def _rate_or_ramp(value: Any) -> Any:
    """A constant rate becomes {start: r, end: r}; a mapping is a linear ramp."""
    if isinstance(value, dict):
        return value
    rate = parse_rate(value)
    if not isinstance(rate, int | float):
        raise ValueError(
            "a rate is posts per second, 'N/unit' (N/h, N/d) or {start: ..., end: ...}"
        )
    return {"start": rate, "end": rate}


def _share_or_map(value: Any) -> Any:
    if isinstance(value, dict):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not 0 <= value <= 1:
            raise ValueError(f"a share is between 0 and 1 (got {value})")
        return {"default": value}
    raise ValueError("a share between 0 and 1, or one per language ({en: 0.9, default: 0.05})")


class Authors(_Strict):
    # share of ordinary posts written by accounts younger than `new_account_days`: one
    # number, or one per language (missing languages take `default`)
    new_share: Annotated[
        dict[Language | Literal["default"], Share], BeforeValidator(_share_or_map)
    ]  # fmt: skip
    # mean posts per author: each post is by a fresh account with probability 1/this,
    # else by an earlier author of the same language and kind
    posts_per_author: float = Field(default=1.0, ge=1.0)

    @field_validator("new_share")
    @classmethod
    def _default_present(cls, value: dict) -> dict:
        missing = [lang for lang in LANGUAGES if lang not in value and "default" not in value]
        if missing:
            raise ValueError(f"no share for {', '.join(missing)}: add them or a 'default'")
        return value

    def new_share_for(self, language: str) -> float:
        return self.new_share.get(language, self.new_share.get("default", 0.0))


class Spam(_Strict):
    """Bursts of near-duplicate posts from fresh spammer accounts."""

    share: float = Field(ge=0, lt=1)  # of the phase's posts (the total rate includes them)
    burst_size: tuple[int, int] = (5, 20)  # posts per burst, uniform in [min, max]
    gap: tuple[Seconds, Seconds] = (5.0, 60.0)  # scenario seconds between a burst's posts
    languages: LanguageMix
    kinds: KindMix

    @field_validator("burst_size", "gap")
    @classmethod
    def _ordered(cls, value: tuple) -> tuple:
        if value[0] > value[1]:
            raise ValueError(f"[min, max] with min <= max (got {list(value)})")
        if value[0] <= 0:
            raise ValueError(f"values must be positive (got {list(value)})")
        return value

    @property
    def mean_burst(self) -> float:
        return (self.burst_size[0] + self.burst_size[1]) / 2


class Phase(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str = ""
    duration: Seconds
    # posts per scenario second, spam bursts included: constant, or {start, end} (linear)
    rate: Annotated[RampRate, BeforeValidator(_rate_or_ramp)]
    languages: LanguageMix
    kinds: KindMix
    # a kind mix per language replaces `kinds` for that language (e.g. English brand ads)
    kinds_by_language: dict[Language, KindMix] = {}
    authors: Authors
    spam: Spam | None = None

    _start_s: float = PrivateAttr(default=0.0)

    @property
    def start_s(self) -> float:
        return self._start_s

    @property
    def end_s(self) -> float:
        return self._start_s + self.duration

    @property
    def start_rate(self) -> float:
        return self.rate.start

    @property
    def end_rate(self) -> float:
        return self.rate.end

    def expected_posts(self, rate_scale: float = 1.0) -> float:
        return (self.start_rate + self.end_rate) / 2 * self.duration * rate_scale

    @property
    def spam_share(self) -> float:
        return self.spam.share if self.spam else 0.0

    def kinds_for(self, language: str) -> dict[str, float]:
        return self.kinds_by_language.get(language, self.kinds)  # type: ignore[arg-type]

    def expected_kind_shares(self) -> dict[str, float]:
        """Kind shares of the phase's ordinary (non-spam) posts, over all languages."""
        out: dict[str, float] = {}
        for lang, p in self.languages.items():
            for kind, q in self.kinds_for(lang).items():
                out[kind] = out.get(kind, 0.0) + p * q
        return out


class Scenario(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str = ""
    start: datetime = datetime(2025, 1, 12, tzinfo=UTC)  # created_at of t = 0
    # scenario seconds per wall second: 1440 = "a day in a minute"
    time_scale: Annotated[float, BeforeValidator(parse_time_scale), Field(gt=0)] = 1.0
    new_account_days: float = Field(default=3.0, gt=0)  # younger accounts are "new"
    lang_hint_share: Share = 0.5  # share of authors whose client sends a lang_hint
    # market each language's authors post in (an author keeps one market)
    markets: dict[Language, MarketMix]
    # human reviews per scenario hour, per detected language code ("zh", "en", ...;
    # "other" for the rest), at the scenario's own sampling scale (see rate_scale)
    review_capacity: dict[
        Annotated[str, Field(pattern=r"^(other|und|[a-z]{2,3})$")], Rate
    ] = {}  # fmt: skip
    corpus: str = "../corpus"  # directory of seed templates, relative to this file
    phases: list[Phase] = Field(min_length=1)

    _ends: list[float] = PrivateAttr(default_factory=list)
    _corpus: Any = PrivateAttr(default=None)
    _source: str = PrivateAttr(default="<scenario>")

    @model_validator(mode="after")
    def _layout(self) -> Scenario:
        errors = []
        seen: dict[str, int] = {}
        for i, phase in enumerate(self.phases):
            if phase.name in seen:
                errors.append(((
                    "phases", i, "name"), f"duplicate phase name {phase.name!r} (also phase {seen[phase.name]})"))  # fmt: skip
            seen.setdefault(phase.name, i)
        for lang in LANGUAGES:
            if lang not in self.markets:
                errors.append((("markets",), f"no market mix for language {lang!r}"))
        if errors:
            raise LocatedErrors(errors)
        t = 0.0
        self._ends = []
        for phase in self.phases:
            phase._start_s = t
            t += phase.duration
            self._ends.append(t)
        return self

    @field_validator("start")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        return value if value.tzinfo else value.replace(tzinfo=UTC)

    @property
    def duration(self) -> float:
        return self._ends[-1]

    @property
    def source(self) -> str:
        return self._source

    def phase_index(self, t_s: float) -> int:
        if t_s < 0:
            raise ValueError(f"scenario time {t_s} is before the start")
        return min(bisect_right(self._ends, t_s), len(self.phases) - 1)

    def wall_seconds(self, t_s: float, time_scale: float | None = None) -> float:
        """Wall-clock offset at which scenario time ``t_s`` is replayed."""
        return t_s / (time_scale or self.time_scale)

    def review_capacity_per_hour(self, code: str, rate_scale: float = 1.0) -> float:
        """Reviews per scenario hour for a detected language code, scaled with the posts."""
        per_s = self.review_capacity.get(code, self.review_capacity.get("other", 0.0))
        return per_s * 3600.0 * rate_scale

    @property
    def corpus_dir(self) -> Path:
        """``corpus`` resolved against the scenario file's folder (else seeds/scenarios)."""
        source = Path(self._source)
        base = source.parent if source.is_file() else DEFAULT_SCENARIO.parent
        return (base / self.corpus).resolve()

    @property
    def templates(self) -> Corpus:
        """The seed corpus this scenario draws from (read once, then cached)."""
        if self._corpus is None:
            self._corpus = load_corpus(self.corpus_dir)
        return self._corpus


# --------------------------------------------------------------------------- loading


def load_scenario(path: Path | str = DEFAULT_SCENARIO) -> Scenario:
    """Read and validate a scenario and its corpus; raises ``ScenarioError``."""
    path = Path(path)
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError([f"{path}: cannot read: {exc}"]) from exc
    scenario = parse_scenario(text, source=str(path))
    check_corpus(scenario)
    return scenario


def parse_scenario(text: str, source: str = "<scenario>") -> Scenario:
    doc, lines = read_yaml(
        text, source, "a scenario is a mapping (name, markets, phases, ...)", ScenarioError
    )
    try:
        scenario = Scenario.model_validate(doc)
    except ValidationError as exc:
        raise ScenarioError(
            format_errors(exc, lines, source, Scenario, _owners(), _UNION_TAGS)
        ) from None
    scenario._source = source
    return scenario


def check_corpus(scenario: Scenario) -> None:
    """Every (language, kind) a scenario can draw must have templates in the corpus."""
    try:
        corpus = scenario.templates
    except CorpusError as exc:
        raise ScenarioError([f"{scenario.source}: corpus: {e}" for e in exc.errors]) from None
    errors = []
    for i, phase in enumerate(scenario.phases):
        pairs = [((f"phases.{i}.kinds_by_language.{lang}" if lang in phase.kinds_by_language
                   else f"phases.{i}.kinds"), lang, kind)
                 for lang, p in phase.languages.items() if p > 0
                 for kind, q in phase.kinds_for(lang).items() if q > 0]  # fmt: skip
        if phase.spam and phase.spam.share > 0:
            pairs += [(f"phases.{i}.spam.kinds", lang, kind)
                      for lang, p in phase.spam.languages.items() if p > 0
                      for kind, q in phase.spam.kinds.items() if q > 0]  # fmt: skip
        for field, lang, kind in pairs:
            if not corpus.has(lang, kind):
                errors.append(f"{scenario.source}: {field}.{kind}: the corpus ({corpus.root}) has "
                              f"no {lang!r} templates of kind {kind!r}")  # fmt: skip
    if errors:
        raise ScenarioError(sorted(set(errors)))


_UNION_TAGS = ("float", "int", "str", "RampRate", "Spam")


@functools.cache
def _owners() -> dict[str, type[BaseModel]]:
    return {"phases": Phase, "authors": Authors, "spam": Spam, "rate": RampRate}
