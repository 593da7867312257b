"""Fault injection: `floodgate serve` as a real process tree, broken on purpose, recovers alone.

One deployment (API, one supervised worker process, the embedded redis-server with its
append-only file) on a private data dir serves the whole module; each test breaks it one
way while clients keep sending, then checks the same things:

* 0 accepted posts lost, 0 decided twice (the audit stream holds each post once);
* every good post decided, every bad post dead-lettered alone with its error;
* no 5xx but a JSON 503 with Retry-After while Redis is away (never a plain-text 500);
* healthy again within a stated time, without a human.

The measured table is in README.md (Guarantees). Bounded in time: every wait has a limit.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from service.config import REPO_ROOT
from service.queue import Keys
from service.redisdb import connect
from tests.conftest import free_port

CRASH = "CRASH-MARKER-5e1f"  # FLOODGATE_FAULT_CRASH_MARKER: a worker reading it dies (SIGKILL)
BACKLOG_BOUND = 400
RECOVERY_S = 60  # the stated bound: healthy again within this, by itself
TEXTS = ["hello from Texas, love this app", "今天做了红烧肉，味道还不错", "my cat knocked over my coffee",
         "我們今天去台北吃東西", "buy cheap followers now dm me", "hi 大家好 I'm new here"]  # fmt: skip
LABEL_RULE = "    when: {language: [en]}\n    action: label\n"
LIMIT_RULE = "    when: {language: [en]}\n    action: limit_reach\n"


class Deployment:
    def __init__(self, root: Path, model_dir: Path) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.policy = root / "policies" / "default.yaml"
        shutil.copytree(REPO_ROOT / "policies", root / "policies")
        env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "FLOODGATE_REDIS_URL")}
        env.update(
            FLOODGATE_DATA_DIR=str(root / "data"), FLOODGATE_MODEL_DIR=str(model_dir),
            FLOODGATE_POLICY_PATH=str(self.policy), FLOODGATE_POLICY_WATCH_INTERVAL_S="0.3",
            FLOODGATE_TORCH_THREADS="1", FLOODGATE_BATCH_SIZE="16", FLOODGATE_CLAIM_IDLE_MS="1500",
            FLOODGATE_MAX_DELIVERIES="1", FLOODGATE_MAX_BACKLOG=str(BACKLOG_BOUND),
            FLOODGATE_HEARTBEAT_INTERVAL_S="0.5", FLOODGATE_HEARTBEAT_TTL_S="3",
            FLOODGATE_FAULT_CRASH_MARKER=CRASH, FLOODGATE_REDIS_POOL_TIMEOUT_S="20",
        )  # fmt: skip
        self.log = open(root / "serve.log", "w+")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen([sys.executable, "-m", "service", "serve", "--port", str(self.port)],
                                     env=env, stdout=self.log, stderr=subprocess.STDOUT)  # fmt: skip
        self.http = httpx.Client(base_url=self.url, timeout=30)
        self.sent: set[str] = set()  # ids the API accepted (202 queued/duplicate)

    @property
    def redis(self):
        return connect(f"unix://{self.root / 'data' / 'redis' / 'redis.sock'}")

    @property
    def keys(self) -> Keys:
        return Keys("fg")

    def log_text(self) -> str:
        self.log.flush()
        return (self.root / "serve.log").read_text(errors="replace")

    def wait_healthy(self, timeout: float = RECOVERY_S) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            try:
                if self.http.get("/healthz", timeout=2).status_code == 200:
                    return time.monotonic() - started
            except httpx.HTTPError:
                pass
            assert self.proc.poll() is None, f"serve exited:\n{self.log_text()[-3000:]}"
            time.sleep(0.2)
        raise AssertionError(f"not healthy within {timeout} s:\n{self.log_text()[-3000:]}")

    def worker_pid(self) -> int:
        workers = self.http.get("/v1/stats").json()["workers"]
        assert len(workers) == 1, workers
        return int(workers[0]["pid"])

    def submit(self, posts: list[dict]) -> httpx.Response:
        r = self.http.post("/v1/posts/batch", json={"posts": posts})
        if r.status_code == 202:
            self.sent |= {res["post_id"] for res in r.json()["results"] if res["status"] != "rejected"}
        return r

    def wait_decided(self, ids, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        todo = set(ids)
        while todo and time.monotonic() < deadline:
            with self.redis.pipeline(transaction=False) as pipe:
                ordered = sorted(todo)
                for pid in ordered:
                    pipe.exists(self.keys.decision(pid), self.keys.failed(pid))
                done = {pid for pid, n in zip(ordered, pipe.execute(), strict=True) if n}
            todo -= done
            time.sleep(0.2)
        assert not todo, f"{len(todo)} posts never decided, e.g. {sorted(todo)[:5]}"

    def audit_counts(self) -> collections.Counter:
        return collections.Counter(f["id"] for _, f in self.redis.xrange(self.keys.audit))

    def dead(self) -> dict[str, str]:
        return {f["id"]: f["error"] for _, f in self.redis.xrange(self.keys.dead)}

    def stop(self) -> None:
        self.http.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


@pytest.fixture(scope="module")
def dep(tmp_path_factory, model_dir):
    d = Deployment(tmp_path_factory.mktemp("faults"), model_dir)
    try:
        d.wait_healthy(120)
        yield d
    finally:
        d.stop()


def posts(tag: str, n: int, **extra) -> list[dict]:
    return [{"post_id": f"{tag}-{i}", "text": f"{TEXTS[i % len(TEXTS)]} #{i}", **extra} for i in range(n)]


def assert_exactly_once(dep: Deployment, ids, dead: set[str] = frozenset()) -> None:
    counts = dep.audit_counts()
    twice = [k for k, v in counts.items() if v > 1]
    assert not twice, f"decided twice: {twice[:5]}"
    decided = {i for i in ids if counts.get(i)}
    assert decided | (set(ids) & dead) == set(ids), "an accepted post was lost"
    assert not decided & dead, "a post was decided and dead-lettered"


class Load:
    """Clients sending batches and reading decisions in the background; records statuses."""

    def __init__(self, dep: Deployment, tag: str, batches: int = 40, size: int = 5) -> None:
        self.dep, self.tag, self.batches, self.size = dep, tag, batches, size
        self.statuses: collections.Counter = collections.Counter()
        self.bad: list[str] = []
        self.ids: set[str] = set()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.dep.url, timeout=30) as http:
            for b in range(self.batches):
                batch = posts(f"{self.tag}-{b}", self.size)
                for route in ("batch", "stats", "decision"):
                    try:
                        if route == "batch":
                            r = http.post("/v1/posts/batch", json={"posts": batch})
                        elif route == "stats":
                            r = http.get("/v1/stats")
                        else:
                            r = http.get(f"/v1/posts/{batch[0]['post_id']}/decision")
                    except httpx.HTTPError as exc:
                        self.statuses[type(exc).__name__] += 1
                        continue
                    self.statuses[r.status_code] += 1
                    if r.status_code >= 500:
                        ok = (r.status_code == 503 and r.headers.get("retry-after")
                              and r.headers["content-type"].startswith("application/json")
                              and r.json()["error"] == "unavailable")  # fmt: skip
                        if not ok:
                            self.bad.append(f"{r.status_code} {r.headers.get('content-type')} {r.text[:200]}")
                    if route == "batch" and r.status_code == 202:
                        self.ids |= {x["post_id"] for x in r.json()["results"] if x["status"] != "rejected"}
                time.sleep(0.05)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._thread.join(120)


# ---------------------------------------------------------------------------- the table


def kill_under_load(dep: Deployment, pid: int, tag: str, batches: int) -> tuple[Load, float]:
    """SIGKILL `pid` while clients send; then every accepted post decided exactly once."""
    with Load(dep, tag, batches=batches) as load:
        time.sleep(0.5)
        os.kill(pid, signal.SIGKILL)
    recovered = dep.wait_healthy()
    dep.sent |= load.ids
    dep.wait_decided(load.ids)
    assert_exactly_once(dep, load.ids)
    return load, recovered


def test_sigkill_a_worker_mid_batch(dep: Deployment):
    pid = dep.worker_pid()
    load, recovered = kill_under_load(dep, pid, "kill", 30)
    assert dep.worker_pid() != pid
    assert "killed by SIGKILL; restarting" in dep.log_text()
    assert not load.bad, load.bad[:3]
    print(f"worker SIGKILL: healthy again in {recovered:.1f} s, statuses {dict(load.statuses)}")


def test_sigkill_redis_mid_load_and_it_comes_back(dep: Deployment):
    pid = int((dep.root / "data" / "redis" / "redis.pid").read_text())
    load, recovered = kill_under_load(dep, pid, "redis", 40)
    assert not load.bad, f"a 5xx other than a JSON 503: {load.bad[:3]}"
    assert "embedded redis-server killed by SIGKILL" in dep.log_text()
    # what was accepted before the kill is still there (append-only file, fsync always)
    assert_exactly_once(dep, dep.sent)
    print(f"redis SIGKILL: healthy again in {recovered:.1f} s, statuses {dict(load.statuses)}")


def test_poison_posts_fail_alone(dep: Deployment):
    # refused at the door: a 422 naming the field, nothing queued
    r = dep.http.post("/v1/posts", json={"post_id": "poison-year1", "text": "hello",
                                        "created_at": "0001-01-01T00:00:00", "author": {"id": "u1"}})  # fmt: skip
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "created_at"
    # already in the stream (an older API, another producer): malformed entries
    client = dep.redis
    client.xadd(dep.keys.posts, {"id": "poison-json", "post": "{not json", "t": "0"})
    client.xadd(dep.keys.posts, {"id": "poison-year", "t": "0", "post": json.dumps(
        {"text": "hi", "created_at": "0001-01-01T00:00:00", "author": {"id": "u1"}})})  # fmt: skip
    # and a post that crashes the worker process whenever it is decided
    good = posts("beside-poison", 20, author={"id": "u2"})
    crash = {"post_id": "poison-crash", "text": f"looks harmless {CRASH}"}
    r = dep.submit(good[:10] + [crash] + good[10:])
    assert r.status_code == 202 and r.json()["accepted"] == 21
    # one crash with its batch, one alone; the third start dead-letters it
    dep.wait_decided([p["post_id"] for p in good] + ["poison-json", "poison-year", "poison-crash"], 240)
    dead = dep.dead()
    assert {"poison-json", "poison-year", "poison-crash"} <= set(dead)
    assert "malformed" in dead["poison-json"] and "created_at" in dead["poison-year"]
    assert "crashed the worker" in dead["poison-crash"]
    assert not {p["post_id"] for p in good} & set(dead), "a good post was dead-lettered"
    assert_exactly_once(dep, [p["post_id"] for p in good])
    r = dep.http.get("/v1/posts/poison-crash/decision")
    assert r.json()["status"] == "failed"
    dep.wait_healthy()


def test_two_hundred_concurrent_clients(dep: Deployment):
    statuses: collections.Counter = collections.Counter()
    bad: list[str] = []
    ids: set[str] = set()
    lock = threading.Lock()

    def client(i: int) -> None:
        with httpx.Client(base_url=dep.url, timeout=60) as http:
            for j in range(3):
                try:
                    r = http.post("/v1/posts", json={"post_id": f"conc-{i}-{j}", "text": TEXTS[(i + j) % 6]})
                    s = http.get(f"/v1/posts/conc-{i}-{j}/decision")
                except httpx.HTTPError as exc:
                    with lock:
                        statuses[type(exc).__name__] += 1
                    continue
                with lock:
                    statuses[r.status_code] += 1
                    statuses[s.status_code] += 1
                    if r.status_code == 202:
                        ids.add(f"conc-{i}-{j}")
                    bad.extend(x.text[:200] for x in (r, s) if x.status_code >= 500)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(200)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not bad, f"server errors under 200 clients: {bad[:3]}"
    assert set(statuses) <= {200, 202}, statuses  # the pool waits; nothing refused or dropped
    dep.sent |= ids
    dep.wait_decided(ids, 120)
    assert_exactly_once(dep, ids)


def test_a_backlog_over_the_bound_is_refused_and_nothing_accepted_is_lost(dep: Deployment):
    # the worker is stopped (SIGSTOP) so the backlog only grows
    pid = dep.worker_pid()
    os.kill(pid, signal.SIGSTOP)
    try:
        accepted, refused = [], []
        for b in range(6):
            r = dep.submit(posts(f"flood-{b}", 100))
            assert r.status_code == 202
            for res in r.json()["results"]:
                if res["status"] == "rejected":
                    assert res["errors"][0]["type"] == "backlog_full"
                    refused.append(res["post_id"])
                else:
                    accepted.append(res["post_id"])
            if any(res["status"] == "rejected" for res in r.json()["results"]):
                assert int(r.headers["retry-after"]) >= 1
        one = dep.http.post("/v1/posts", json={"post_id": "flood-single", "text": "hello"})
        assert one.status_code == 429 and int(one.headers["retry-after"]) >= 1
        assert one.json()["error"] == "backlog_full"
        assert refused and dep.redis.xlen(dep.keys.posts) <= BACKLOG_BOUND
    finally:
        os.kill(pid, signal.SIGCONT)
    dep.wait_decided(accepted, 120)
    assert_exactly_once(dep, accepted)
    # the refused ones were never queued: sending them again once drained is accepted
    r = dep.submit([{"post_id": refused[0], "text": "hello again"}])
    assert r.json()["results"][0]["status"] == "queued"
    dep.wait_decided([refused[0]])


def test_a_policy_edit_during_load_loses_nothing(dep: Deployment):
    before = dep.http.get("/v1/policy").json()["live"]["version"]
    text = dep.policy.read_text("utf-8")
    assert LABEL_RULE in text
    with Load(dep, "edit", batches=30) as load:
        time.sleep(0.5)
        dep.policy.write_text(text.replace(LABEL_RULE, LIMIT_RULE), "utf-8")
    deadline = time.monotonic() + 20
    while dep.http.get("/v1/policy").json()["live"]["version"] == before:
        assert time.monotonic() < deadline, "the edit never went live"
        time.sleep(0.2)
    dep.wait_decided(load.ids)
    assert_exactly_once(dep, load.ids)
    assert not load.bad
    versions = {json.loads(f["decision"])["policy"]["version"]
                for _, f in dep.redis.xrange(dep.keys.audit) if f["id"] in load.ids}  # fmt: skip
    assert versions <= {before, dep.http.get("/v1/policy").json()["live"]["version"]}


def test_every_accepted_post_of_the_module_was_decided_once(dep: Deployment):
    """Across every fault above: the append-only file and the write-once store held."""
    dep.wait_decided(dep.sent, 120)
    assert_exactly_once(dep, dep.sent, dead=set(dep.dead()))
    assert dep.wait_healthy() < RECOVERY_S
