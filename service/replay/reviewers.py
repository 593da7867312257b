"""Simulated reviewers: a replay's human side, working the service's real review queues.

One desk per language claims items through the API (``service.client.AsyncFloodgate``) at
that language's review capacity and resolves each with the post's ground truth: a post of
a violating kind gets ``remove`` when its worst category is high or severe in the policy's
``review.severity``, else ``limit_reach``; a benign one gets ``allow``. The reason names the
truth. Posts that are not this run's (a shared service) are left alone: their leases expire
back into their queues.

Capacity and time: a queue's ``capacity_per_hour`` (what ``GET /v1/review/queues`` says, from
the policy's pools) is read per *scenario* hour, so a desk resolves
``capacity x time_scale / 3600`` items per wall second. The service's fallback compares a
queue's depth with ``capacity x SLA`` items, which involves no clock, so the two agree: an
admitted item waits at most its SLA in scenario time. Within a language, the desk serves the
queue closest to its SLA first (expected wait / SLA), and each queue in its priority order.
A desk is one fluid reviewer: its capacity accrues into credit, one claim and verdict per
whole item of credit; when a claim finds the queue empty the credit is dropped (idle time is
not a reserve), so an item that arrives at an idle desk waits up to one item's time.

A scenario is a sample of the platform (``refugee_surge``: 180 posts a day at baseline), so
its reviewers are a sample too: ``scenario_pools`` turns the scenario's ``review_capacity``
into policy pools, and ``write_policy`` writes the policy with those pools for an embedded
run. The policy's own pools are at platform scale (600 Chinese reviewers); against a sample
they would never be busy.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from service.client import AsyncFloodgate, FloodgateError
from service.policy.model import SEVERITY_LEVELS

CLAIM_MAX = 50  # the API's largest claim
QUEUE_FIELDS = ("queue", "language", "reason", "waiting", "in_review", "capacity_per_hour",
                "expected_wait_s", "sla_s", "admission_limit", "over_sla", "enqueued",
                "overflowed")  # fmt: skip

# --------------------------------------------------------------------------- pure rules


def verdict_for(truth: Mapping[str, Any], severity: Mapping[str, str],
                default_severity: str = "medium") -> tuple[str, str]:  # fmt: skip
    """(action, reason) a reviewer who knows the ground truth gives."""
    cats = list(truth.get("categories") or ())
    kind = truth.get("kind", "?")
    if not cats:
        return "allow", f"ground truth: {kind}, no violation"
    worst = max((severity.get(c, default_severity) for c in cats), key=SEVERITY_LEVELS.index)
    action = "remove" if SEVERITY_LEVELS.index(worst) >= SEVERITY_LEVELS.index("high") else "limit_reach"
    return action, f"ground truth: {kind} ({', '.join(cats)}; {worst})"


def per_wall_second(per_scenario_hour: float, time_scale: float) -> float:
    return per_scenario_hour * time_scale / 3600.0


def language_capacity(queues: list[dict]) -> dict[str, float]:
    """Items per hour per language, from a queue listing (every queue of a language shows
    the language's capacity)."""
    out: dict[str, float] = {}
    for q in queues:
        out[q["language"]] = max(out.get(q["language"], 0.0), float(q["capacity_per_hour"] or 0))
    return out


def serving_order(queues: list[dict], language: str) -> list[str]:
    """The language's non-empty queues, the one closest to (or furthest past) its SLA first."""

    def urgency(q: dict) -> float:
        wait, sla = q.get("expected_wait_s"), q.get("sla_s")
        if wait is None:
            return math.inf
        return wait / sla if sla else wait

    mine = [q for q in queues if q["language"] == language and q["waiting"] > 0]
    return [q["queue"] for q in sorted(mine, key=lambda q: (-urgency(q), q["queue"]))]


def scenario_pools(capacity_per_hour: Mapping[str, float]) -> dict[str, dict]:
    """Policy pools (``review.pools``) giving each language code its capacity per hour; a
    language without capacity gets no pool ("other" is not a language: it gets none)."""
    pools = {}
    for code, per_h in sorted(capacity_per_hour.items()):
        if code == "other" or per_h <= 0:
            continue
        people = max(1, math.ceil(per_h / 10_000))  # the policy allows 10,000 items/h each
        pools[f"replay_{code}"] = {"reviewers": people, "items_per_hour": per_h / people,
                                   "languages": [code]}  # fmt: skip
    return pools


def policy_with_pools(raw: bytes | str, pools: dict[str, dict]) -> str:
    """The policy YAML with its review pools replaced (and no named reviewers: the replay's
    reviewers are the open principal or an admin key)."""
    doc = yaml.safe_load(raw)
    if not isinstance(doc, dict) or not isinstance(doc.get("review"), dict):
        return raw.decode("utf-8") if isinstance(raw, bytes) else raw
    doc["review"] = {**doc["review"], "pools": pools, "reviewers": {}}
    return yaml.safe_dump(doc, allow_unicode=True, sort_keys=False, width=100)


def write_policy(policy_path: Path, pools: dict[str, dict], out: Path) -> Path:
    """``policy_path`` with ``pools`` written into ``out`` (its included lists beside it);
    validated by loading it."""
    from service.policy import load_policy

    loaded = load_policy(policy_path)
    out.mkdir(parents=True, exist_ok=True)
    for name, content in loaded.includes.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(content)
    path = out / policy_path.name
    path.write_text(policy_with_pools(loaded.raw, pools), "utf-8")
    load_policy(path)
    return path


# --------------------------------------------------------------------------- the desks


@dataclass
class ReviewLog:
    """What the reviewers saw and did (epoch seconds; verdict times are Redis ms)."""

    samples: list[tuple[float, list[dict]]] = field(default_factory=list)
    verdicts: list[dict] = field(default_factory=list)
    foreign: int = 0  # claimed items that were not this run's posts (left to expire)
    severity: dict[str, str] = field(default_factory=dict)
    default_severity: str = "medium"
    policy_review: bool = False  # the live policy declares review
    states: dict[str, str] = field(default_factory=dict)  # queued, unresolved: state at the end
    service_report: dict = field(default_factory=dict)


class Desks:
    """Every language's desk, one tick at a time; ``idle`` once their queues are empty."""

    def __init__(self, fg: AsyncFloodgate, log: ReviewLog, truth: Callable[[str], dict | None],
                 time_scale: float, on_error: Callable[[str], None],
                 tick_s: float = 0.25) -> None:  # fmt: skip
        self.fg, self.log, self.truth = fg, log, truth
        self.time_scale, self.on_error, self.tick_s = time_scale, on_error, tick_s
        self.credit: dict[str, float] = {}
        self.last = time.monotonic()
        self.sem = asyncio.Semaphore(8)

    def latest(self) -> list[dict]:
        return self.log.samples[-1][1] if self.log.samples else []

    async def sample(self) -> list[dict]:
        try:
            body = await self.fg.review_queues()
        except (httpx.HTTPError, FloodgateError, ValueError) as exc:
            self.on_error(f"GET /v1/review/queues: {str(exc)[:120]}")
            return self.latest()
        queues = [{k: q.get(k) for k in QUEUE_FIELDS} for q in body.get("queues", [])]
        self.log.samples.append((time.time(), queues))
        return queues

    def idle(self) -> bool:
        """Nothing waits or is in review in a queue whose language someone reads."""
        caps = language_capacity(self.latest())
        return all(q["waiting"] + q["in_review"] == 0 for q in self.latest()
                   if caps.get(q["language"], 0) > 0)  # fmt: skip

    def clear_s(self) -> float:
        """Wall seconds the desks need for what waits now in the languages they read."""
        depth: dict[str, int] = {}
        for q in self.latest():
            depth[q["language"]] = depth.get(q["language"], 0) + q["waiting"] + q["in_review"]
        return max((n / per_wall_second(per_h, self.time_scale)
                    for lang, per_h in language_capacity(self.latest()).items()
                    if per_h > 0 and (n := depth.get(lang, 0))), default=0.0)  # fmt: skip

    async def tick(self) -> None:
        now = time.monotonic()
        dt, self.last = now - self.last, now
        queues = self.latest()
        for lang, per_h in sorted(language_capacity(queues).items()):
            if per_h <= 0:
                continue
            credit = self.credit.get(lang, 0.0) + per_wall_second(per_h, self.time_scale) * dt
            want = int(credit)
            done = await self._work(lang, queues, want) if want else 0
            credit -= done
            # capacity with nothing to review is idle time, not a reserve: an empty queue
            # starts the next item's time afresh
            self.credit[lang] = 0.0 if done < want else credit

    async def _work(self, lang: str, queues: list[dict], want: int) -> int:
        items: list[dict] = []
        for name in serving_order(queues, lang):
            while len(items) < want:
                ask = min(want - len(items), CLAIM_MAX)
                try:
                    got = (await self.fg.claim(ask, name))["items"]
                except (httpx.HTTPError, FloodgateError, ValueError) as exc:
                    self.on_error(f"POST /v1/review/claim: {str(exc)[:120]}")
                    got = []
                items += got
                if len(got) < ask:
                    break  # the queue is empty (or the claim failed)
        results = await asyncio.gather(*(self._resolve(item) for item in items))
        return sum(results)

    async def _resolve(self, item: dict) -> int:
        pid = item["post_id"]
        truth = self.truth(pid)
        if truth is None:
            self.log.foreign += 1
            return 1
        action, reason = verdict_for(truth, self.log.severity, self.log.default_severity)
        claimed = time.time()
        async with self.sem:
            try:
                out = await self.fg.resolve(pid, action, reason)
            except (httpx.HTTPError, FloodgateError, ValueError) as exc:
                self.on_error(f"POST /v1/review/items/{pid}/resolve: {str(exc)[:120]}")
                return 0
        self.log.verdicts.append({
            "post_id": pid, "language": item.get("language"), "queue": item.get("queue"),
            "automated": item.get("action"), "rules": item.get("rules") or [],
            "categories": item.get("categories") or [], "severity": item.get("severity"),
            "action": action, "at_ms": out["verdict"]["at"], "claimed_ts": claimed,
            "kind": truth.get("kind"), "truth_categories": list(truth.get("categories") or ()),
        })  # fmt: skip
        return 1


async def read_policy_review(fg: AsyncFloodgate, log: ReviewLog) -> None:
    """The live policy's review severities (what the reviewers' verdicts follow)."""
    from service.policy.parse import load_bundle

    with contextlib.suppress(httpx.HTTPError, FloodgateError, ValueError, KeyError, TypeError):
        live = (await fg.policy())["live"]["version"]
        review = load_bundle(await fg.policy_version(live)).policy.review
        if review is not None:
            log.policy_review = True
            log.severity, log.default_severity = dict(review.severity), review.default_severity


async def work(desks: Desks, stop: asyncio.Event, interval_s: float) -> None:
    """Sample the queues every ``interval_s`` and work them every tick until ``stop``."""
    next_sample = 0.0
    while not stop.is_set():
        if time.monotonic() >= next_sample:
            await desks.sample()
            next_sample = time.monotonic() + interval_s
        await desks.tick()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), desks.tick_s)
    await desks.sample()


async def final_states(fg: AsyncFloodgate, log: ReviewLog, queued: list[str]) -> None:
    """The review state of this run's queued posts that got no verdict, and the service's
    own review report."""
    resolved = {v["post_id"] for v in log.verdicts}
    sem = asyncio.Semaphore(16)

    async def one(pid: str) -> None:
        async with sem:
            try:
                found = await fg.decision(pid)
                log.states[pid] = ((found.get("review") or {}).get("state") or "none"
                                   if found else "pending")  # fmt: skip
            except (httpx.HTTPError, FloodgateError, ValueError) as exc:
                log.states[pid] = f"error: {type(exc).__name__}"

    await asyncio.gather(*(one(p) for p in queued if p not in resolved))
    with contextlib.suppress(httpx.HTTPError, FloodgateError, ValueError):
        log.service_report = await fg.review_report()
