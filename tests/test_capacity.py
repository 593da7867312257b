"""The saturation search (service/replay/capacity.py): the mix it sends, and that every step
starts on an empty queue with the previous step's drain time recorded."""

from __future__ import annotations

import time
from collections import Counter

import httpx
import pytest

from service.replay.capacity import ALL, _search, _Stepper, constant_scenario, drain, text_profile
from service.replay.generate import generate
from service.replay.runner import load
from tests.conftest import LiveServer, WorkerThread


def test_the_whole_surge_at_one_rate_keeps_each_phase_for_its_share_of_posts():
    surge = load("refugee_surge")
    sc = constant_scenario(surge, rate=40.0, duration_s=30.0, phase=ALL)
    assert sc.time_scale == 1.0 and [p.name for p in sc.phases] == [p.name for p in surge.phases]
    assert sc.duration == pytest.approx(30.0)
    volumes = [(p.start_rate + p.end_rate) / 2 * p.duration for p in surge.phases]
    for ph, volume in zip(sc.phases, volumes, strict=True):
        assert ph.duration == pytest.approx(30.0 * volume / sum(volumes))
        assert ph.start_rate == ph.end_rate == 40.0
    # spam bursts keep the wall-clock gaps the surge is replayed with (a day in a minute)
    peak = next(p for p in sc.phases if p.name == "peak")
    assert peak.spam.gap == pytest.approx([10 / 1440, 120 / 1440])
    posts = list(generate(sc, seed=5))
    assert 1000 <= len(posts) <= 1400  # Poisson around 1,200
    phases = Counter(g.truth["phase"] for g in posts)
    assert phases["peak"] > phases["decay"] > phases["ramp"] > phases["baseline"]
    spam = sum(g.truth.get("author_kind") == "spammer" for g in posts) / len(posts)
    assert 0.03 < spam < 0.15  # bursts are not cut off by a scenario 30 s long


def test_one_phase_is_still_available_and_unknown_ones_are_refused():
    surge = load("refugee_surge")
    sc = constant_scenario(surge, rate=20.0, duration_s=10.0, phase="peak")
    assert [p.name for p in sc.phases] == ["peak"] and sc.duration == pytest.approx(10.0)
    with pytest.raises(ValueError, match="no phase"):
        constant_scenario(surge, 1.0, 1.0, phase="nope")


def test_text_profile_describes_the_posts_sent():
    prof = text_profile(constant_scenario(load("refugee_surge"), 50.0, 20.0, ALL), seed=1)
    assert 700 <= prof["posts"] <= 1300
    assert 5 < prof["chars_mean"] < prof["chars_p90"] <= prof["chars_max"]
    assert 0 < prof["repeated_share"] < 0.5  # spam bursts repeat their text


@pytest.mark.parametrize(
    ("passes_below", "expected"),
    [(100.0, (96.0, 128.0)), (5.0, (4.0, 8.0)), (10_000.0, (512.0, None))],
)
def test_search_doubles_then_bisects(passes_below, expected):
    tried = []

    def step(rate):
        tried.append(rate)
        return rate < passes_below

    assert _search(step, 8.0, 1000.0, bisect=1) == expected
    assert tried == sorted(set(tried), key=tried.index)  # no rate measured twice


def test_a_step_that_cannot_start_on_an_empty_queue_ends_the_search():
    answers = iter([True, True, None])
    assert _search(lambda _: next(answers), 8.0, 1000.0, bisect=3) == (16.0, None)


def test_steps_start_on_an_empty_queue_and_record_the_drain_time(settings, moderator):
    with LiveServer(settings) as api, httpx.Client(base_url=api.url, timeout=30) as http:
        stepper = _Stepper(api, load("smoke"), 1, step_s=1.0, phase=ALL, seed=1, slo_ms=2000,
                           drain_timeout_s=1.0, log=lambda _: None)  # fmt: skip
        posts = [{"post_id": f"cap-{i}", "text": f"backlog post {i}"} for i in range(5)]
        assert http.post("/v1/posts/batch", json={"posts": posts}).status_code == 202
        stepper.steps.append({"rate": 8.0, "drain_s": None})  # a step whose wait ran out
        stepper.send_end = time.time()
        # no worker: the backlog stays, the next step is not measured on top of it
        assert drain(api.url, 0.5) is None
        assert stepper(16.0) is None and len(stepper.steps) == 1
        with WorkerThread(settings, moderator):
            stepper.drain_timeout_s = 120.0
            assert stepper.settle() is not None
        assert stepper.steps[0]["drain_s"] > 0
        assert http.get("/v1/stats").json()["stream"]["length"] == 0
