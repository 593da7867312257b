"""Saturation search: the highest constant input rate at which p99 latency stays under 2 s.

A constant-rate scenario is derived from a base scenario (default: smoke) by keeping one
phase's mix (languages, kinds, authors, spam bursts; default: its ``peak``) at a fixed
rate, real time. For each worker count, one embedded service is started and short steps
are replayed against it: the rate doubles from ``start_rate`` until a step fails, then
``bisect`` halvings narrow the interval. Each worker count first gets an unmeasured warm-up (the base scenario, compressed). A
step passes when p99 < ``slo_ms`` with nothing
lost and no errors; the service drains completely between steps.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from service.processes import EmbeddedService
from service.replay.analysis import SLO_MS, analyse
from service.replay.plots import plot_capacity
from service.replay.runner import ReplayOptions, run_replay
from service.replay.scenario import Scenario


def constant_scenario(base: Scenario, rate: float, duration_s: float,
                      phase: str = "peak") -> Scenario:  # fmt: skip
    """``base``'s ``phase`` mix at a constant ``rate`` posts/s for ``duration_s``, real time."""
    doc = base.model_dump(mode="json")
    names = [p["name"] for p in doc["phases"]]
    if phase not in names:
        raise ValueError(f"scenario {base.name} has no phase {phase!r} (phases: {names})")
    ph = doc["phases"][names.index(phase)]
    ph.update(name="constant", rate={"start": rate, "end": rate}, duration=duration_s,
              description=f"{base.name}/{phase} mix at {rate:g} posts/s")  # fmt: skip
    doc.update(name=f"{base.name}-constant", time_scale=1.0, phases=[ph])
    sc = Scenario.model_validate(doc)
    sc._source = base.source  # the corpus path is relative to the base file
    return sc


def _wait_empty(url: str, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = httpx.get(url + "/v1/stats", timeout=10).json()
        if s["stream"]["length"] == 0:
            return
        time.sleep(0.5)


def find_capacity(base: Scenario, workers: list[int], step_s: float = 20.0,
                  start_rate: float = 8.0, max_rate: float = 1000.0, bisect: int = 3,
                  seed: int = 1, slo_ms: float = SLO_MS, policy: Path | None = None,
                  log: Callable[[str], None] = print,
                  log_dir: Path | None = None) -> dict[str, Any]:  # fmt: skip
    results: dict[str, Any] = {"slo_ms": slo_ms, "step_s": step_s, "base": base.name,
                               "cpu_count": os.cpu_count(), "workers": {}}  # fmt: skip
    for w in workers:
        steps: list[dict] = []
        with EmbeddedService(workers=w, policy=policy, log_dir=log_dir) as svc:

            def step(rate: float, _svc=svc, _steps=steps, _w=w) -> bool:
                sc = constant_scenario(base, rate, step_s)
                opts = ReplayOptions(seed=seed, progress=False, drain_timeout=max(90, step_s * 4),
                                     reviewers=False)  # the workers' capacity, alone
                run = asyncio.run(run_replay(sc, _svc.url, opts))
                rep = analyse(run, sc)
                s = rep["summary"]
                ok = (s["p99_ms"] is not None and s["p99_ms"] < slo_ms and s["lost"] == 0
                      and s["errors"] == 0 and run.drained)  # fmt: skip
                row = {"rate": round(rate, 2), "sent": s["sent"],
                       "input_rate": round(s["sent"] / step_s, 2),
                       "p50_ms": s["p50_ms"], "p99_ms": s["p99_ms"],
                       "decided_per_s": s["throughput"], "max_queue": s["max_queue"],
                       "lost": s["lost"], "errors": s["errors"], "ok": ok,
                       "load_avg_1m": round(os.getloadavg()[0], 2)}  # fmt: skip
                _steps.append(row)
                log(f"  workers={_w} rate={rate:7.2f}/s  sent={s['sent']:5d}  "
                    f"p50={s['p50_ms']} ms  p99={s['p99_ms']} ms  decided/s={s['throughput']}"
                    f"  max_queue={s['max_queue']}  -> {'ok' if ok else 'FAIL'}")
                _wait_empty(_svc.url)
                return ok

            # warm-up, not measured: the first posts of each language load lazily built
            # detector models; the whole base scenario, compressed, touches every language
            warm = asyncio.run(run_replay(base, svc.url, ReplayOptions(
                seed=seed + 1000, rate_scale=2.0, time_scale=4.0, progress=False,
                reviewers=False)))  # fmt: skip
            log(f"  workers={w} warm-up: {len(warm.accepted)} posts")
            _wait_empty(svc.url)
            lo, hi, rate = 0.0, None, start_rate
            while rate <= max_rate:
                if step(rate):
                    lo, rate = rate, rate * 2
                else:
                    hi = rate
                    break
            for _ in range(bisect if hi is not None else 0):
                mid = (lo + hi) / 2
                if step(mid):
                    lo = mid
                else:
                    hi = mid
        results["workers"][str(w)] = {
            "max_rate_ok": round(lo, 2),
            "first_fail": None if hi is None else round(hi, 2),
            "torch_threads": svc.torch_threads,
            "steps": steps,
        }
        log(f"workers={w}: highest rate with p99 < {slo_ms:.0f} ms: {lo:.1f} posts/s "
            f"(failed at {hi if hi is None else round(hi, 1)})")
    return results


def write_capacity(results: dict, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "capacity.json").write_text(json.dumps(results, indent=1))
    plot_capacity(results, out)
    md = ["| workers | highest rate with p99 < 2 s | first failing rate | steps (rate: p99) |",
          "| --- | --- | --- | --- |"]  # fmt: skip
    for w, r in results["workers"].items():
        steps = ", ".join(f"{s['rate']:g}: {s['p99_ms']:.0f} ms" for s in r["steps"]
                          if s["p99_ms"] is not None)  # fmt: skip
        md.append(f"| {w} | {r['max_rate_ok']:g} posts/s | {r['first_fail']} | {steps} |")
    (out / "capacity.md").write_text("\n".join(md) + "\n")
    return [out / "capacity.json", out / "capacity.png", out / "capacity.md"]
