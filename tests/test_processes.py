"""Supervision rules (pure parts): why a child died, and how long to wait before a restart."""

from __future__ import annotations

import signal

import pytest

from service.heartbeat import live_workers
from service.processes import BACKOFF_MAX_S, BACKOFF_START_S, STABLE_AFTER_S, _Child, exit_reason


@pytest.mark.parametrize(
    "code, reason",
    [(-signal.SIGKILL, "killed by SIGKILL"), (-signal.SIGSEGV, "killed by SIGSEGV"),
     (1, "exited with status 1"), (0, "exited with status 0")],  # fmt: skip
)
def test_exit_reason(code, reason):
    assert exit_reason(code) == reason


def test_a_crash_loop_backs_off_and_a_stable_child_restarts_at_once():
    child = _Child()
    child.started = 100.0
    delays = []
    now = 101.0  # dies 1 s after each start: a crash loop
    for _ in range(8):
        delays.append(child.died(now))
        child.started, now = now + delays[-1], now + delays[-1] + 1.0
    assert delays[:3] == [BACKOFF_START_S, 2 * BACKOFF_START_S, 4 * BACKOFF_START_S]
    assert max(delays) == BACKOFF_MAX_S
    # after running longer than STABLE_AFTER_S, a death (a poison post) restarts quickly
    child.started = now
    assert child.died(now + STABLE_AFTER_S + 1) == BACKOFF_START_S


def test_live_workers_keeps_fresh_heartbeats_only():
    raw = {
        "a": '{"beat_ms": 10000, "pid": 1, "batch_size": 3, "batch_since_ms": 9000, "decided": 5}',
        "b": '{"beat_ms": 1000, "pid": 2}',
        "c": "not json",
    }
    [a] = live_workers(raw, ttl_s=5, now_ms=12000)
    assert a == {"name": "a", "pid": 1, "host": None, "last_heartbeat_ms": 2000, "decided": 5,
                 "batch_in_hand": 3, "batch_age_ms": 3000, "model_version": "",
                 "policy_version": ""}  # fmt: skip
