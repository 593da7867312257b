"""Replay: metrics arithmetic, accounting, fail-if, the report, and one short real replay."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from service.replay import load_scenario
from service.replay.analysis import analyse, fail_if_metrics
from service.replay.capacity import constant_scenario
from service.replay.command import _gate
from service.replay.generate import generate
from service.replay.metrics import (
    FailIfError,
    account,
    evaluate_fail_if,
    first_run,
    flagged_categories,
    parse_fail_if,
    percentile,
    quality,
    review_verdict,
    simulate_backlog,
)
from service.replay.runner import RunData, resolve_scenario

SMOKE = resolve_scenario("smoke")

# --------------------------------------------------------------------------- percentiles


def test_percentile_interpolates_like_numpy():
    xs = list(range(1, 101))  # 1..100
    assert percentile(xs, 50) == pytest.approx(50.5)
    assert percentile(xs, 99) == pytest.approx(99.01)
    assert percentile(xs, 0) == 1 and percentile(xs, 100) == 100
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None
    assert percentile([3, 1, 2], 50) == 2  # unsorted input
    with pytest.raises(ValueError):
        percentile(xs, 101)


# --------------------------------------------------------------------------- review queue


def test_review_backlog_simulation_drains_at_capacity_and_never_goes_negative():
    assert simulate_backlog([5, 0, 0, 3, 0], 2) == [3, 1, 0, 1, 0]
    assert simulate_backlog([1, 1, 1], 0) == [1, 2, 3]
    assert simulate_backlog([0.5, 0.5], 0.25) == [0.25, 0.5]
    with pytest.raises(ValueError):
        simulate_backlog([1], -1)


def test_review_verdict_overflow_and_time_to_clear():
    # 1 review/s of capacity, overflow when more than 2 s of work waits
    v = review_verdict("en", [4, 0, 0, 0, 6, 0], capacity_per_s=1.0, overflow_after_s=2.0)
    assert v.peak == 5 and v.peak_at_s == 4
    assert v.growing_from_s == 0
    assert v.overflow_at_s == 0  # 3 waiting > 2 s of capacity
    assert v.final == 4 and v.clear_s == 4.0
    calm = review_verdict("zh", [1, 1, 1], capacity_per_s=2.0, overflow_after_s=10)
    assert calm.overflow_at_s is None and calm.peak == 0 and calm.clear_s == 0
    none = review_verdict("other", [0, 1, 0], capacity_per_s=0.0, overflow_after_s=3600)
    assert none.overflow_at_s == 1 and math.isinf(none.clear_s)


def test_first_run_needs_consecutive_values():
    assert first_run([0, 3, 0, 3, 3, 3], above=2, min_len=2) == 3
    assert first_run([0, 3, 0, 3], above=2, min_len=2) is None
    assert first_run([None, 5], above=2) == 1


# --------------------------------------------------------------------------- fail-if


def test_fail_if_parsing():
    conds = parse_fail_if("p99_ms>2000, lost>0,duplicates>=1,errors==3,max_queue<=10,p50_ms<5")
    assert [str(c) for c in conds] == [
        "p99_ms>2000", "lost>0", "duplicates>=1", "errors==3", "max_queue<=10", "p50_ms<5",
    ]  # fmt: skip
    assert conds[0].value == 2000.0
    assert parse_fail_if("") == [] and parse_fail_if(None) == []
    assert parse_fail_if("p99_ms>1.5")[0].value == 1.5
    with pytest.raises(FailIfError, match="unknown metric"):
        parse_fail_if("p98_ms>1")
    with pytest.raises(FailIfError, match="expected METRIC OP NUMBER"):
        parse_fail_if("lost>>0")
    with pytest.raises(FailIfError):
        parse_fail_if("lost>zero")


def test_fail_if_evaluation_names_the_conditions_that_hold():
    conds = parse_fail_if("p99_ms>2000,lost>0,errors>=1,max_queue==10")
    metrics = {"p99_ms": 2500.0, "lost": 0, "errors": 1, "max_queue": 9}
    failed = evaluate_fail_if(conds, metrics)
    assert failed == ["p99_ms>2000 (p99_ms = 2500.0)", "errors>=1 (errors = 1)"]
    assert evaluate_fail_if(conds, {"p99_ms": 2000, "lost": 0, "errors": 0, "max_queue": 0}) == []
    # no figure at all (no decisions): not a pass
    assert evaluate_fail_if(parse_fail_if("p99_ms>2000"), {"p99_ms": None}) != []
    assert _gate(parse_fail_if("lost>0"), {"lost": 0}) == 0
    assert _gate(parse_fail_if("lost>0"), {"lost": 2}) == 1


# --------------------------------------------------------------------------- accounting


def test_accounting_finds_lost_duplicated_and_unexpected_ids():
    acc = account(["a", "b", "c", "d"], ["a", "c", "a", "x", "d", "d", "d"])
    assert acc.accepted == 4 and acc.decided == 3
    assert acc.lost == ["b"]
    assert acc.duplicates == {"a": 2, "d": 3}
    assert acc.unexpected == ["x"]
    clean = account(["a", "b"], ["b", "a"])
    assert clean.lost == [] and clean.duplicates == {} and clean.decided == 2


# --------------------------------------------------------------------------- quality


def _decision(action, *reasons):
    return {"action": action, "reasons": [
        {"rule": r, "action": a, "categories": cats, "keywords": kw} for r, a, cats, kw in reasons
    ]}  # fmt: skip


def test_flagged_categories_definition():
    cats = ["drugs", "gambling", "scam_spam", "hate"]
    d = _decision("review", ("r1", "review", {"hate": 0.9}, {}),
                  ("r2", "label", {"gambling": 0.9}, {}),
                  ("kw", "review", {}, {"drug_terms": ["weed"], "scam_contact": []}))  # fmt: skip
    # the label-only reason does not flag; an empty keyword hit list does not either
    assert flagged_categories(d, cats) == {"hate", "drugs"}
    assert flagged_categories(_decision("label", ("r", "label", {"hate": 1}, {})), cats) == set()
    # allow/label overall: nothing flagged even if a reason says review (cannot happen, but)
    assert flagged_categories(_decision("allow", ("r", "review", {"hate": 1}, {})), cats) == set()
    kw = _decision("remove", ("k", "remove", {}, {"scam_contact": ["加微信"]}))
    assert flagged_categories(kw, cats) == {"scam_spam"}


def test_quality_precision_recall_per_category_and_language():
    cats = ["hate", "gambling"]
    hate = _decision("remove", ("h", "remove", {"hate": 0.99}, {}))
    allow = _decision("allow")
    pairs = [
        ({"language": "en", "kind": "hate", "categories": ["hate"]}, hate),  # TP
        ({"language": "en", "kind": "hate", "categories": ["hate"]}, allow),  # FN
        ({"language": "en", "kind": "everyday", "categories": []}, hate),  # FP
        ({"language": "zh-Hans", "kind": "hate", "categories": ["hate"]}, hate),  # TP
        ({"language": "zh-Hans", "kind": "gambling_ad", "categories": ["gambling"]}, allow),
    ]
    q = quality(pairs, cats)
    rows = {(r["category"], r["language"]): r for r in q["rows"]}
    assert rows[("hate", "en")]["precision"] == 0.5 and rows[("hate", "en")]["recall"] == 0.5
    assert rows[("hate", "zh-Hans")]["precision"] == 1.0
    assert rows[("hate", "all")]["tp"] == 2 and rows[("hate", "all")]["recall"] == pytest.approx(0.667)
    assert rows[("gambling", "zh-Hans")]["recall"] == 0.0
    assert rows[("gambling", "zh-Hans")]["precision"] is None  # nothing flagged
    assert q["actions_by_kind"]["hate"] == {"remove": 2, "allow": 1}


# --------------------------------------------------------------------------- analysis on a synthetic run


def test_analyse_synthetic_run_counts_lost_duplicates_and_series():
    sc = load_scenario(SMOKE)
    t0 = 1_700_000_000.0
    run = RunData(scenario="smoke", target="test", options={"rate_scale": 1.0},
                  id_prefix="t", time_scale=1.0, t0=t0)  # fmt: skip
    truth = {"language": "en", "kind": "everyday", "categories": []}
    for i in range(4):
        pid = f"t-{i}"
        run.sent[pid] = (i, t0 + i, truth)
        run.accepted[pid] = t0 + i

    def dec(pid, at, action="allow", lang="en"):
        return (at + 0.1, {"post_id": pid, "action": action, "language": lang, "decided_ts": at,
                           "reasons": [], "review_queue": None, "policy": "v", "queue_wait_ms": 1})

    run.decisions = [dec("t-0", t0 + 0.5), dec("t-1", t0 + 2.0, "review"),
                     dec("t-1", t0 + 2.2, "review"), dec("t-3", t0 + 3.25)]  # fmt: skip
    run.send_end = run.drain_end = t0 + 4
    rep = analyse(run, sc)
    s = rep["summary"]
    assert (s["lost"], s["duplicates"], s["decided"]) == (1, 1, 3)
    assert rep["accounting"]["lost_ids"] == ["t-2"]
    assert rep["accounting"]["duplicate_ids"] == {"t-1": 2}
    assert s["p50_ms"] == pytest.approx(500.0)  # latencies 500, 1000, 250 ms
    assert sum(rep["series"]["sent_total"]) == 4
    assert sum(rep["series"]["decided_total"]) == 3  # the duplicate counts once
    assert sum(rep["review"]["en"]["arrivals"]) == 1
    assert fail_if_metrics(rep)["lost"] == 1


def test_constant_scenario_keeps_the_mix_at_a_fixed_rate():
    base = load_scenario(SMOKE)
    sc = constant_scenario(base, rate=20.0, duration_s=10.0)
    assert sc.time_scale == 1.0 and sc.duration == 10.0 and len(sc.phases) == 1
    peak = next(p for p in base.phases if p.name == "peak")
    assert sc.phases[0].languages == peak.languages
    n = sum(1 for _ in generate(sc, seed=3))
    assert 140 <= n <= 260  # Poisson around 200
    with pytest.raises(ValueError, match="no phase"):
        constant_scenario(base, 1.0, 1.0, phase="nope")


# --------------------------------------------------------------------------- one real replay


@pytest.mark.slow
def test_short_real_replay_is_exactly_once_and_writes_the_report(service, tmp_path: Path):
    """The smoke scenario at half rate, twice as fast (~13 s), against the real API + worker."""
    from service.cli import app

    out = tmp_path / "report"
    result = CliRunner().invoke(app, [
        "replay", str(SMOKE), "--target", service.url, "--rate-scale", "0.5", "--time-scale", "2",
        "--out", str(out), "--fail-if", "lost>0,duplicates>0", "--no-progress",
        "--drain-timeout", "60",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    s, acc = report["summary"], report["accounting"]
    assert s["sent"] > 30 and acc["accepted"] == s["sent"]
    assert acc["lost"] == 0 and acc["duplicates"] == 0 and acc["unexpected"] == 0
    assert acc["decided"] == acc["accepted"] and acc["drained"] is True
    assert s["errors"] == 0
    assert s["p99_ms"] is not None and 0 < s["p50_ms"] <= s["p99_ms"]
    assert sum(report["totals"]["decisions_by_action"].values()) == acc["decided"]
    assert sum(report["totals"]["sent_by_language"].values()) == s["sent"]
    for name in ("input_rate.png", "queue.png", "latency.png", "actions.png",
                 "review_backlog.png"):  # fmt: skip
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 5
    assert "0 lost, 0 duplicated" in page
    # the gate on this run's figures: a condition that never holds passes, one that always
    # holds fails and is named
    metrics = fail_if_metrics(report)
    assert _gate(parse_fail_if("p99_ms<0"), metrics) == 0
    assert _gate(parse_fail_if("p99_ms>=0,lost>0"), metrics) == 1
    assert evaluate_fail_if(parse_fail_if("p99_ms>=0,lost>0"), metrics)[0].startswith("p99_ms>=0")
