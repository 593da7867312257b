"""``floodgate replay``: one run, a policy comparison, or the saturation search.

Kept out of service/commands/replay.py (which only declares the options) so that it can be
called and tested directly: ``main(...)`` returns the exit code.

Exit codes: 0 ok; 1 a ``--fail-if`` condition held; 2 usage error.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from service.config import get_settings
from service.processes import EmbeddedService
from service.replay import analysis, pages
from service.replay.capacity import constant_scenario, write_capacity
from service.replay.capacity import find_capacity as search
from service.replay.kinds import ScenarioError
from service.replay.metrics import FailIfError, evaluate_fail_if, parse_fail_if
from service.replay.plots import plot_compare
from service.replay.reviewers import scenario_pools, write_policy
from service.replay.runner import ReplayOptions, load, run_replay
from service.replay.scenario import parse_time_scale


def _err(msg: str) -> None:
    print(f"floodgate replay: {msg}", file=sys.stderr)


def _print_summary(report: dict, page: Path) -> None:
    c = Console(stderr=True, highlight=False)
    c.print(f"[bold]replay {report['scenario']}[/] -> {page}")
    for line in pages.findings(report):
        c.print(" • " + line.replace("<b>", "[bold]").replace("</b>", "[/]"))


def _one(scenario, opts, *, target: str | None, workers: int, policy: Path | None,
         log_dir: Path):  # fmt: skip
    if target:
        run = asyncio.run(run_replay(scenario, target, opts))
        run.options["workers"] = "external"
    else:
        served, pools = _sampled_reviewers(scenario, opts, policy, log_dir)
        with EmbeddedService(workers=workers, policy=served, log_dir=log_dir) as svc:
            run = asyncio.run(run_replay(scenario, svc.url, opts))
        run.options["workers"] = workers
        run.options["policy_file"] = str(policy) if policy else None
        run.options["review_pools"] = pools
    return run, analysis.analyse(run, scenario)


def _sampled_reviewers(scenario, opts, policy: Path | None,
                       out: Path) -> tuple[Path | None, dict | None]:  # fmt: skip
    """The policy an embedded run serves: with the scenario's review capacity (a sample of
    the platform's reviewers, at the run's rate scale) as its pools, when the scenario
    declares one and reviewers work; the pools."""
    if not (opts.reviewers and scenario.review_capacity):
        return policy, None
    caps = {code: scenario.review_capacity_per_hour(code, opts.rate_scale)
            for code in scenario.review_capacity}  # fmt: skip
    pools = scenario_pools(caps)
    path = policy or get_settings().policy_path
    return write_policy(Path(path), pools, out / "policy"), pools


def main(*args: Any, **kwargs: Any) -> int:
    """Run ``floodgate replay`` (the options of ``_main``); returns the exit code."""
    # SIGTERM (and SIGINT, which a background job may have ignored) unwind the stack, so the
    # embedded Redis, API and workers are torn down by their context managers
    sigs = (signal.SIGTERM, signal.SIGINT)
    old = {sig: signal.getsignal(sig) for sig in sigs}
    try:
        for sig in sigs:
            signal.signal(sig, _interrupted)
    except ValueError:  # not the main thread: leave the handlers alone
        old = {}
    try:
        return _main(*args, **kwargs)
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _main(scenario: str | None = None, *, target: str | None = None, embedded: bool = False,
         rate_scale: float | None = None, time_scale: str | None = None,
         duration: float | None = None, seed: int = 1, workers: int = 1,
         out: Path | None = None, fail_if: str | None = None, policy: Path | None = None,
         compare: tuple[Path, Path] | None = None, find_capacity: bool = False,
         capacity_workers: str = "1,2", capacity_phase: str = "all",
         step_seconds: float = 20.0, start_rate: float = 8.0,
         progress: bool = True, drain_timeout: float = 120.0, max_in_flight: int = 8,
         batch: int = 500, reviewers: bool = True) -> int:  # fmt: skip
    try:
        conditions = parse_fail_if(fail_if)
    except FailIfError as exc:
        _err(f"--fail-if: {exc}")
        return 2
    modes = sum([bool(target), embedded, bool(compare), find_capacity])
    if modes != 1:
        _err("choose one of --target URL, --embedded, --compare A B, --find-capacity")
        return 2
    if target and policy:
        _err("--policy needs --embedded (a running service has its own policy)")
        return 2
    try:
        sc = load(scenario if scenario or not find_capacity else "refugee_surge")
    except (ScenarioError, FileNotFoundError) as exc:
        for line in getattr(exc, "errors", [str(exc)]):
            _err(line)
        return 2
    ts = None
    if time_scale is not None:
        try:
            ts = float(parse_time_scale(time_scale))
        except (TypeError, ValueError) as exc:
            _err(f"--time-scale: {exc}")
            return 2
        if ts <= 0:
            _err("--time-scale must be > 0")
            return 2
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = out or Path("var/reports") / f"{'capacity' if find_capacity else sc.name}-{stamp}"
    out.mkdir(parents=True, exist_ok=True)

    if find_capacity:
        ws = [int(x) for x in capacity_workers.split(",") if x.strip()]
        try:  # an unknown phase is refused before anything starts
            constant_scenario(sc, 1.0, 1.0, capacity_phase)
        except ValueError as exc:
            _err(f"--capacity-phase: {exc}")
            return 2
        res = search(sc, ws, step_s=step_seconds, start_rate=start_rate, seed=seed,
                     policy=policy, log=lambda m: print(m, file=sys.stderr),
                     log_dir=out, phase=capacity_phase)  # fmt: skip
        files = write_capacity(res, out)
        print((out / "capacity.md").read_text())
        print(f"written: {', '.join(str(f) for f in files)}", file=sys.stderr)
        metrics: dict[str, Any] = {}
        return _gate(conditions, metrics)

    opts = ReplayOptions(seed=seed, rate_scale=rate_scale or 1.0, time_scale=ts, duration=duration,
                         progress=progress, drain_timeout=drain_timeout,
                         max_in_flight=max_in_flight, max_batch=batch,
                         reviewers=reviewers)  # fmt: skip
    if compare:
        return _compare(sc, opts, tuple(Path(p) for p in compare), workers, out, conditions)

    run, rep = _one(sc, opts, target=target, workers=workers, policy=policy, log_dir=out)
    page = pages.write(rep, out)
    _print_summary(rep, page)
    return _gate(conditions, analysis.fail_if_metrics(rep), out)


def _compare(sc, opts, policies: tuple[Path, ...], workers: int, out: Path,
             conditions) -> int:  # fmt: skip
    """The same influx under two policies: a report for each, and the comparison."""
    runs = []
    for label, pol in zip(("A", "B"), policies, strict=True):
        opts.label = f"{label}: {pol.name}"
        run, rep = _one(sc, opts, target=None, workers=workers, policy=pol,
                        log_dir=out / label.lower())  # fmt: skip
        pages.write(rep, out / label.lower())
        runs.append((f"{label} ({pol.name})", run, rep))
    (la, run_a, rep_a), (lb, run_b, rep_b) = runs
    cmp = analysis.compare(la, run_a, rep_a, lb, run_b, rep_b)
    plot_compare(cmp, rep_a, rep_b, out)
    rep_a["compare"] = cmp
    extra = pages.compare_html(cmp, out)
    # the top-level report: run A's figures again with the comparison section, so that
    # report.html there is complete on its own
    rep_top = dict(rep_a)
    page = pages.write(rep_top, out, extra_html=extra)
    _print_summary(rep_top, page)
    print(f"compare: {cmp['changed']} of {cmp['posts_compared']} posts changed action "
          f"({cmp['changed_share']:.1%}); A p99 {cmp['a']['p99_ms']} ms, B p99 "
          f"{cmp['b']['p99_ms']} ms", file=sys.stderr)
    failed_metrics = {k: max(v or 0, analysis.fail_if_metrics(rep_b)[k] or 0)
                      for k, v in analysis.fail_if_metrics(rep_a).items()}  # fmt: skip
    return _gate(conditions, failed_metrics)


def _interrupted(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _gate(conditions, metrics: dict, out: Path | None = None) -> int:
    if not conditions:
        return 0
    failed = evaluate_fail_if(conditions, metrics)
    if out is not None:
        (out / "gate.json").write_text(json.dumps(
            {"conditions": [str(c) for c in conditions], "failed": failed}, indent=1))  # fmt: skip
    if failed:
        _err("FAILED: " + "; ".join(failed))
        return 1
    print(f"fail-if: none of {', '.join(str(c) for c in conditions)} held", file=sys.stderr)
    return 0
