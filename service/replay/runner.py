"""Replay runner: drive a Floodgate service through its HTTP API with a generated influx.

``run_replay`` sends a scenario's posts at their scheduled wall times (``at_s /
time_scale``), everything due in the current tick (100 ms) in batches of at most
``max_batch`` posts, with at most ``max_in_flight`` batch requests open at once (when the
service is slower than that, sending falls behind schedule: the report shows by how much).
Beside the sender, two pollers run: the decision feed (``GET /v1/decisions``, every
decision of this run, repeats included, by post-id prefix) and ``GET /v1/stats`` (about
once a second); and the simulated reviewers (``service.replay.reviewers``) sample the review
queues about once a second and work them at each language's capacity. After the last send
it drains: it waits until every accepted post has a decision and the reviewers have emptied
the queues they can read, or ``drain_timeout`` passes. Everything observed is returned raw in a
``RunData``; ``service.replay.analysis`` turns it into figures, ``plots`` and ``pages``
into PNG plots and the HTML report.

The service it drives is any Floodgate (``--target``) or ``processes.EmbeddedService``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from service.client import AsyncFloodgate, FloodgateError
from service.replay.generate import GeneratedPost, generate
from service.replay.metrics import percentile
from service.replay.reviewers import Desks, ReviewLog, final_states, read_policy_review, work
from service.replay.scenario import DEFAULT_SCENARIO, REPO_ROOT, Scenario, load_scenario

SCENARIO_DIRS = (REPO_ROOT / "scenarios", REPO_ROOT / "seeds" / "scenarios")


def resolve_scenario(name: str | None) -> Path:
    """A scenario file path, or a bare name looked up in scenarios/ and seeds/scenarios/."""
    if not name:
        return DEFAULT_SCENARIO
    path = Path(name)
    if path.exists():
        return path
    for d in SCENARIO_DIRS:
        for cand in (d / name, d / f"{name}.yaml", d / f"{name}.yml"):
            if cand.exists():
                return cand
    known = sorted({p.stem for d in SCENARIO_DIRS if d.is_dir() for p in d.glob("*.y*ml")})
    raise FileNotFoundError(f"no scenario {name!r} (known: {', '.join(known)})")


# --------------------------------------------------------------------------- the run


@dataclass
class ReplayOptions:
    seed: int = 1
    rate_scale: float = 1.0
    time_scale: float | None = None  # None: the scenario's
    duration: float | None = None  # cap on sending, wall seconds
    tick_s: float = 0.1
    max_batch: int = 500
    max_in_flight: int = 8
    drain_timeout: float = 120.0
    stats_interval_s: float = 1.0
    id_prefix: str | None = None
    progress: bool = True
    label: str = ""
    request_timeout: float = 30.0
    reviewers: bool = True  # simulated reviewers work the review queues
    review_drain_s: float = 30.0  # after the last decision: how long they may take to finish


@dataclass
class RunData:
    """What one replay observed, raw (epoch seconds everywhere)."""

    scenario: str
    target: str
    options: dict[str, Any]
    id_prefix: str
    time_scale: float
    t0: float = 0.0
    scheduled: int = 0  # posts the scenario had for the run's window
    # post id -> (scheduled wall offset, request start epoch, truth)
    sent: dict[str, tuple[float, float, dict]] = field(default_factory=dict)
    accepted: dict[str, float] = field(default_factory=dict)  # post id -> request start epoch
    resubmitted: int = 0  # API answered "duplicate" for a fresh id (seen before)
    refused: int = 0  # posts the API refused for a full backlog, sent again after Retry-After
    rejected: dict[str, list] = field(default_factory=dict)
    # feed entries of this run in feed order: (feed epoch, slim decision)
    decisions: list[tuple[float, dict]] = field(default_factory=list)
    stats: list[tuple[float, dict]] = field(default_factory=list)
    errors: list[tuple[float, str]] = field(default_factory=list)
    send_end: float = 0.0
    drain_end: float = 0.0
    drained: bool = False
    lost_status: dict[str, str] = field(default_factory=dict)
    policy: dict | None = None
    dead_letters_before: int = 0
    dead_letters_after: int = 0
    review: ReviewLog = field(default_factory=ReviewLog)

    def asked_for_review(self) -> list[str]:
        """This run's posts that asked for review: those that entered a queue, and those that
        overflowed into its backlog (limited meanwhile), in feed order."""
        return list(dict.fromkeys(d["post_id"] for _, d in self.decisions
                                  if (d.get("review") or {}).get("queue")))  # fmt: skip


def _slim(d: dict) -> dict:
    review = d.get("review") or None
    decided = d.get("decided_at")
    try:
        decided_ts = datetime.fromisoformat(decided).timestamp() if decided else None
    except ValueError:
        decided_ts = None
    return {
        "post_id": d.get("post_id"),
        "action": d.get("action"),
        "language": (d.get("language") or {}).get("code", "und"),
        "decided_ts": decided_ts,
        "review_queue": d.get("review_queue"),
        "labels": d.get("labels") or [],
        "reasons": [
            {"rule": r.get("rule"), "action": r.get("action"),
             "categories": r.get("categories") or {}, "keywords": r.get("keywords") or {}}
            for r in d.get("reasons") or []
        ],  # fmt: skip
        "policy": (d.get("policy") or {}).get("version"),
        "queue_wait_ms": (d.get("timings") or {}).get("queue_wait_ms"),
        "review": review and {"queue": review.get("queue"), "reason": review.get("reason"),
                              "fallback": (review.get("fallback") or {}).get("action")},
    }


def schedule(scenario: Scenario, opts: ReplayOptions, id_prefix: str,
             start_time: datetime | None = None) -> list[tuple[float, GeneratedPost]]:  # fmt: skip
    """(wall offset, post) for every post of the run, in order; capped by ``duration``."""
    ts = opts.time_scale or scenario.time_scale
    out = []
    for gp in generate(scenario, opts.seed, opts.rate_scale, start_time, id_prefix=id_prefix):
        wall = gp.at_s / ts
        if opts.duration is not None and wall >= opts.duration:
            break
        out.append((wall, gp))
    return out


class _Progress:
    def __init__(self, run: RunData, enabled: bool) -> None:
        self.run = run
        self.enabled = enabled
        self.live = None
        self.phase = "sending"

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.console import Console
            from rich.live import Live

            self.live = Live(self, console=Console(stderr=True),
                             refresh_per_second=4, transient=False)  # fmt: skip
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.__exit__(None, None, None)

    def update(self) -> None:
        pass  # Live re-renders (``__rich__``) on its own 4 times a second

    def __rich__(self):
        return self.render()

    def render(self):
        from rich.table import Table

        run = self.run
        now = time.time()
        elapsed = now - run.t0 if run.t0 else 0.0
        decided = len({d["post_id"] for _, d in run.decisions})
        recent = [d["decided_ts"] - run.accepted[d["post_id"]]
                  for _, d in run.decisions[-2000:]
                  if d["decided_ts"] and d["post_id"] in run.accepted
                  and d["decided_ts"] > now - 10]  # fmt: skip
        p99 = percentile(recent, 99)
        last = run.stats[-1][1] if run.stats else {}
        stream = last.get("stream", {})
        t = Table.grid(padding=(0, 2))
        t.add_column(style="bold cyan")
        t.add_column()
        title = f"replay {run.scenario}" + (f" [{run.options.get('label')}]"
                                            if run.options.get("label") else "")  # fmt: skip
        t.add_row(title, f"{self.phase}  ->  {run.target}")
        t.add_row("elapsed", f"{elapsed:6.1f} s")
        t.add_row("sent", f"{len(run.sent)} / {run.scheduled}  (accepted {len(run.accepted)}, "
                  f"rejected {len(run.rejected)}, errors {len(run.errors)})")  # fmt: skip
        t.add_row("decided", f"{decided}")
        t.add_row("queue", f"{stream.get('length', '-')} posts, lag {stream.get('lag_ms', '-')} ms")
        t.add_row("p99 (last 10 s)", "-" if p99 is None else f"{p99 * 1000:.0f} ms")
        depth: dict[str, int] = {}
        for q in run.review.samples[-1][1] if run.review.samples else []:
            depth[q["language"]] = depth.get(q["language"], 0) + q["waiting"] + q["in_review"]
        t.add_row("review", f"{len(run.review.verdicts)} resolved; waiting "
                  + (", ".join(f"{k} {v}" for k, v in sorted(depth.items())) or "-"))
        return t


async def run_replay(scenario: Scenario, target: str, opts: ReplayOptions) -> RunData:
    """Replay ``scenario`` against the service at ``target``; see the module docstring."""
    prefix = opts.id_prefix or f"rp{int(time.time() * 1000):x}{os.getpid() % 1000:03d}"
    ts = opts.time_scale or scenario.time_scale
    run = RunData(
        scenario=scenario.name, target=target, id_prefix=prefix, time_scale=ts,
        options={k: v for k, v in vars(opts).items() if k != "progress"},
    )  # fmt: skip
    plan = schedule(scenario, opts, prefix)
    run.scheduled = len(plan)
    limits = httpx.Limits(max_connections=opts.max_in_flight + 8)
    async with httpx.AsyncClient(base_url=target, timeout=opts.request_timeout,
                                 limits=limits) as client:  # fmt: skip
        r = await client.get("/healthz")
        r.raise_for_status()
        fg = AsyncFloodgate("", client=client)
        with contextlib.suppress(httpx.HTTPError, ValueError):
            run.policy = (await client.get("/v1/policy")).json().get("live")
        await read_policy_review(fg, run.review)
        stats0 = (await client.get("/v1/stats")).json()
        run.dead_letters_before = int(stats0.get("dead_letters") or 0)
        # the feed may hold earlier runs' decisions: start a minute before now (stream ids are
        # Redis server milliseconds); this run's decisions are picked out by their prefix
        cursor = "0" if not stats0["decisions"]["audit_length"] else str(
            int(time.time() * 1000) - 60_000)  # fmt: skip
        desks = Desks(fg, run.review, lambda pid: (run.sent.get(pid) or (0, 0, None))[2], ts,
                      lambda msg: run.errors.append((time.time(), msg)))  # fmt: skip
        stop, stop_review = asyncio.Event(), asyncio.Event()
        with _Progress(run, opts.progress) as progress:
            run.t0 = time.time()
            tasks = [asyncio.create_task(_poll_feed(client, run, cursor, stop)),
                     asyncio.create_task(_poll_stats(client, run, stop, opts.stats_interval_s,
                                                     progress))]  # fmt: skip
            if opts.reviewers:
                tasks.append(asyncio.create_task(work(desks, stop_review, opts.stats_interval_s)))
            try:
                await _send(client, run, plan, opts, progress)
                run.send_end = time.time()
                progress.phase = "draining"
                await _drain(run, opts, desks if opts.reviewers else None)
                stop_review.set()
                await asyncio.sleep(1.0)  # a late duplicate would show up in the feed now
                progress.phase = "done"
            finally:
                stop.set()
                stop_review.set()
                await asyncio.gather(*tasks, return_exceptions=True)
        await _missing(client, run)
        if opts.reviewers:
            await final_states(fg, run.review, run.asked_for_review())
        with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
            run.dead_letters_after = int((await client.get("/v1/stats")).json()["dead_letters"])
    return run


async def _drain(run: RunData, opts: ReplayOptions, desks: Desks | None) -> None:
    """Wait until every accepted post is decided, or ``drain_timeout``; then, with reviewers,
    until they have emptied the queues they read, when that takes them at most
    ``review_drain_s`` (what still waits after that is reported as waiting)."""
    deadline = time.monotonic() + opts.drain_timeout
    while time.monotonic() < deadline:
        decided = {d["post_id"] for _, d in run.decisions}
        if all(p in decided for p in run.accepted):
            run.drained = True
            break
        await asyncio.sleep(0.25)
    run.drain_end = time.time()
    if desks is None or not run.drained:
        return
    while not (run.review.samples and run.review.samples[-1][0] > run.drain_end):
        await asyncio.sleep(0.1)  # a queue sample taken after the last decision
    if desks.clear_s() > opts.review_drain_s:
        return
    until = time.monotonic() + opts.review_drain_s
    while time.monotonic() < until and not desks.idle():
        await asyncio.sleep(0.25)


async def _missing(client: httpx.AsyncClient, run: RunData) -> None:
    """Every accepted post without a decision in the feed: still queued (the drain timed
    out), dead-lettered ("failed"), or really lost ("unknown", or decided but missing from
    the feed)."""
    decided = {d["post_id"] for _, d in run.decisions}
    missing = [p for p in run.accepted if p not in decided]
    sem = asyncio.Semaphore(16)

    async def status(pid: str) -> None:
        async with sem:
            try:
                r = await client.get(f"/v1/posts/{pid}/decision")
                run.lost_status[pid] = (
                    r.json().get("status", str(r.status_code)) if r.status_code != 404
                    else "unknown")  # fmt: skip
            except (httpx.HTTPError, ValueError) as exc:
                run.lost_status[pid] = f"error: {type(exc).__name__}"

    await asyncio.gather(*(status(p) for p in missing))


async def _send(client: httpx.AsyncClient, run: RunData, plan, opts: ReplayOptions,
                progress: _Progress) -> None:  # fmt: skip
    sem = asyncio.Semaphore(opts.max_in_flight)
    tasks: set[asyncio.Task] = set()
    i, n = 0, len(plan)
    while i < n:
        now = time.time() - run.t0
        due = []
        while i < n and plan[i][0] <= now:
            due.append(plan[i])
            i += 1
        for k in range(0, len(due), opts.max_batch):
            chunk = due[k : k + opts.max_batch]
            await sem.acquire()  # bounded in-flight: sending falls behind when it waits here
            task = asyncio.create_task(_submit(client, run, chunk, sem))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if i < n:  # the next tick boundary, or later when nothing is due before then
            wake = max((int(now / opts.tick_s) + 1) * opts.tick_s, plan[i][0])
            await asyncio.sleep(max(run.t0 + wake - time.time(), 0.0))
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)


async def _submit(client: httpx.AsyncClient, run: RunData, chunk, sem: asyncio.Semaphore) -> None:
    """Send one batch through the Python client users get (service.client): posts refused
    for a full backlog (or a 429/503) are sent again after Retry-After."""
    try:
        started = time.time()
        for wall, gp in chunk:
            run.sent[gp.post["post_id"]] = (wall, started, gp.truth)

        def retried(reason: str) -> None:
            run.errors.append((time.time(), f"POST /v1/posts/batch: {reason}"))

        try:
            out = await AsyncFloodgate("", client=client).submit_batch(
                [gp.post for _, gp in chunk], on_retry=retried
            )
        except (httpx.HTTPError, FloodgateError) as exc:
            retried(str(exc)[:200])
            return
        for pid, status in out.accepted.items():
            run.accepted[pid] = started
            if status == "duplicate" and out.requests == 1:
                run.resubmitted += 1
        run.rejected.update(out.rejected)
        run.refused += out.resends
    finally:
        sem.release()


async def _poll_feed(client: httpx.AsyncClient, run: RunData, cursor: str,
                     stop: asyncio.Event, limit: int = 5000) -> None:  # fmt: skip
    mark = run.id_prefix + "-"
    final = False
    while True:
        try:
            r = await client.get("/v1/decisions", params={"after": cursor, "limit": limit})
            r.raise_for_status()
            page = r.json()
        except (httpx.HTTPError, ValueError) as exc:
            run.errors.append((time.time(), f"GET /v1/decisions: {type(exc).__name__}"))
            await asyncio.sleep(0.5)
            continue
        now = time.time()
        for d in page["decisions"]:
            if str(d.get("post_id", "")).startswith(mark):
                run.decisions.append((now, _slim(d)))
        cursor = page["next"]
        if len(page["decisions"]) == limit:
            continue
        if final:
            return
        if stop.is_set():
            final = True  # one last full read after the stop
            continue
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.25)


async def _poll_stats(client: httpx.AsyncClient, run: RunData, stop: asyncio.Event,
                      interval: float, progress: _Progress) -> None:  # fmt: skip
    while not stop.is_set():
        try:
            r = await client.get("/v1/stats")
            r.raise_for_status()
            s = r.json()
            run.stats.append((time.time(), {
                "stream": {k: s["stream"].get(k) for k in ("length", "pending", "lag_ms")},
                "dead_letters": s.get("dead_letters"),
                "decisions_total": s["decisions"]["total"],
                "per_s": s["throughput"]["per_s"],
            }))  # fmt: skip
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            run.errors.append((time.time(), f"GET /v1/stats: {type(exc).__name__}"))
        progress.update()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)


def load(scenario: str | None) -> Scenario:
    return load_scenario(resolve_scenario(scenario))
