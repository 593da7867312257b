"""`floodgate replay`: a synthetic influx through the API, and its report (service/replay/)."""

from __future__ import annotations

from pathlib import Path

import typer


def replay(
    scenario: str = typer.Argument(None, help="scenario file or name (default: refugee_surge)"),
    target: str = typer.Option(None, help="URL of a running service to drive"),
    embedded: bool = typer.Option(
        False, "--embedded", help="start Redis + API + workers for the run"
    ),
    rate_scale: float = typer.Option(None, help="multiply every rate (and review capacity)"),
    time_scale: str = typer.Option(None, help="scenario s per wall s, or a ratio like 1d/1min"),
    duration: float = typer.Option(None, help="stop sending after this many wall seconds"),
    seed: int = typer.Option(1, help="random seed of the influx"),
    workers: int = typer.Option(1, help="worker processes (--embedded, --compare)"),
    out: Path = typer.Option(None, help="report directory (default var/reports/<scenario>-<time>)"),
    fail_if: str = typer.Option(None, help='exit 1 if any holds, e.g. "p99_ms>2000,lost>0"'),
    policy: Path = typer.Option(None, help="policy file for the embedded service"),
    compare: tuple[Path, Path] = typer.Option(None, help="POLICY_A POLICY_B: replay under both"),
    find_capacity: bool = typer.Option(
        False, "--find-capacity", help="saturation search (default: refugee_surge, every phase's mix)"
    ),
    capacity_phase: str = typer.Option(
        "all", help="--find-capacity: the scenario phase whose mix is sent, or all of them"
    ),
    capacity_workers: str = typer.Option("1,2", help="worker counts for --find-capacity"),
    step_seconds: float = typer.Option(20.0, help="length of each --find-capacity step"),
    start_rate: float = typer.Option(8.0, help="first --find-capacity rate (posts/s)"),
    drain_timeout: float = typer.Option(120.0, help="seconds to wait for decisions after sending"),
    progress: bool = typer.Option(True, help="live progress display"),
    reviewers: bool = typer.Option(
        True, help="simulated reviewers work the review queues (embedded: at the scenario's capacity)"
    ),
) -> None:
    """Replay a synthetic influx through the API and write a report (see service/replay/)."""
    from service.replay.command import main

    code = main(scenario, target=target, embedded=embedded, rate_scale=rate_scale,
                time_scale=time_scale, duration=duration, seed=seed, workers=workers, out=out,
                fail_if=fail_if, policy=policy, compare=compare or None,
                find_capacity=find_capacity, capacity_workers=capacity_workers,
                capacity_phase=capacity_phase,
                step_seconds=step_seconds, start_rate=start_rate, drain_timeout=drain_timeout,
                progress=progress, reviewers=reviewers)  # fmt: skip
    raise typer.Exit(code)
