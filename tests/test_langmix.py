"""Language-mix drift and policy profiles.

Pure tests of the window arithmetic, the alert's hysteresis and the profile overlay; the
monitor against a real Redis (counts, one judge, the compare-and-set); and the whole path
with the real model behind real HTTP: 2 % English, then a surge, the alert in /v1/stats and
/metrics, decisions under the `surge` profile, then cleared.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from service.config import REPO_ROOT
from service.langmix import drift
from service.langmix.store import DriftMonitor, MixKeys
from service.policy import Facts, PolicyError, evaluate, load_policy, parse_policy
from service.policy.model import LanguageMix
from service.redisdb import connect
from tests.conftest import (
    LiveServer,
    WorkerThread,
    make_settings,
    wait_for_decision,
    wait_until,
    worker_process,
)

DEFAULT = REPO_ROOT / "policies" / "default.yaml"

SPEC = LanguageMix(
    window_minutes=10, min_posts=40, baseline={"zh": 0.9, "en": 0.02},
    raise_at={"factor": 5, "jump": 0.05}, clear_at={"factor": 4, "jump": 0.04},
)  # fmt: skip  (en: raised at 10 %, cleared under 8 %; others: 5 % / 4 %)


# -- pure: windows, shares, the alert ---------------------------------------------------------


def test_window_reads_the_current_bucket_and_those_before_it():
    assert drift.bucket_of(125.9, 10) == 120
    assert drift.window_buckets(125, 60, 10) == [70, 80, 90, 100, 110, 120]
    assert drift.window_buckets(125, 5, 10) == [120]  # a window under a bucket: the current one
    assert drift.window_buckets(125, 61, 10) == [60, 70, 80, 90, 100, 110, 120]
    assert drift.bucket_ttl_s(600, 60) == 720


def test_counts_merge_and_shares():
    assert drift.count_languages(["en", "zh", "zh", "und"]) == {"en": 1, "zh": 2, "und": 1}
    merged = drift.merge_counts([{"zh": "3", "en": "1"}, {}, {"en": 2}])
    assert merged == {"zh": 3, "en": 3}
    assert drift.shares(merged) == {"en": 0.5, "zh": 0.5}
    assert drift.shares({}) == {}


def test_marks_come_from_the_baseline():
    assert drift.raise_mark(SPEC, "en") == pytest.approx(0.10)  # 0.02 x 5 beats 0.02 + 0.05
    assert drift.clear_mark(SPEC, "en") == pytest.approx(0.08)
    assert drift.raise_mark(SPEC, "ja") == pytest.approx(0.05)  # not declared: baseline 0
    assert drift.raise_mark(SPEC, "zh") > 1  # the majority language cannot "surge"


def _mix(en: int, zh: int, **others: int) -> dict[str, int]:
    return {"en": en, "zh": zh, **others}


def test_alert_raises_holds_between_the_marks_and_clears():
    calm = drift.assess(_mix(2, 98), SPEC, {}, now_ms=1000)
    assert calm.judged and not calm.raised and not calm.changed
    surge = drift.assess(_mix(20, 80), SPEC, calm.raised, now_ms=2000)
    [move] = surge.transitions
    assert (move.event, move.language, move.at_ms, move.posts) == ("raised", "en", 2000, 100)
    assert move.share == pytest.approx(0.2) and move.mark == pytest.approx(0.10)
    assert surge.raised["en"].since_ms == 2000
    # 9 %: under the raise mark but over the clear mark: still raised, since the same time
    between = drift.assess(_mix(9, 91), SPEC, surge.raised, now_ms=3000)
    assert not between.changed and between.raised["en"].since_ms == 2000
    cleared = drift.assess(_mix(7, 93), SPEC, between.raised, now_ms=4000)
    assert [(m.event, m.language) for m in cleared.transitions] == [("cleared", "en")]
    assert cleared.raised == {}
    # and back at 9 % it does not raise again: that is the hysteresis
    assert not drift.assess(_mix(9, 91), SPEC, cleared.raised, now_ms=5000).changed


def test_too_few_posts_move_nothing():
    few = drift.assess(_mix(30, 9), SPEC, {}, now_ms=1)  # 77 % English, but 39 posts
    assert not few.judged and not few.changed and few.posts == 39
    raised = drift.assess(_mix(30, 10), SPEC, {}, now_ms=1).raised
    quiet = drift.assess({}, SPEC, raised, now_ms=2)  # nothing in the window: stays raised
    assert not quiet.changed and set(quiet.raised) == {"en"}


def test_an_undeclared_language_raises_at_the_default_baseline():
    reading = drift.assess(_mix(2, 90, ja=8), SPEC, {}, now_ms=1)
    assert [m.language for m in reading.transitions] == ["ja"]


def test_state_snapshot_round_trips_the_alerts():
    reading = drift.assess(_mix(20, 80), SPEC, {}, now_ms=7)
    state = drift.snapshot(reading, SPEC, previous=None, now_ms=7, bucket_s=60,
                           profile="surge", policy_version="v1", evaluator="w1")  # fmt: skip
    assert drift.alerts_of(state) == reading.raised
    assert state["marks"]["en"] == {"baseline": 0.02, "raise": 0.1, "clear": 0.08}
    assert [h["event"] for h in state["history"]] == ["raised"]
    assert drift.summary(state, now_ms=2007)["age_s"] == 2.0
    assert drift.summary(None, now_ms=1) is None


# -- policy: the language_mix section and profiles ----------------------------------------------


def _en_facts(**scores: float) -> Facts:
    return Facts(text="my cat knocked over my coffee", language="en", script="Latn",
                 mixed=False, scores=scores, market="cn")  # fmt: skip


def test_default_policy_switches_to_surge_while_english_drifts():
    lp = load_policy(DEFAULT)
    assert lp.profile is None and lp.under(set()) is lp and lp.under({"ja"}) is lp
    surge = lp.under({"en"})
    assert (surge.profile, surge.version, surge.name) == ("surge", lp.version, lp.name)
    # an ordinary English post: labelled for the cn feed's ranking, never limited for its
    # language alone, surge or not
    assert evaluate(lp, _en_facts())["cn"].action == "label"
    assert evaluate(surge, _en_facts())["cn"].action == "label"
    assert evaluate(surge, _en_facts())["intl"].action == "allow"
    # English ads go to review from 0.4 under surge (harmful-other-review), 0.5 otherwise
    ad = _en_facts(scam_spam=0.45)
    assert evaluate(lp, replace(ad, market="intl"))["intl"].action == "allow"
    assert evaluate(surge, replace(ad, market="intl"))["intl"].action == "review"
    # the policy as written is untouched by its overlay
    rules = {r.id: r for r in lp.policy.rules}
    assert rules["english-in-cn-feed"].action == "label"
    assert rules["new-account-burst"].action == "review"
    assert {r.id: r for r in surge.policy.rules}["new-account-burst"].labels == [
        "new_account_burst", "pending_review"]  # fmt: skip


POLICY = """\
name: t
categories:
  spam: {description: spam and scams, threshold: 0.5, thresholds: {en: 0.6}}
rules:
  - {id: spam-limit, when: {category: spam}, action: limit_reach}
  - {id: en-label, when: {language: [en]}, action: label, labels: [foreign]}
language_mix:
  min_posts: 10
  baseline: {en: 0.02, zh: 0.9}
  on_drift:
    - {language: ja, profile: calm}
    - {language: en, profile: surge}
profiles:
  surge:
    rules:
      en-label: {enabled: false}
    categories:
      spam: {thresholds: {zh: 0.3}}
  calm:
    rules:
      spam-limit: {action: label, labels: [spam]}
"""


def test_overlay_disables_rules_merges_thresholds_and_first_drift_wins():
    lp = parse_policy(POLICY, source="t.yaml")
    surge = lp.profiles["surge"].policy
    assert [r.id for r in surge.rules] == ["spam-limit"]
    assert surge.categories["spam"].thresholds == {"en": 0.6, "zh": 0.3}
    assert surge.categories["spam"].threshold == 0.5
    calm = lp.profiles["calm"].policy
    assert [(r.action, r.labels) for r in calm.rules][0] == ("label", ["spam"])
    assert lp.under({"en", "ja"}).profile == "calm"  # on_drift order decides
    assert lp.under({"en"}).profile == "surge"
    # a policy without language_mix never switches
    plain = parse_policy(POLICY.split("language_mix:")[0], source="t.yaml")
    assert plain.under({"en"}) is plain


def _line_of(text: str, fragment: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if fragment in line)


@pytest.mark.parametrize(
    "old, new, at, message",
    [
        ("en-label: {enabled", "en-lable: {enabled", "en-lable: {", "unknown rule 'en-lable' (did you mean 'en-label'?)"),
        ("{action: label, labels: [spam]}", "{acton: label}", "spam-limit: {acton", "unknown key 'acton' (did you mean 'action'?)"),
        ("{enabled: false}", "{}", "en-label: {}", "empty change"),
        ("{action: label, labels: [spam]}", "{action: null}", "spam-limit: {action: null", "keys without a value: action"),
        ("spam: {thresholds: {zh: 0.3}}", "spma: {thresholds: {zh: 0.3}}", "spma:", "unknown category 'spma'"),
        ("profile: calm}", "profile: clam}", "profile: clam", "unknown profile 'clam' (did you mean 'calm'?)"),
        ("zh: 0.9}", "zh: 0.9, und: 0.09}", "baseline:", "add up to 1.01, more than 1"),
        ("min_posts: 10", "min_posts: 10\n  clear_at: {factor: 5, jump: 0.01}", "clear_at:", "clear_at must be under raise_at"),
        ("{language: ja, profile: calm}", "{language: en, profile: calm}", "{language: en, profile: surge}", "'en' is listed twice"),
        ("{enabled: false}", "{enabled: false}\n      spam-limit: {enabled: false}", "  surge:", "under this profile, rules: List should have at least 1 item"),
    ],
)  # fmt: skip
def test_profile_and_drift_errors_name_file_and_line(old, new, at, message):
    text = POLICY.replace(old, new)
    assert text != POLICY
    with pytest.raises(PolicyError) as info:
        parse_policy(text, source="t.yaml")
    [error] = [e for e in info.value.errors if message in e]
    assert error.startswith(f"t.yaml:{_line_of(text, at)}:"), info.value.errors


# -- the monitor against a real Redis ------------------------------------------------------------


@pytest.fixture
def rclient(settings):
    return connect(settings.redis_url)


def _policy(window_minutes: float = 1.0):
    text = POLICY.replace("min_posts: 10", f"min_posts: 10\n  window_minutes: {window_minutes}")
    return parse_policy(text, source="t.yaml")


def _batch(
    monitor: DriftMonitor, client, lp, languages: list[str], now_s: float, turn: bool = False
) -> frozenset:
    if turn:  # the judge's lock has expired: this batch's worker judges
        client.delete(monitor.keys.lock)
    with client.pipeline(transaction=False) as pipe:
        pipe.ping()  # the worker's own telemetry comes first in the same pipeline
        mine = monitor.queue(pipe, lp.policy, languages, now_s)
        results = pipe.execute()
    assert len(results) == 1 + mine
    monitor.settle(results[1:], lp.policy, lp.version, now_s)
    return monitor.current()


def test_monitor_counts_judges_and_the_window_moves_on(settings, rclient, caplog):
    caplog.set_level(logging.INFO, logger="floodgate.langmix")
    lp = _policy(window_minutes=1.0)
    m = DriftMonitor(rclient, settings.key_prefix, "w1", bucket_s=10, check_s=60)
    t = 1_000_000.0
    assert _batch(m, rclient, lp, ["zh"] * 49 + ["en"], t, turn=True) == frozenset()
    # the lock is held: counted, not judged
    assert _batch(m, rclient, lp, ["en"] * 10 + ["zh"] * 10, t + 15) == frozenset()
    assert _batch(m, rclient, lp, [], t + 15, turn=True) == {"en"}  # 11 of 70 posts
    keys = MixKeys(settings.key_prefix)
    assert rclient.hgetall(keys.bucket(1_000_010)) == {"en": "10", "zh": "10"}
    assert 0 < rclient.ttl(keys.bucket(1_000_010)) <= 60 + 20
    assert m.current() == {"en"}
    # a minute later the surge's bucket has left the window: 1 English post in 50 clears it
    assert _batch(m, rclient, lp, ["zh"] * 49 + ["en"], t + 80, turn=True) == frozenset()
    events = [r for r in caplog.records if getattr(r, "event", "").startswith("language_mix_")]
    assert [(r.event, r.language, r.profile) for r in events] == [
        ("language_mix_raised", "en", "surge"), ("language_mix_cleared", "en", None)]  # fmt: skip
    assert events[0].levelno == logging.WARNING and events[0].posts == 70


def test_one_judge_at_a_time_and_one_transition(settings, rclient, caplog):
    caplog.set_level(logging.INFO, logger="floodgate.langmix")
    lp = _policy()
    now = 2_000_000.0
    monitors = [DriftMonitor(rclient, settings.key_prefix, f"w{i}", 10, check_s=60) for i in range(4)]
    with rclient.pipeline(transaction=False) as pipe:  # a surge already counted
        pipe.hset(MixKeys(settings.key_prefix).bucket(int(now)), mapping={"en": 30, "zh": 70})
        pipe.execute()
    # the lock: of four workers' batches at once, one judges
    assert [_batch(m, rclient, lp, [], now) for m in monitors] == [{"en"}] * 4
    assert len([r for r in caplog.records if getattr(r, "event", "") == "language_mix_raised"]) == 1
    # the compare-and-set: judges that raced past the lock still move the state once
    rclient.delete(MixKeys(settings.key_prefix).state)
    caplog.clear()
    barrier = threading.Barrier(len(monitors))

    def judge(m: DriftMonitor) -> None:
        barrier.wait()
        m.judge(lp.policy, lp.version, now)

    threads = [threading.Thread(target=judge, args=(m,)) for m in monitors]
    for th in threads:
        th.start()
    for th in threads:
        th.join(10)
    raw = rclient.hget(MixKeys(settings.key_prefix).state, "data")
    history = json.loads(raw)["history"]
    assert [h["event"] for h in history] == ["raised"]
    assert len([r for r in caplog.records if getattr(r, "event", "") == "language_mix_raised"]) == 1


def test_a_policy_without_language_mix_counts_nothing(settings, rclient):
    plain = parse_policy(POLICY.split("language_mix:")[0], source="t.yaml")
    m = DriftMonitor(rclient, settings.key_prefix, "w1", 10, 0.001)
    assert _batch(m, rclient, plain, ["en"] * 50, 3_000_000.0, turn=True) == frozenset()
    assert not list(rclient.scan_iter(f"{settings.key_prefix}:langmix:*"))


# -- the whole path: real model, real worker, real HTTP --------------------------------------------


def _policy_copy(tmp_path: Path) -> Path:
    text = DEFAULT.read_text("utf-8")
    small = (("  window_minutes: 30\n  min_posts: 1000\n", "  window_minutes: 10\n  min_posts: 40\n"),
             ("clear_at: {factor: 2.5, jump: 0.03}", "clear_at: {factor: 4, jump: 0.04}"),
             # an overlay every English probe shows: the cn feed's label becomes a limit
             ("    rules:\n      new-account-burst:",
              "    rules:\n      english-in-cn-feed: {action: limit_reach}\n      new-account-burst:"))  # fmt: skip
    for old, new in small:
        assert old in text, "the default policy's language_mix changed: update this test"
        text = text.replace(old, new)
    path = tmp_path / "policy.yaml"
    path.write_text(text, "utf-8")
    shutil.copytree(DEFAULT.parent / "lists", tmp_path / "lists", dirs_exist_ok=True)
    return path


ZH = ["今天天气很好，我们去公园散步吧", "周末去爬山，风景真漂亮", "这家咖啡店的拿铁很好喝",
      "我家猫咪今天又打翻了水杯", "有没有人推荐好用的防晒霜", "今天做了红烧肉，味道还不错"]  # fmt: skip
EN = ["my cat knocked over my coffee again this morning", "the sunset over the river was "
      "beautiful tonight", "just made dumplings with my grandma, they turned out great",
      "what is the best hotpot place in Chengdu?"]  # fmt: skip


def _send(http: httpx.Client, tag: str, en: int, zh: int) -> list[str]:
    posts = [{"post_id": f"{tag}-en-{i}", "text": f"{EN[i % len(EN)]} #{tag}{i}", "market": "cn"}
             for i in range(en)]  # fmt: skip
    posts += [{"post_id": f"{tag}-zh-{i}", "text": f"{ZH[i % len(ZH)]} {tag}{i}", "market": "cn"}
              for i in range(zh)]  # fmt: skip
    for i in range(0, len(posts), 100):
        assert http.post("/v1/posts/batch", json={"posts": posts[i : i + 100]}).status_code == 202
    return [p["post_id"] for p in posts]


def _feed_rule(decision: dict) -> str:
    """The action english-in-cn-feed took on an English post in the cn market."""
    return next(r["action"] for r in decision["reasons"] if r["rule"] == "english-in-cn-feed")


def test_english_surge_raises_switches_profile_and_clears(
    redis_url, model_dir, moderator, tmp_path, caplog
):
    caplog.set_level(logging.INFO, logger="floodgate.langmix")
    path = _policy_copy(tmp_path)
    settings = make_settings(redis_url, model_dir, policy_path=path, language_mix_bucket_s=1,
                             language_mix_check_s=0.1)  # fmt: skip
    moderator.use_policy(load_policy(path))
    moderator.use_drift(["en"])  # left over by another test: the worker's start resets it
    try:
        with LiveServer(settings) as api, WorkerThread(settings, moderator):
            http = httpx.Client(base_url=api.url, timeout=30)

            def mix() -> dict:
                return http.get("/v1/stats").json()["language_mix"] or {"posts": 0}

            # 2 % English: counted, judged, nothing raised
            calm = _send(http, "calm", en=1, zh=49)
            before = wait_for_decision(api.url, calm[0], timeout=120).json()
            assert before["policy"]["profile"] is None and _feed_rule(before) == "label"
            state = wait_until(lambda: (m := mix())["posts"] >= 50 and m, 120, "the calm mix judged")
            assert state["judged"] and state["raised"] == {} and state["profile"] is None
            assert state["shares"]["en"] == pytest.approx(0.02, abs=0.02)

            # the influx: 40 % of the next 50 posts are English
            _send(http, "surge", en=20, zh=30)
            state = wait_until(lambda: (m := mix())["raised"] and m, 120, "the alert raised")
            assert set(state["raised"]) == {"en"} and state["profile"] == "surge"
            assert state["raised"]["en"]["share"] >= 0.10
            metrics = http.get("/metrics").text
            assert 'floodgate_language_mix_alert{language="en"} 1.0' in metrics
            assert 'floodgate_policy_profile_info{profile="surge"} 1.0' in metrics
            assert 'floodgate_language_share{language="en"}' in metrics
            [probe] = _send(http, "probe", en=1, zh=0)
            during = wait_for_decision(api.url, probe, timeout=120).json()
            assert during["policy"] == {**before["policy"], "profile": "surge"}
            assert during["action"] == "limit_reach" and _feed_rule(during) == "limit_reach"

            # English falls back under its clear mark (8 %): Chinese posts dilute the window
            _send(http, "after", en=0, zh=250)
            state = wait_until(lambda: (m := mix())["posts"] >= 351 and not m["raised"] and m,
                               180, "the alert cleared")  # fmt: skip
            assert [h["event"] for h in state["history"]] == ["raised", "cleared"]
            assert state["profile"] is None
            assert 'floodgate_language_mix_alert{language="en"} 0.0' in http.get("/metrics").text
            [probe] = _send(http, "probe2", en=1, zh=0)
            after = wait_for_decision(api.url, probe, timeout=120).json()
            assert after["policy"]["profile"] is None and _feed_rule(after) == "label"
        events = [r.event for r in caplog.records if getattr(r, "event", "").startswith("language_mix")]
        assert events == ["language_mix_raised", "language_mix_cleared"]  # logged once each
    finally:  # the moderator is shared by the whole session
        moderator.use_policy(load_policy(DEFAULT))
        moderator.use_drift([])
        client = connect(redis_url)
        for key in client.scan_iter(f"{settings.key_prefix}:*"):
            client.delete(key)


def test_a_worker_that_starts_during_a_surge_decides_under_the_profile(
    redis_url, model_dir, moderator, tmp_path
):
    path = _policy_copy(tmp_path)
    settings = make_settings(redis_url, model_dir, policy_path=path, language_mix_bucket_s=1,
                             language_mix_check_s=60)  # fmt: skip
    lp = load_policy(path)
    client = connect(redis_url)
    # another worker judged the window and raised English before this one started
    state = drift.snapshot(drift.assess({"en": 30, "zh": 70}, lp.policy.language_mix, {}, 1),
                           lp.policy.language_mix, previous=None, now_ms=1, bucket_s=1,
                           profile="surge", policy_version=lp.version, evaluator="other")  # fmt: skip
    client.hset(MixKeys(settings.key_prefix).state,
                mapping={"seq": "1", "data": json.dumps(state), "raised": "en"})  # fmt: skip
    moderator.use_policy(lp)
    moderator.use_drift([])
    try:
        with LiveServer(settings) as api, WorkerThread(settings, moderator):
            http = httpx.Client(base_url=api.url, timeout=30)
            [post] = _send(http, "first", en=1, zh=0)
            first = wait_for_decision(api.url, post, timeout=120).json()
            assert first["policy"]["profile"] == "surge" and _feed_rule(first) == "limit_reach"
    finally:
        moderator.use_policy(load_policy(DEFAULT))
        moderator.use_drift([])
        for key in client.scan_iter(f"{settings.key_prefix}:*"):
            client.delete(key)


def test_two_worker_processes_raise_once_and_both_follow(redis_url, model_dir, tmp_path):
    """Real worker processes sharing one Redis: the alert moves once (one judge at a time,
    compare-and-set), is logged once across both, and posts decided by either after it carry
    the profile."""
    path = _policy_copy(tmp_path)
    settings = make_settings(redis_url, model_dir, policy_path=path, language_mix_bucket_s=1,
                             language_mix_check_s=0.05)  # fmt: skip
    env = (("FLOODGATE_POLICY_PATH", str(path)), ("FLOODGATE_LANGUAGE_MIX_BUCKET_S", "1"),
           ("FLOODGATE_LANGUAGE_MIX_CHECK_S", "0.05"), ("FLOODGATE_LOG_FORMAT", "json"))  # fmt: skip
    procs = []
    try:
        with LiveServer(settings) as api:
            procs = [worker_process(settings, *env), worker_process(settings, *env)]
            http = httpx.Client(base_url=api.url, timeout=30)
            wait_until(lambda: len(http.get("/v1/stats").json()["workers"]) == 2, 300,
                       "both workers up", interval=0.5)  # fmt: skip
            for i in range(5):  # small requests: both workers take batches
                _send(http, f"calm{i}", en=0 if i else 1, zh=10 if i else 9)
            for i in range(5):
                _send(http, f"surge{i}", en=4, zh=6)
            state = wait_until(lambda: (m := http.get("/v1/stats").json()["language_mix"])
                               and m["raised"] and m, 180, "the alert raised")  # fmt: skip
            assert set(state["raised"]) == {"en"} and state["profile"] == "surge"
            probes = [pid for i in range(4) for pid in _send(http, f"probe{i}", en=3, zh=0)]
            decided = [wait_for_decision(api.url, pid, timeout=120).json() for pid in probes]
            assert {d["policy"]["profile"] for d in decided} == {"surge"}
            assert {_feed_rule(d) for d in decided} == {"limit_reach"}
    finally:
        outputs = []
        for proc in procs:
            proc.terminate()
            try:
                outputs.append(proc.communicate(timeout=60)[0])
            except Exception:
                proc.kill()
                outputs.append(proc.communicate()[0])
        client = connect(redis_url)
        for key in client.scan_iter(f"{settings.key_prefix}:*"):
            client.delete(key)
    events = [json.loads(line) for out in outputs for line in out.splitlines()
              if line.startswith("{") and '"language_mix_' in line]  # fmt: skip
    assert [(e["event"], e["language"], e["profile"]) for e in events] == [
        ("language_mix_raised", "en", "surge")]  # fmt: skip
