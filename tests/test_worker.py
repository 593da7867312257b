"""The worker's delivery guarantees, against a real Redis and real worker processes.

Every accepted post ends with exactly one decision (or one dead letter): a worker killed
with SIGKILL mid-batch loses nothing, a poison entry is dead-lettered without stopping
the worker, SIGTERM finishes the batch in hand.
"""

from __future__ import annotations

import collections
import json
import signal
import threading

import httpx
import pytest

from service.pipeline import Moderator
from service.queue import Keys
from service.redisdb import connect
from service.worker import redelivery_limit
from tests.conftest import (
    LiveServer,
    WorkerThread,
    make_settings,
    wait_for_decision,
    wait_until,
    worker_process,
)

TEXTS = [
    "hello from America, so happy to be here",
    "今天做了红烧肉，味道还不错",
    "我們今天去台北吃東西",
    "buy cheap followers now, dm me",
    "my cat knocked over my coffee again",
    "hello 大家好 I'm from Texas",
]


def submit(url: str, n: int, tag: str) -> list[str]:
    posts = [{"post_id": f"{tag}-{i}", "text": f"{TEXTS[i % len(TEXTS)]} #{i}"} for i in range(n)]
    r = httpx.post(f"{url}/v1/posts/batch", json={"posts": posts}, timeout=30)
    assert r.status_code == 202, r.text
    assert r.json()["accepted"] == n
    return [p["post_id"] for p in posts]


def audit_ids(client, keys: Keys) -> list[str]:
    return [fields["id"] for _, fields in client.xrange(keys.audit)]


def consumer_pending(client, keys: Keys, group: str) -> dict[str, int]:
    try:
        summary = client.xpending(keys.posts, group)
    except Exception:
        return {}
    return {c["name"]: int(c["pending"]) for c in summary.get("consumers") or []}


def signal_when_busy(client, settings, sig: int) -> tuple[int, str]:
    """Start a worker process, signal it once it holds a batch; (exit code, its output)."""
    keys = Keys(settings.key_prefix)
    proc = worker_process(settings)
    try:
        wait_until(lambda: any(consumer_pending(client, keys, settings.consumer_group).values()),
                   120, "the worker to take a batch", interval=0.02)  # fmt: skip
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, out


def test_sigkill_mid_batch_loses_nothing_and_decides_nothing_twice(redis_url, model_dir, moderator):
    # a large batch and one torch thread keep worker A busy long enough to be killed mid-batch
    settings = make_settings(redis_url, model_dir, batch_size=64, claim_idle_ms=1000)
    keys = Keys(settings.key_prefix)
    client = connect(redis_url)
    with LiveServer(settings) as api:
        ids = submit(api.url, 96, "kill")
        signal_when_busy(client, settings, signal.SIGKILL)  # worker A dies mid-batch
        stranded = sum(consumer_pending(client, keys, settings.consumer_group).values())
        assert stranded > 0, "worker A was not killed mid-batch: the test proved nothing"
        with WorkerThread(settings, moderator, name="worker-b"):
            for post_id in ids:
                assert wait_for_decision(api.url, post_id, timeout=120).status_code == 200
    decided = audit_ids(client, keys)
    counts = collections.Counter(decided)
    assert set(counts) == set(ids), "a post was lost"
    assert max(counts.values()) == 1, f"decided twice: {[k for k, v in counts.items() if v > 1]}"
    assert client.xlen(keys.posts) == 0
    assert client.xlen(keys.dead) == 0
    assert not any(consumer_pending(client, keys, settings.consumer_group).values())


def test_malformed_entries_go_to_dead_letters_and_the_worker_goes_on(settings, moderator):
    keys = Keys(settings.key_prefix)
    client = connect(settings.redis_url)
    client.xadd(keys.posts, {"id": "bad-json", "post": "{not json", "t": "0"})
    client.xadd(keys.posts, {"id": "no-post-field", "t": "0"})
    client.xadd(keys.posts, {"id": "empty-text", "post": json.dumps({"text": "  "}), "t": "0"})
    with LiveServer(settings) as api, WorkerThread(settings, moderator):
        [good] = submit(api.url, 1, "after-poison")
        assert wait_for_decision(api.url, good).json()["status"] == "decided"
        wait_until(lambda: client.xlen(keys.dead) == 3, 30, "three dead letters")
        r = httpx.get(f"{api.url}/v1/posts/bad-json/decision")
        assert r.status_code == 200
        assert r.json()["status"] == "failed"
        assert "malformed" in r.json()["error"]
    dead = {f["id"]: f for _, f in client.xrange(keys.dead)}
    assert set(dead) == {"bad-json", "no-post-field", "empty-text"}
    assert "text is empty" in dead["empty-text"]["error"]
    assert client.xlen(keys.posts) == 0, "dead-lettered entries must leave the stream"


def test_a_poison_entry_fails_alone_and_its_batch_is_decided(settings, moderator):
    """Entries queued before the schema bounded times (year 1, naive, with an author) once
    killed the worker in its author-activity step; now only that entry is dead-lettered."""
    keys = Keys(settings.key_prefix)
    client = connect(settings.redis_url)
    poison = {"text": "hello", "created_at": "0001-01-01T00:00:00", "author": {"id": "u1"}}
    client.xadd(keys.posts, {"id": "poison-1", "post": json.dumps(poison), "t": "0"})
    with LiveServer(settings) as api:
        good = [{"post_id": f"good-{i}", "text": TEXTS[i % len(TEXTS)], "author": {"id": "u1"},
                 "created_at": "2025-01-13T10:00:00"} for i in range(20)]  # fmt: skip
        r = httpx.post(f"{api.url}/v1/posts/batch", json={"posts": good}, timeout=30)
        assert r.status_code == 202 and r.json()["accepted"] == 20
        worker = WorkerThread(settings, moderator)
        with worker:
            for p in good:
                assert wait_for_decision(api.url, p["post_id"]).json()["status"] == "decided"
            wait_until(lambda: client.xlen(keys.dead) == 1, 30, "the poison entry's dead letter")
            assert worker.thread.is_alive(), "the worker died on the poison entry"
        r = httpx.get(f"{api.url}/v1/posts/poison-1/decision")
        assert r.json()["status"] == "failed" and "created_at" in r.json()["error"]
    assert [f["id"] for _, f in client.xrange(keys.dead)] == ["poison-1"]
    assert sorted(audit_ids(client, keys)) == sorted(p["post_id"] for p in good)


class FaultInjectingModerator(Moderator):
    """The real moderator, except that any batch holding a POISON post raises after its
    forward pass (decide calls conclude too: both the worker's paths meet it)."""

    def __init__(self, real: Moderator) -> None:
        super().__init__(real.policy, real.classifier)

    def conclude(self, fw):
        if any("POISON" in j.post.text for j in fw.jobs):
            raise RuntimeError("injected failure")
        return super().conclude(fw)


def test_a_post_that_keeps_failing_is_dead_lettered_after_max_deliveries(settings, moderator):
    keys = Keys(settings.key_prefix)
    client = connect(settings.redis_url)
    with LiveServer(settings) as api:
        posts = [{"post_id": "ok-1", "text": "hello there"}, {"post_id": "poison", "text": "POISON pill"},
                 {"post_id": "ok-2", "text": "你好朋友们"}]  # fmt: skip
        assert httpx.post(f"{api.url}/v1/posts/batch", json={"posts": posts}).status_code == 202
        with WorkerThread(settings, FaultInjectingModerator(moderator)):
            # the rest of the batch is decided at once, the poison one is retried then given up
            assert wait_for_decision(api.url, "ok-1").json()["status"] == "decided"
            assert wait_for_decision(api.url, "ok-2").json()["status"] == "decided"
            wait_until(
                lambda: client.xlen(keys.dead) == 1, 30, "the poison post to be dead-lettered"
            )
        r = httpx.get(f"{api.url}/v1/posts/poison/decision")
        assert r.json()["status"] == "failed"
        assert "injected failure" in r.json()["error"]
    assert client.hlen(keys.failures) == 0
    assert sorted(audit_ids(client, keys)) == ["ok-1", "ok-2"]


class ThreadRecordingModerator(Moderator):
    """The real moderator, noting which thread runs each half of the decide path."""

    def __init__(self, real: Moderator) -> None:
        super().__init__(real.policy, real.classifier)
        self.threads: dict[str, set[str]] = {"forward": set(), "conclude": set()}

    def forward(self, jobs):
        self.threads["forward"].add(threading.current_thread().name)
        return super().forward(jobs)

    def conclude(self, fw):
        self.threads["conclude"].add(threading.current_thread().name)
        return super().conclude(fw)


def test_batches_overlap_and_a_stop_finishes_every_batch_in_hand(settings, moderator):
    """The served loop concludes and stores a batch in its finisher thread while the next
    one goes forward, so two batches may be in hand: a stop stores both, leaving nothing
    pending, and every post read is decided once."""
    settings = settings.model_copy(update={"batch_size": 8})
    keys = Keys(settings.key_prefix)
    client = connect(settings.redis_url)
    recorder = ThreadRecordingModerator(moderator)
    with LiveServer(settings) as api:
        ids = submit(api.url, 120, "overlap")
        worker = WorkerThread(settings, recorder)
        with worker:
            wait_until(lambda: worker.worker.decided >= 24, 120, "three batches stored")
        assert not worker.thread.is_alive()
    assert consumer_pending(client, keys, settings.consumer_group) in ({}, {"test-worker": 0})
    decided = audit_ids(client, keys)
    assert len(decided) == len(set(decided)) == worker.worker.decided >= 24
    assert set(decided) <= set(ids) and client.xlen(keys.posts) == len(ids) - len(decided)
    assert recorder.threads["forward"] == {worker.thread.name}
    assert {t.split("_")[0] for t in recorder.threads["conclude"]} == {"finish-test-worker"}


def test_entry_redelivered_too_often_is_dead_lettered(settings, moderator):
    """Workers that die on a post (e.g. out of memory) must not loop on it forever."""
    keys = Keys(settings.key_prefix)
    client = connect(settings.redis_url)
    client.xgroup_create(keys.posts, settings.consumer_group, id="0", mkstream=True)
    entry = client.xadd(keys.posts, {"id": "crasher", "post": json.dumps({"text": "hi"}), "t": "0"})
    client.xreadgroup(settings.consumer_group, "dead-worker", {keys.posts: ">"})
    client.xclaim(keys.posts, settings.consumer_group, "dead-worker", 0, [entry],
                  retrycount=redelivery_limit(settings))  # fmt: skip
    with WorkerThread(settings, moderator):
        wait_until(lambda: client.xlen(keys.dead) == 1, 30, "dead letter")
    [(_, fields)] = client.xrange(keys.dead)
    assert fields["id"] == "crasher"
    assert "delivered" in fields["error"]
    assert client.get(keys.decision("crasher")) is None


def test_idle_consumers_holding_nothing_leave_the_group(settings, moderator):
    """Workers gone for good leave a consumer behind; it is removed once idle, unless it
    still holds entries (those wait for XAUTOCLAIM)."""
    settings = settings.model_copy(update={"consumer_idle_remove_s": 10})
    keys = Keys(settings.key_prefix)
    client = connect(settings.redis_url)
    client.xgroup_create(keys.posts, settings.consumer_group, id="0", mkstream=True)
    client.xgroup_createconsumer(keys.posts, settings.consumer_group, "gone-empty")
    client.xadd(keys.posts, {"id": "held", "post": json.dumps({"text": "hi"}), "t": "0"})
    client.xreadgroup(settings.consumer_group, "gone-holding", {keys.posts: ">"}, count=1)
    names = lambda: {c["name"] for c in client.xinfo_consumers(keys.posts, settings.consumer_group)}  # noqa: E731
    assert {"gone-empty", "gone-holding"} <= names()
    with WorkerThread(settings.model_copy(update={"claim_idle_ms": 3_600_000}), moderator):
        wait_until(lambda: "gone-empty" not in names(), 40, "the idle consumer to be removed")
    assert "gone-holding" in names(), "a consumer with pending entries must stay"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_graceful_stop_finishes_the_batch_in_hand(redis_url, model_dir, sig):
    settings = make_settings(redis_url, model_dir, batch_size=32)
    keys = Keys(settings.key_prefix)
    client = connect(redis_url)
    with LiveServer(settings) as api:
        ids = submit(api.url, 32, "term")
        returncode, out = signal_when_busy(client, settings, sig)
        assert returncode == 0, out
        assert "finishing the batch in hand" in out
    assert not any(consumer_pending(client, keys, settings.consumer_group).values())
    decided = audit_ids(client, keys)
    assert decided, "the batch in hand was dropped"
    assert len(decided) == len(set(decided))
    # what was not decided is still queued for the next worker
    assert len(decided) + client.xlen(keys.posts) == len(ids)
