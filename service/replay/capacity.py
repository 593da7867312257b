"""Saturation search: the highest constant input rate at which p99 latency stays under 2 s.

A constant-rate scenario is derived from a base scenario (default: refugee_surge) at a
fixed rate, real time, with either one phase's mix (languages, kinds, authors, spam
bursts), e.g. its ``peak``, or ``all`` of them: every phase in turn, each for its share of
the base's posts, so the step sends the surge's own mix of languages, kinds and text
lengths. For each worker count, one embedded service is started and short steps are
replayed against it: the rate doubles from ``start_rate`` until a step fails, then
``bisect`` halvings narrow the interval. Each worker count first gets an unmeasured
warm-up (the same mix at the start rate). A step passes when p99 < ``slo_ms`` with nothing
lost and no errors.

Every step starts on an empty queue: before it, the search waits until the previous
step's backlog is decided and records how long that took (``drain_s``, from the end of
the previous step's sending); a backlog that does not drain within ``drain_timeout_s``
ends the search for that worker count rather than measuring on top of it.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from service.processes import EmbeddedService
from service.replay.analysis import SLO_MS, analyse
from service.replay.generate import generate
from service.replay.plots import plot_capacity
from service.replay.runner import ReplayOptions, run_replay
from service.replay.scenario import Scenario

ALL = "all"


def constant_scenario(base: Scenario, rate: float, duration_s: float,
                      phase: str = "peak") -> Scenario:  # fmt: skip
    """``base``'s ``phase`` mix at a constant ``rate`` posts/s for ``duration_s``, real time;
    ``phase="all"``: each of its phases in turn, for a time in proportion to its posts
    (mean rate x duration), so the whole scenario's mix at one rate."""
    doc = base.model_dump(mode="json")
    names = [p["name"] for p in doc["phases"]]
    if phase != ALL and phase not in names:
        raise ValueError(f"scenario {base.name} has no phase {phase!r} (phases: {names + [ALL]})")
    chosen = [ph for ph in doc["phases"] if phase in (ALL, ph["name"])]
    volumes = [(p.start_rate + p.end_rate) / 2 * p.duration
               for p in base.phases if phase in (ALL, p.name)]  # fmt: skip
    for ph, volume in zip(chosen, volumes, strict=True):
        ph.update(rate={"start": rate, "end": rate}, duration=duration_s * volume / sum(volumes),
                  description=f"{base.name}/{ph['name']} mix at {rate:g} posts/s")  # fmt: skip
        if ph.get("spam"):  # bursts keep the wall-clock shape the base replays them with
            ph["spam"]["gap"] = [g / base.time_scale for g in ph["spam"]["gap"]]
    doc.update(name=f"{base.name}-constant", time_scale=1.0, phases=chosen)
    sc = Scenario.model_validate(doc)
    sc._source = base.source  # the corpus path is relative to the base file
    return sc


def text_profile(sc: Scenario, seed: int) -> dict[str, float]:
    """What the step's posts look like: their length in characters, and the share that
    repeat an earlier text exactly (spam bursts: the workers' embedding cache takes those)."""
    texts = [g.post["text"] for g in generate(sc, seed)]
    if not texts:
        return {"posts": 0}
    lengths = sorted(len(t) for t in texts)
    return {"posts": len(texts), "chars_mean": round(statistics.mean(lengths), 1),
            "chars_p90": lengths[int(0.9 * (len(lengths) - 1))], "chars_max": lengths[-1],
            "repeated_share": round(1 - len(set(texts)) / len(texts), 3)}  # fmt: skip


def queue_length(url: str) -> int:
    """Accepted posts not yet decided (both streams, pending included)."""
    return int(httpx.get(url + "/v1/stats", timeout=10).json()["stream"]["length"])


def drain(url: str, timeout_s: float) -> float | None:
    """Wait until the queue is empty; the seconds it took, None if it did not empty."""
    started = time.monotonic()
    while queue_length(url) > 0:
        if time.monotonic() - started > timeout_s:
            return None
        time.sleep(0.2)
    return time.monotonic() - started


def _search(step: Callable[[float], bool | None], start_rate: float, max_rate: float,
            bisect: int) -> tuple[float, float | None]:  # fmt: skip
    """Double from ``start_rate`` until a step fails, then bisect; (highest ok, first fail).
    A step that answers None (not measured: the backlog did not drain) ends the search."""
    lo, hi, rate = 0.0, None, start_rate
    while rate <= max_rate:
        ok = step(rate)
        if ok is None:
            return lo, hi
        if not ok:
            hi = rate
            break
        lo, rate = rate, rate * 2
    for _ in range(bisect if hi is not None else 0):
        mid = (lo + hi) / 2
        ok = step(mid)
        if ok is None:
            break
        lo, hi = (mid, hi) if ok else (lo, mid)
    return lo, hi


class _Stepper:
    """One worker count's steps against one embedded service."""

    def __init__(self, svc: EmbeddedService, base: Scenario, workers: int, *, step_s: float,
                 phase: str, seed: int, slo_ms: float, drain_timeout_s: float,
                 log: Callable[[str], None]) -> None:  # fmt: skip
        self.svc, self.base, self.workers, self.step_s = svc, base, workers, step_s
        self.phase, self.seed, self.slo_ms, self.log = phase, seed, slo_ms, log
        self.drain_timeout_s = drain_timeout_s
        self.steps: list[dict] = []
        self.send_end = 0.0  # epoch seconds: the previous step stopped sending

    def settle(self) -> float | None:
        """Drain what the previous step left. A step whose own wait for its decisions ended
        first gets its drain time (from its last post sent to an empty queue) here. None:
        still not empty after ``drain_timeout_s``."""
        waited = drain(self.svc.url, self.drain_timeout_s)
        last = self.steps[-1] if self.steps else None
        if last is not None and last["drain_s"] is None and waited is not None:
            last["drain_s"] = round(time.time() - self.send_end, 1)
        return waited

    def __call__(self, rate: float) -> bool | None:
        if self.settle() is None:
            self.log(f"  workers={self.workers}: the backlog did not drain within "
                     f"{self.drain_timeout_s:.0f} s; the search stops here")  # fmt: skip
            return None
        sc = constant_scenario(self.base, rate, self.step_s, self.phase)
        opts = ReplayOptions(seed=self.seed, progress=False, drain_timeout=max(90, self.step_s * 4),
                             reviewers=False)  # the workers' capacity, alone
        run = asyncio.run(run_replay(sc, self.svc.url, opts))
        self.send_end = run.send_end
        s = analyse(run, sc)["summary"]
        ok = (s["p99_ms"] is not None and s["p99_ms"] < self.slo_ms and s["lost"] == 0
              and s["errors"] == 0 and run.drained)  # fmt: skip
        self.steps.append({
            "rate": round(rate, 2), "sent": s["sent"], "input_rate": round(s["sent"] / self.step_s, 2),
            "p50_ms": s["p50_ms"], "p99_ms": s["p99_ms"], "decided_per_s": s["throughput"],
            "max_queue": s["max_queue"], "lost": s["lost"], "errors": s["errors"], "ok": ok,
            "drain_s": round(run.drain_end - run.send_end, 1) if run.drained else None,
            "load_avg_1m": round(os.getloadavg()[0], 2),
        })  # fmt: skip
        self.log(f"  workers={self.workers} rate={rate:7.2f}/s  sent={s['sent']:5d}  "
                 f"p50={s['p50_ms']} ms  p99={s['p99_ms']} ms  decided/s={s['throughput']}"
                 f"  max_queue={s['max_queue']}  -> {'ok' if ok else 'FAIL'}")
        return ok


def find_capacity(base: Scenario, workers: list[int], step_s: float = 20.0,
                  start_rate: float = 8.0, max_rate: float = 1000.0, bisect: int = 3,
                  seed: int = 1, slo_ms: float = SLO_MS, policy: Path | None = None,
                  log: Callable[[str], None] = print, log_dir: Path | None = None,
                  phase: str = ALL, drain_timeout_s: float = 600.0) -> dict[str, Any]:  # fmt: skip
    results: dict[str, Any] = {
        "slo_ms": slo_ms, "step_s": step_s, "base": base.name, "phase": phase,
        "text": text_profile(constant_scenario(base, 100.0, step_s, phase), seed),
        "cpu_count": os.cpu_count(), "workers": {},
    }  # fmt: skip
    for w in workers:
        with EmbeddedService(workers=w, policy=policy, log_dir=log_dir) as svc:
            # warm-up, not measured: the first posts of each language load lazily built
            # detector models; the mix touches every language of the base scenario
            warm = asyncio.run(run_replay(constant_scenario(base, start_rate, 15.0, phase), svc.url,
                                          ReplayOptions(seed=seed + 1000, progress=False,
                                                        reviewers=False)))  # fmt: skip
            log(f"  workers={w} warm-up: {len(warm.accepted)} posts")
            stepper = _Stepper(svc, base, w, step_s=step_s, phase=phase, seed=seed,
                               slo_ms=slo_ms, drain_timeout_s=drain_timeout_s, log=log)  # fmt: skip
            lo, hi = _search(stepper, start_rate, max_rate, bisect)
            stepper.settle()  # the last step's drain time too
        results["workers"][str(w)] = {
            "max_rate_ok": round(lo, 2),
            "first_fail": None if hi is None else round(hi, 2),
            "torch_threads": svc.torch_threads,
            "steps": stepper.steps,
        }
        log(f"workers={w}: highest rate with p99 < {slo_ms:.0f} ms: {lo:.1f} posts/s "
            f"(failed at {hi if hi is None else round(hi, 1)})")
    return results


def write_capacity(results: dict, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "capacity.json").write_text(json.dumps(results, indent=1))
    plot_capacity(results, out)
    text = results.get("text", {})
    md = [f"{results['base']} ({results.get('phase', 'peak')} mix): posts of "
          f"{text.get('chars_mean')} characters on average (p90 {text.get('chars_p90')}), "
          f"{text.get('repeated_share', 0):.0%} exact repeats; every step starts on an empty queue",
          "",
          "| workers | highest rate with p99 < 2 s | first failing rate | steps (rate: p99, drain after it) |",
          "| --- | --- | --- | --- |"]  # fmt: skip
    for w, r in results["workers"].items():
        steps = ", ".join(f"{s['rate']:g}: {s['p99_ms']:.0f} ms, {_drained(s)}" for s in r["steps"]
                          if s["p99_ms"] is not None)  # fmt: skip
        md.append(f"| {w} | {r['max_rate_ok']:g} posts/s | {r['first_fail']} | {steps} |")
    (out / "capacity.md").write_text("\n".join(md) + "\n")
    return [out / "capacity.json", out / "capacity.png", out / "capacity.md"]


def _drained(step: dict) -> str:
    return "not drained" if step.get("drain_s") is None else f"{step['drain_s']:g} s"
