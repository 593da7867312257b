"""Live policy: hot reload under load, broken edits refused, versions kept, shadow mode,
author signals counted in Redis. Real Redis, real model, real HTTP."""

from __future__ import annotations

import collections
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from service.config import REPO_ROOT
from service.policy import load_policy
from service.queue import Keys
from service.redisdb import connect
from service.store import AuthorActivity
from tests.conftest import LiveServer, WorkerThread, make_settings, wait_for_decision, wait_until

DEFAULT = REPO_ROOT / "policies" / "default.yaml"
# in the default policy English posts are labelled in the cn feed; the edit limits their reach
LABEL_RULE = "    when: {language: [en]}\n    action: label\n"
LIMIT_RULE = "    when: {language: [en]}\n    action: limit_reach\n"


def policy_copy(tmp_path: Path, edit: tuple[str, str] | None = None) -> Path:
    text = DEFAULT.read_text("utf-8")
    assert LABEL_RULE in text, "the default policy changed: update this test"
    if edit:
        text = text.replace(*edit)
    path = tmp_path / "policy.yaml"
    path.write_text(text, "utf-8")
    shutil.copytree(DEFAULT.parent / "lists", tmp_path / "lists", dirs_exist_ok=True)
    return path


@pytest.fixture
def live(redis_url, model_dir, moderator, tmp_path):
    """API watching a copy of the default policy, one worker, a fresh key prefix."""
    path = policy_copy(tmp_path)
    settings = make_settings(redis_url, model_dir, policy_path=path, policy_watch_interval_s=0.2)
    moderator.use_policy(load_policy(path))
    moderator.use_shadow(None)
    try:
        with LiveServer(settings) as api, WorkerThread(settings, moderator):
            yield api, settings, path
    finally:  # the moderator is shared by the whole session
        moderator.use_policy(load_policy(DEFAULT))
        moderator.use_shadow(None)
    client = connect(redis_url)
    for key in client.scan_iter(f"{settings.key_prefix}:*"):
        client.delete(key)


def test_edit_under_load_changes_new_decisions_without_loss(live):
    api, settings, path = live
    http = httpx.Client(base_url=api.url, timeout=30)
    old = http.get("/v1/policy").json()["live"]["version"]
    sent: list[str] = []
    stop = threading.Event()

    def load() -> None:
        n = 0
        while not stop.is_set() and n < 40:
            posts = [{"post_id": f"load-{n}-{i}", "text": f"hello from Ohio, day {n} post {i}",
                      "market": "cn"} for i in range(8)]  # fmt: skip
            r = http.post("/v1/posts/batch", json={"posts": posts})
            assert r.status_code == 202
            sent.extend(p["post_id"] for p in posts)
            n += 1
            time.sleep(0.1)

    loader = threading.Thread(target=load)
    loader.start()
    time.sleep(1.0)
    path.write_text(path.read_text("utf-8").replace(LABEL_RULE, LIMIT_RULE), "utf-8")
    swapped_at = time.monotonic()
    new = wait_until(lambda: (v := http.get("/v1/policy").json()["live"]["version"]) != old and v,
                     10, "the watcher to publish the edit")  # fmt: skip
    publish_s = time.monotonic() - swapped_at
    loader.join()
    stop.set()
    decisions = [wait_for_decision(api.url, pid, timeout=120).json() for pid in sent]

    client = connect(settings.redis_url)
    audit = collections.Counter(f["id"] for _, f in client.xrange(Keys(settings.key_prefix).audit))
    assert set(audit) == set(sent), "posts were lost across the swap"
    assert max(audit.values()) == 1, "a post was decided twice across the swap"
    versions = [d["policy"]["version"] for d in decisions]
    assert set(versions) == {old, new}, "both versions should have decided part of the load"
    # once the new version decided a post, no later post went back to the old one
    first_new = versions.index(new)
    assert all(v == new for v in versions[first_new:])
    for d in decisions:
        expected = "limit_reach" if d["policy"]["version"] == new else "label"
        assert d["action"] == expected, d
    assert publish_s < 5


def test_a_broken_edit_is_refused_and_the_live_policy_stays(live):
    api, settings, path = live
    http = httpx.Client(base_url=api.url, timeout=30)
    before = http.get("/v1/policy").json()["live"]["version"]
    good = path.read_text("utf-8")
    path.write_text(good.replace("action: limit_reach", "action: limit_reech", 1), "utf-8")
    time.sleep(1.0)  # several watcher periods
    assert http.get("/v1/policy").json()["live"]["version"] == before
    r = http.post("/v1/policy/reload")
    assert r.status_code == 422
    body = r.json()
    assert body["error"] == "invalid_policy"
    [err] = body["detail"]
    line = (
        good.splitlines().index("    action: limit_reach") + 1
        if "    action: limit_reach" in good.splitlines()
        else None
    )
    assert err["field"] == "policy"
    assert err["message"].startswith(f"{path}:{line}:") if line else str(path) in err["message"]
    assert "limit_reech" in err["message"] or "action" in err["message"]
    # the same errors as `floodgate policy check`
    check = subprocess.run([sys.executable, "-m", "service", "policy", "check", str(path)],
                           capture_output=True, text=True)  # fmt: skip
    assert check.returncode == 1
    assert check.stderr.strip() == err["message"]
    # posts are still decided, by the last good version
    assert (
        http.post("/v1/posts", json={"text": "hello there", "post_id": "after-bad"}).status_code
        == 202
    )
    assert wait_for_decision(api.url, "after-bad").json()["policy"]["version"] == before
    # fixing the file publishes again: the admin call answers with the fixed version (the
    # watcher, polling every 0.2 s, may have published it a moment before: changed is then
    # false, the version the same)
    path.write_text(good.replace(LABEL_RULE, LIMIT_RULE), "utf-8")
    r = http.post("/v1/policy/reload")
    assert r.status_code == 200 and r.json()["version"] != before
    fixed = r.json()["version"]
    assert http.get("/v1/policy").json()["live"]["version"] == fixed
    # every version that has been live is kept, with its exact text
    history = http.get("/v1/policy/versions").json()
    assert [h["version"] for h in history if h["role"] == "live"][:2] == [fixed, before]
    bundle = http.get(f"/v1/policy/versions/{fixed}").json()
    assert bundle["policy"] == good.replace(LABEL_RULE, LIMIT_RULE)
    assert http.get("/v1/policy/versions/nope").status_code == 404


def test_shadow_policy_is_recorded_not_applied(live, tmp_path):
    api, settings, _ = live
    http = httpx.Client(base_url=api.url, timeout=30)
    (tmp_path / "cand").mkdir()
    candidate = policy_copy(tmp_path / "cand", (LABEL_RULE, LIMIT_RULE))
    bad = tmp_path / "cand" / "bad.yaml"
    bad.write_text("name: x\nrules: []\n", "utf-8")
    assert http.post("/v1/policy/shadow", json={"name": "cand/bad.yaml"}).status_code == 422
    assert candidate == tmp_path / "cand" / "policy.yaml"  # named inside the policy directory
    r = http.post("/v1/policy/shadow", json={"name": "cand/policy.yaml"})
    assert r.status_code == 200, r.text
    shadow_version = r.json()["version"]
    assert http.get("/v1/policy").json()["shadow"]["version"] == shadow_version

    def submitted_and_decided(post_id: str, text: str) -> dict:
        assert (
            http.post(
                "/v1/posts", json={"post_id": post_id, "text": text, "market": "cn"}
            ).status_code
            == 202
        )
        return wait_for_decision(api.url, post_id).json()

    # the worker picks the shadow up between batches
    wait_until(lambda: submitted_and_decided(f"probe-{time.monotonic_ns()}", "hi there friends")["shadow"],
               20, "the shadow policy to run")  # fmt: skip
    en = submitted_and_decided("shadow-en", "hello from Texas, love this app")
    zh = submitted_and_decided("shadow-zh", "今天做了红烧肉，味道还不错")
    assert en["action"] == "label", "the shadow policy must not be applied"
    assert en["shadow"]["action"] == "limit_reach"
    assert en["shadow"]["policy"]["version"] == shadow_version
    assert zh["shadow"]["action"] == zh["action"]

    stats = http.get("/v1/stats").json()["shadow"]
    assert stats["version"] == shadow_version
    assert stats["differ"] >= 2 and stats["total"] >= 3
    assert {"language": "en", "live": "label", "shadow": "limit_reach"}.items() <= stats[
        "transitions"
    ][0].items()
    assert any(e["post_id"] == "shadow-en" for e in stats["examples"])

    env = {
        **os.environ,
        "REDIS_URL": settings.redis_url,
        "FLOODGATE_KEY_PREFIX": settings.key_prefix,
    }
    report = subprocess.run([sys.executable, "-m", "service", "policy", "shadow-report", "--json"],
                            capture_output=True, text=True, env=env)  # fmt: skip
    assert report.returncode == 0, report.stderr
    data = json.loads(report.stdout)
    assert data["version"] == shadow_version and data["differ"] == stats["differ"]

    assert http.delete("/v1/policy/shadow").json() == {"stopped": True}
    wait_until(lambda: submitted_and_decided(f"after-{time.monotonic_ns()}", "hi again")["shadow"] is None,
               20, "the shadow policy to stop")  # fmt: skip


def test_author_activity_counts_each_post_once_per_window(settings):
    activity = AuthorActivity(connect(settings.redis_url), Keys(settings.key_prefix))
    t0 = 1_700_000_000_000
    minute = 60_000
    posts = [("a1", f"p{i}", t0 + i * minute) for i in range(5)] + [("a2", "q0", t0 + 4 * minute)]
    counts = activity.record_and_count(posts, [2, 10])
    assert [c[10] for c in counts[:5]] == [1, 2, 3, 4, 5]
    assert [c[2] for c in counts[:5]] == [1, 2, 3, 3, 3]  # window includes both ends
    assert counts[5] == {2: 1, 10: 1}
    # a redelivered post is not counted again
    again = activity.record_and_count([("a1", "p4", t0 + 4 * minute)], [10])
    assert again == [{10: 5}]


def test_bursty_author_rule_through_the_worker(redis_url, model_dir, moderator, tmp_path):
    burst_rule = (
        "  - id: burst\n    when: {author_posts: {within_minutes: 10, at_least: 3}}\n"
        "    action: limit_reach\n    labels: [posting_burst]\n"
    )
    default = DEFAULT.read_text("utf-8")
    # the rule joins the rules list, which ends where the next top-level section starts
    head, sep, tail = default.partition("\nreview:")
    text = head.rstrip("\n") + "\n" + burst_rule + sep + tail if sep else default + burst_rule
    path = tmp_path / "burst.yaml"
    path.write_text(text, "utf-8")
    shutil.copytree(DEFAULT.parent / "lists", tmp_path / "lists")
    settings = make_settings(redis_url, model_dir, policy_path=path, policy_watch=False)
    moderator.use_policy(load_policy(path))
    try:
        with LiveServer(settings) as api, WorkerThread(settings, moderator):
            actions = []
            for i in range(4):
                post = {"post_id": f"burst-{i}", "text": f"你好，今天天气不错 {i}", "market": "intl",
                        "author": {"id": "spammy"}}  # fmt: skip
                assert httpx.post(f"{api.url}/v1/posts", json=post).status_code == 202
                d = wait_for_decision(api.url, f"burst-{i}").json()
                actions.append(d["action"])
            assert actions == ["allow", "allow", "limit_reach", "limit_reach"]
            [reason] = [r for r in d["reasons"] if r["rule"] == "burst"]
            assert reason["signals"] == {"author_posts_10m": 4}
    finally:
        moderator.use_policy(load_policy(DEFAULT))
        client = connect(redis_url)
        for key in client.scan_iter(f"{settings.key_prefix}:*"):
            client.delete(key)


def test_cli_check_reports_every_error_with_file_and_line(tmp_path):
    path = tmp_path / "p.yaml"
    shutil.copy(DEFAULT, path)
    shutil.copytree(DEFAULT.parent / "lists", tmp_path / "lists")
    ok = subprocess.run([sys.executable, "-m", "service", "policy", "check", str(path)],
                        capture_output=True, text=True)  # fmt: skip
    assert ok.returncode == 0 and "ok" in ok.stdout
    text = path.read_text("utf-8").replace("threshold: 0.50", "threshold: 1.50", 1).replace(
        "action: review", "actoin: review", 1)  # fmt: skip
    path.write_text(text, "utf-8")
    bad = subprocess.run([sys.executable, "-m", "service", "policy", "check", str(path)],
                         capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 1
    lines = bad.stderr.strip().splitlines()
    assert any("threshold" in x and "less than or equal to 1" in x for x in lines), lines
    assert any("unknown key 'actoin'" in x and "did you mean 'action'" in x for x in lines), lines
    assert all(x.startswith(f"{path}:") for x in lines)
