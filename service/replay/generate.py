"""The synthetic influx: a deterministic, labelled stream of posts for a scenario.

Arrivals: within each phase, ordinary posts arrive as a Poisson process whose rate follows
the phase's (possibly ramping) rate times ``1 - spam.share``; spam bursts start as a second
Poisson process at ``rate * spam.share / mean burst size``, and each burst posts
``burst_size`` near-duplicates from one fresh spammer account, ``gap`` seconds apart. A
burst may run past the end of its phase (its posts carry their phase in ``truth``); posts
after the end of the scenario are dropped. Everything is drawn from ``random.Random``
seeded with strings derived from ``seed``: the same seed gives the same stream.

Ordinary posts: the language from the phase's mix, then the kind from that language's kind
mix, then a template of that language and kind from the corpus, its slots filled at random.
Authors: new (younger than ``new_account_days``) with the phase's ``new_share`` for the
language, else regular; brand ads come from brand accounts. An author is reused with
probability ``1 - 1/posts_per_author`` (same language and author kind, still young enough
when new), else created. An author keeps its market and locale.
"""

from __future__ import annotations

import heapq
import math
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from service.replay.corpus import Corpus, Template
from service.replay.kinds import KIND_CATEGORIES
from service.replay.scenario import Phase, Scenario

DAY = 86400.0
REGULAR_MAX_AGE_DAYS = 6 * 365.0


@dataclass(frozen=True)
class GeneratedPost:
    at_s: float  # scenario seconds since the scenario's start
    post: dict[str, Any]  # PostIn-shaped, JSON-ready (datetimes as ISO 8601 strings)
    truth: dict[str, Any]  # language, kind, categories, new_account, author_kind, phase, ...


def phase_at(scenario: Scenario, t_s: float) -> Phase:
    """The phase running at scenario time ``t_s`` (the last one at or after the end)."""
    return scenario.phases[scenario.phase_index(t_s)]


@dataclass
class _Author:
    id: str
    created_s: float  # scenario seconds (negative: before the start)
    market: str
    locale: str | None  # what the client sends as lang_hint; None: sends none
    kind: str  # regular | new | spammer | brand
    new: bool  # created young (may age out of "new" later)


@dataclass
class _Burst:
    no: int
    author: _Author
    phase: str
    language: str
    kind: str
    template: Template
    left: int
    gap: tuple[float, float]
    memo: dict = field(default_factory=dict)


class _Generator:
    def __init__(self, scenario: Scenario, seed: int, rate_scale: float, start: datetime,
                 id_prefix: str) -> None:  # fmt: skip
        self.sc = scenario
        self.corpus: Corpus = scenario.templates
        self.seed = seed
        self.rate_scale = rate_scale
        self.start = start
        self.id_prefix = id_prefix
        self.rng = random.Random(f"{seed}:content")
        self.author_rng = random.Random(f"{seed}:authors")
        self.pools: dict[tuple[str, str], list[_Author]] = {}
        self.n_posts = 0
        self.n_authors = 0
        self.n_bursts = 0

    # ------------------------------------------------------------------ arrivals

    def _poisson(
        self, stream: str, factor: Callable[[Phase], float]
    ) -> Iterator[tuple[float, int]]:
        """(time, phase index) of a Poisson process at ``factor(phase)`` x each phase's rate.

        Exact for a linear rate: unit-rate exponential steps of the cumulative intensity
        ``c1 u + c2 u^2`` are inverted in closed form (no thinning, no time steps).
        """
        for i, phase in enumerate(self.sc.phases):
            f = factor(phase)
            a, b, d = phase.start_rate * f, phase.end_rate * f, phase.duration
            total = (a + b) / 2 * d
            if total <= 0:
                continue
            rng = random.Random(f"{self.seed}:{stream}:{i}")
            c1, c2 = a, (b - a) / (2 * d)  # cumulative intensity: c1 u + c2 u^2
            cum = rng.expovariate(1.0)
            while cum < total:
                disc = max(c1 * c1 + 4 * c2 * cum, 0.0)
                u = 2 * cum / (c1 + math.sqrt(disc))
                yield phase.start_s + min(u, d), i
                cum += rng.expovariate(1.0)

    def run(self) -> Iterator[GeneratedPost]:
        scale = self.rate_scale
        ordinary = self._poisson("arrivals", lambda p: scale * (1 - p.spam_share))
        bursts = self._poisson(
            "bursts", lambda p: scale * p.spam_share / p.spam.mean_burst if p.spam else 0.0
        )
        heap: list[tuple[float, int, str, Any]] = []
        seq = 0

        def push(t: float, what: str, payload: Any) -> None:
            nonlocal seq
            heapq.heappush(heap, (t, seq, what, payload))
            seq += 1

        for source, name in ((ordinary, "post"), (bursts, "burst")):
            nxt = next(source, None)
            if nxt is not None:
                push(nxt[0], name, (source, nxt[1]))
        end = self.sc.duration
        gap_rng = random.Random(f"{self.seed}:gaps")
        while heap:
            t, _, what, payload = heapq.heappop(heap)
            if what == "post":
                source, i = payload
                yield self._ordinary(t, self.sc.phases[i])
                nxt = next(source, None)
                if nxt is not None:
                    push(nxt[0], "post", (source, nxt[1]))
            elif what == "burst":
                source, i = payload
                burst = self._new_burst(t, self.sc.phases[i])
                push(t, "spam", burst)
                nxt = next(source, None)
                if nxt is not None:
                    push(nxt[0], "burst", (source, nxt[1]))
            else:  # one post of a running burst
                burst = payload
                if t >= end:
                    continue
                yield self._spam(t, burst)
                burst.left -= 1
                if burst.left > 0:
                    push(t + gap_rng.uniform(*burst.gap), "spam", burst)

    # ------------------------------------------------------------------ content

    def _ordinary(self, t: float, phase: Phase) -> GeneratedPost:
        rng = self.rng
        lang = _choose(rng, phase.languages)
        kind = _choose(rng, phase.kinds_for(lang))
        template = self.corpus.pick(lang, kind, rng)
        new = rng.random() < phase.authors.new_share_for(lang)
        author_kind = "brand" if kind == "brand_ad" else ("new" if new else "regular")
        author = self._author(t, lang, author_kind, new, phase.authors.posts_per_author)
        text = template.render(rng)
        return self._post(t, phase.name, template, lang, kind, text, author, burst=None)

    def _new_burst(self, t: float, phase: Phase) -> _Burst:
        assert phase.spam is not None
        rng = self.rng
        lang = _choose(rng, phase.spam.languages)
        kind = _choose(rng, phase.spam.kinds)
        template = self.corpus.pick(lang, kind, rng)
        author = self._make_author(t, lang, "spammer", new=True)
        self.n_bursts += 1
        size = rng.randint(*phase.spam.burst_size)
        return _Burst(self.n_bursts, author, phase.name, lang, kind, template, size, phase.spam.gap)

    def _spam(self, t: float, burst: _Burst) -> GeneratedPost:
        text = burst.template.render(self.rng, memo=burst.memo, volatile=self.corpus.volatile)
        return self._post(t, burst.phase, burst.template, burst.language, burst.kind, text,
                          burst.author, burst=burst.no)  # fmt: skip

    def _author(self, t: float, lang: str, kind: str, new: bool, per_author: float) -> _Author:
        rng = self.author_rng
        key = (lang, f"{kind}:{'new' if new else 'old'}")
        pool = self.pools.setdefault(key, [])
        young = self.sc.new_account_days * DAY
        if pool and rng.random() >= 1.0 / per_author:
            author = rng.choice(pool)
            if not new or t - author.created_s < young:
                return author
            pool.remove(author)  # aged out of "new": no longer drawn as a new account
        author = self._make_author(t, lang, kind, new)
        pool.append(author)
        return author

    def _make_author(self, t: float, lang: str, kind: str, new: bool) -> _Author:
        rng = self.author_rng
        young = self.sc.new_account_days * DAY
        if new:  # created a little before its first post, young enough for a while
            created = t - rng.uniform(60.0, young * 0.5)
        else:
            created = t - rng.uniform(young * 1.5, REGULAR_MAX_AGE_DAYS * DAY)
        market = _choose(rng, self.sc.markets[lang])
        locales = self._locales(lang, rng)
        locale = rng.choice(locales) if rng.random() < self.sc.lang_hint_share else None
        self.n_authors += 1
        author_id = f"{self.id_prefix}-u{self.n_authors:06d}{rng.getrandbits(16):04x}"
        return _Author(author_id, created, market, locale, kind, new)

    def _locales(self, lang: str, rng: random.Random) -> tuple[str, ...]:
        # the locale of a random template of that language (the "other" group mixes several)
        kinds = [k for (lg, k) in self.corpus.by_kind if lg == lang]
        return self.corpus.pick(lang, rng.choice(sorted(kinds)), rng).locales

    def _post(self, t: float, phase: str, template: Template, lang: str, kind: str, text: str,
              author: _Author, burst: int | None) -> GeneratedPost:  # fmt: skip
        self.n_posts += 1
        at = self.start + timedelta(seconds=t)
        post: dict[str, Any] = {
            "post_id": f"{self.id_prefix}-{self.n_posts:08d}",
            "text": text,
            "author": {
                "id": author.id,
                "created_at": _iso(self.start + timedelta(seconds=author.created_s)),
            },
            "market": author.market,
            "created_at": _iso(at),
        }
        if author.locale and (lang != "other" or author.locale.split("-")[0] == template.code):
            post["lang_hint"] = author.locale
        age_days = (t - author.created_s) / DAY
        truth = {
            "language": lang,
            # ISO code of the text; "und" where it has no letters (emoji-only posts)
            "code": template.code if any(ch.isalpha() for ch in text) else "und",
            "kind": kind,
            "categories": list(KIND_CATEGORIES[kind]),
            "new_account": age_days < self.sc.new_account_days,
            "account_age_days": round(age_days, 3),
            "author_kind": author.kind,
            "phase": phase,
            "spam_burst": burst,
            "template": template.id,
        }
        return GeneratedPost(at_s=t, post=post, truth=truth)


def _choose(rng: random.Random, mix: dict[str, float]) -> str:
    x = rng.random() * sum(mix.values())
    for key, share in mix.items():
        x -= share
        if x < 0:
            return key
    return next(k for k, s in reversed(mix.items()) if s > 0)


def _iso(at: datetime) -> str:
    return at.isoformat(timespec="milliseconds")


def generate(scenario: Scenario, seed: int, rate_scale: float = 1.0,
             start_time: datetime | None = None, *, id_prefix: str | None = None,
             ) -> Iterator[GeneratedPost]:  # fmt: skip
    """The scenario's posts in order of ``at_s``, deterministic for a given ``seed``.

    ``rate_scale`` multiplies every rate (durations stay); ``start_time`` is the wall date
    of scenario time 0 in the posts' ``created_at`` (default: the scenario's ``start``);
    ``id_prefix`` starts post and author ids (default ``sim<seed>``).
    """
    if rate_scale < 0 or not math.isfinite(rate_scale):
        raise ValueError(f"rate_scale must be a finite number >= 0 (got {rate_scale})")
    start = start_time or scenario.start
    if start.tzinfo is None:
        start = start.replace(tzinfo=UTC)
    prefix = id_prefix if id_prefix is not None else f"sim{seed}"
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,100}", prefix):
        raise ValueError(f"id_prefix {prefix!r}: letters, digits and _.:- (it starts post ids)")
    return _Generator(scenario, seed, rate_scale, start, prefix).run()
