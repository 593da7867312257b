"""Human review end to end: real Redis, real HTTP (LiveServer), real worker and model.

A test policy (the default one plus a keyword rule that sends `reviewme` posts to review, and
a review section with an English pool that can take two items within the SLA) makes the
routing deterministic; everything else is the service as it runs.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from service.auth import KeyStore
from service.config import REPO_ROOT
from service.policy import load_policy
from service.queue import Keys
from service.redisdb import connect
from tests.conftest import LiveServer, WorkerThread, make_settings, wait_until

DEFAULT = REPO_ROOT / "policies" / "default.yaml"
TEST_RULE = """
  - id: test-reviewme
    description: test posts that must go to a human
    when: {keywords: review_me}
    action: review
"""
TEST_REVIEW = """
review:
  severity: {self_harm: severe}
  queues:
    general: {sla_minutes: 60, overflow: limit_reach, overflow_labels: [pending_review]}
    self_harm: {sla_minutes: 60, severity: severe, overflow: limit_reach}
  pools:
    en_pool: {reviewers: 1, items_per_hour: 2, languages: [en]}   # 2 items within the SLA
    zh_pool: {reviewers: 100, items_per_hour: 60, languages: [zh]}
  reviewers: {alice: en_pool, bob: en_pool, li: zh_pool, carol-typo: zh_pool}
"""
# an operator's example of a new wave (the policy's memory, under scam_spam)
WAVE = "宝妈在家兼职，手机做任务一单一结，每天轻松赚三百"
MEMORY = f"""  scam_spam:
    memory:
      examples: {{zh: ["{WAVE}"]}}
"""
EN = "please have a look at this reviewme post, my friends from Texas"
ZH = "今天天气很好，我们一起去公园散步吧，reviewme"


def review_policy(tmp_path: Path) -> Path:
    text = DEFAULT.read_text("utf-8").split("\n# --- human review")[0]
    text = text.replace("keywords:\n", "keywords:\n  review_me:\n    terms: [reviewme]\n", 1)
    text = text.replace("  scam_spam:\n", MEMORY, 1)
    path = tmp_path / "policy.yaml"
    path.write_text(text.rstrip("\n") + "\n" + TEST_RULE + TEST_REVIEW, "utf-8")
    shutil.copytree(DEFAULT.parent / "lists", tmp_path / "lists", dirs_exist_ok=True)
    return path


class Service:
    def __init__(self, api: LiveServer, settings, tokens: dict[str, str]) -> None:
        self.api, self.settings, self.tokens = api, settings, tokens
        self.redis = connect(settings.redis_url)
        self.keys = Keys(settings.key_prefix)

    def http(self, who: str) -> httpx.Client:
        return httpx.Client(base_url=self.api.url, timeout=30,
                            headers={"Authorization": f"Bearer {self.tokens[who]}"})  # fmt: skip

    def submit(self, post_id: str, text: str, **extra) -> dict:
        r = self.http("ingest").post("/v1/posts", json={"post_id": post_id, "text": text, **extra})
        assert r.status_code == 202, r.text
        return self.decision(post_id)

    def decision(self, post_id: str) -> dict:
        token = self.tokens["ingest"]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            r = httpx.get(f"{self.api.url}/v1/posts/{post_id}/decision", timeout=10,
                          headers={"Authorization": f"Bearer {token}"})  # fmt: skip
            if r.status_code != 202:
                assert r.status_code == 200, r.text
                return r.json()
            time.sleep(0.1)
        raise AssertionError(f"no decision for {post_id}")

    def queue(self, who: str, name: str) -> dict:
        r = self.http(who).get("/v1/review/queues")
        assert r.status_code == 200, r.text
        return next(q for q in r.json()["queues"] if q["queue"] == name)


@pytest.fixture
def review_service(redis_url, model_dir, moderator, tmp_path, request):
    lease_s = getattr(request, "param", 300.0)
    path = review_policy(tmp_path)
    settings = make_settings(redis_url, model_dir, policy_path=path, review_lease_s=lease_s)
    store = KeyStore(connect(redis_url), Keys(settings.key_prefix))
    roles = {"alice": "review", "bob": "review", "li": "review", "carol": "review",
             "ops": "admin", "ingest": "submit,read"}  # fmt: skip
    tokens = {name: store.create(name, [role]).token for name, role in roles.items()}
    moderator.use_policy(load_policy(path))
    moderator.use_shadow(None)
    try:
        with LiveServer(settings) as api, WorkerThread(settings, moderator):
            yield Service(api, settings, tokens)
    finally:  # the moderator is shared by the whole session
        moderator.use_policy(load_policy(DEFAULT))
    client = connect(redis_url)
    for key in client.scan_iter(f"{settings.key_prefix}:*"):
        client.delete(key)


def test_queue_fallback_claim_resolve_appeal_and_feedback(review_service):
    svc = review_service
    first = svc.submit("en-1", EN, market="intl", author={"id": "a1", "followers": 50_000})
    assert first["language"]["code"] == "en"
    assert first["action"] == "review"
    assert first["review"]["queue"] == "en/general" and first["review"]["fallback"] is None
    assert first["review"]["state"] == "queued" and first["final_action"] == "review"
    svc.submit("en-2", EN + " again", market="intl")
    # the English pool reviews 2 items within the 60 min SLA: a third overflows
    third = svc.submit("en-3", EN + " once more", market="intl")
    assert third["action"] == "limit_reach"
    assert third["review"]["fallback"]["applied"] is True
    assert third["review"]["fallback"]["admission_limit"] == 2
    assert "pending_review" in third["labels"]
    assert third["outcomes"]["intl"]["action"] == "limit_reach"
    assert third["review"]["state"] == "overflowed"

    q = svc.queue("alice", "en/general")
    assert (q["waiting"], q["in_review"], q["overflowed"], q["enqueued"]) == (2, 0, 1, 2)
    assert (q["backlog"], q["admitted"]) == (1, 0)  # the third waits, limited, for room
    assert q["capacity_per_hour"] == 2.0 and q["sla_s"] == 3600.0
    assert q["expected_wait_s"] == 3600.0 and q["over_sla"] is False
    assert q["oldest_age_s"] is not None and q["oldest_age_s"] >= 0

    # the bigger reach comes first
    alice = svc.http("alice")
    r = alice.post("/v1/review/claim", json={"queue": "en/general", "count": 1})
    assert r.status_code == 200, r.text
    [item] = r.json()["items"]
    assert item["post_id"] == "en-1" and item["text"] == EN and item["rules"]
    assert item["holder"] == "alice"
    # the claim made room: the overflowed post entered the queue from the backlog
    q = svc.queue("alice", "en/general")
    assert (q["waiting"], q["in_review"], q["backlog"], q["admitted"], q["enqueued"]) == (2, 1, 0, 1, 3)
    assert svc.decision("en-3")["review"]["state"] == "queued"

    # bob cannot resolve what alice holds
    r = svc.http("bob").post("/v1/review/items/en-1/resolve", json={"action": "allow", "reason": "x"})
    assert r.status_code == 409 and r.json()["detail"][0]["type"] == "not_leased"
    r = alice.post("/v1/review/items/en-1/resolve",
                   json={"action": "remove", "reason": "spam link farm"})  # fmt: skip
    assert r.status_code == 200, r.text
    d = svc.decision("en-1")
    assert d["action"] == "review" and d["final_action"] == "remove"
    assert d["review"]["state"] == "resolved"
    assert d["review"]["verdict"]["reviewer"] == "alice"
    assert [h["event"] for h in d["review"]["history"]] == ["queued", "claimed", "resolved"]
    verdicts = [json.loads(f["verdict"]) for _, f in svc.redis.xrange(svc.keys.audit)
                if f.get("id") == "en-1" and "verdict" in f]  # fmt: skip
    assert verdicts == [d["review"]["verdict"]]
    # the decision feed still lists each post once
    feed = svc.http("ingest").get("/v1/decisions").json()
    assert collections.Counter(x["post_id"] for x in feed["decisions"])["en-1"] == 1

    # the author appeals; alice gave the first verdict, so bob must resolve it
    r = svc.http("ingest").post("/v1/posts/en-1/appeal", json={"reason": "it is my shop"})
    assert r.status_code == 202 and r.json()["queue"] == "en/appeal", r.text
    r = svc.http("ingest").post("/v1/posts/en-1/appeal", json={"reason": "again"})
    assert r.status_code == 409 and r.json()["detail"][0]["type"] == "already_appealed"
    assert svc.decision("en-1")["review"]["state"] == "appeal_queued"
    r = alice.post("/v1/review/claim", json={"queue": "en/appeal", "count": 5})
    assert r.json()["items"] == []
    bob = svc.http("bob")
    r = bob.post("/v1/review/claim", json={"count": 5})  # every queue bob may see
    ids = [i["post_id"] for i in r.json()["items"]]
    assert set(ids) == {"en-1", "en-2", "en-3"}, ids
    r = bob.post("/v1/review/items/en-1/resolve", json={"action": "allow", "reason": "a real shop"})
    assert r.status_code == 200 and r.json()["verdict"]["outcome"] == "overturned"
    r = bob.post("/v1/review/items/en-2/resolve", json={"action": "label", "reason": "borderline"})
    assert r.status_code == 200
    d = svc.decision("en-1")
    assert d["final_action"] == "allow" and d["review"]["state"] == "appeal_resolved"
    assert d["review"]["appeal"]["verdict"]["reviewer"] == "bob"
    assert d["review"]["verdict"]["action"] == "remove"  # the first verdict stays on record

    # the queue drained: a new English post is queued again (the fallback is off)
    fourth = svc.submit("en-4", EN + " the fourth", market="intl")
    assert fourth["action"] == "review" and fourth["review"]["fallback"] is None

    # the overflowed post stayed limited while it waited, and a human saw it in the end
    d = svc.decision("en-3")
    assert d["action"] == "limit_reach" and d["review"]["state"] == "in_review"
    assert [h["event"] for h in d["review"]["history"]] == ["overflowed", "admitted", "claimed"]
    r = bob.post("/v1/review/items/en-3/resolve", json={"action": "allow", "reason": "harmless"})
    assert r.status_code == 200, r.text
    assert svc.decision("en-3")["final_action"] == "allow"

    # feedback: two first verdicts on test-reviewme in English, one of them allow... the
    # appeal overturned alice's remove, but precision counts first looks at automated flags
    stats = svc.http("ops").get("/v1/stats").json()["review"]
    row = next(x for x in stats["rules"] if x["name"] == "test-reviewme" and x["language"] == "en")
    assert (row["judged"], row["confirmed"], row["precision"]) == (3, 2, 0.6667)
    assert stats["appeals"] == [{"language": "en", "upheld": 0, "overturned": 1,
                                 "overturn_rate": 1.0}]  # fmt: skip
    assert stats["queues"]["en/general"]["overflowed"] == 1

    env = {**os.environ, "REDIS_URL": svc.settings.redis_url,
           "FLOODGATE_KEY_PREFIX": svc.settings.key_prefix}  # fmt: skip
    out = subprocess.run([sys.executable, "-m", "service", "review", "report", "--json"],
                         env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["appeals"][0]["overturned"] == 1


def test_reviewers_see_only_their_languages(review_service):
    svc = review_service
    zh = svc.submit("zh-1", ZH)
    assert zh["language"]["code"] == "zh" and zh["review"]["queue"] == "zh/general"
    svc.submit("en-1", EN, market="intl")
    li = svc.http("li").get("/v1/review/queues").json()
    assert li["languages"] == ["zh"]
    assert {q["language"] for q in li["queues"]} == {"zh"}
    assert {"zh/general", "zh/self_harm", "zh/appeal"} <= {q["queue"] for q in li["queues"]}
    r = svc.http("li").post("/v1/review/claim", json={"queue": "en/general"})
    assert r.status_code == 403 and r.json()["detail"][0]["type"] == "language_not_read"
    r = svc.http("li").post("/v1/review/claim", json={"count": 10})
    assert [i["post_id"] for i in r.json()["items"]] == ["zh-1"]
    alice = svc.http("alice").get("/v1/review/queues").json()
    assert {q["language"] for q in alice["queues"]} == {"en"}
    # a review key that no pool lists sees nothing; an admin key sees every language
    r = svc.http("carol").get("/v1/review/queues")
    assert r.status_code == 403 and r.json()["detail"][0]["type"] == "not_a_reviewer"
    ops = svc.http("ops").get("/v1/review/queues").json()
    assert {"en", "zh"} <= {q["language"] for q in ops["queues"]}
    # reading roles do not review
    assert svc.http("ingest").get("/v1/review/queues").status_code == 403


@pytest.mark.parametrize("review_service", [0.5], indirect=True)
def test_an_expired_lease_goes_back_into_the_queue(review_service):
    svc = review_service
    svc.submit("en-1", EN, market="intl")
    alice = svc.http("alice")
    [item] = alice.post("/v1/review/claim", json={"queue": "en/general"}).json()["items"]
    assert item["post_id"] == "en-1"
    # alice goes away: a bounded wait until the lease has run out and the item is back
    wait_until(lambda: svc.queue("bob", "en/general")["waiting"] == 1, 30, "the lease to expire")
    assert svc.queue("bob", "en/general")["in_review"] == 0
    r = alice.post("/v1/review/items/en-1/resolve", json={"action": "allow", "reason": "late"})
    assert r.status_code == 409 and r.json()["detail"][0]["type"] == "not_leased"
    [again] = svc.http("bob").post("/v1/review/claim", json={"count": 1}).json()["items"]
    assert again["post_id"] == "en-1" and again["holder"] == "bob"
    history = [h["event"] for h in svc.decision("en-1")["review"]["history"]]
    assert history == ["queued", "claimed", "lease_expired", "claimed"]


def test_a_redelivered_post_enters_its_queue_once(review_service):
    svc = review_service
    svc.submit("en-1", EN, market="intl")
    post = {"post_id": "en-1", "text": EN, "market": "intl"}
    # the same post delivered again (a reclaimed entry of a slow worker), twice
    for _ in range(2):
        svc.redis.xadd(svc.keys.posts, {"id": "en-1", "post": json.dumps(post),
                                        "t": str(int(time.time() * 1000))})  # fmt: skip
    wait_until(lambda: svc.redis.xlen(svc.keys.posts) == 0, 60, "the copies to be acknowledged")
    prefix = svc.settings.key_prefix
    assert svc.redis.zcard(f"{prefix}:review:q:en/general") == 1
    assert svc.redis.hget(f"{prefix}:review:counts", "en/general|enqueued") == "1"
    assert svc.redis.llen(f"{prefix}:review:history:en-1") == 1
    audit = [f for _, f in svc.redis.xrange(svc.keys.audit) if f["id"] == "en-1"]
    assert len(audit) == 1


def test_the_backlog_refills_the_queue_best_first_and_an_appeal_leaves_it(review_service):
    """Posts that overflowed wait, limited, in the queue's backlog; each claim refills the
    queue up to its admission limit (2), the bigger reach first; an appealed one leaves it."""
    svc = review_service
    svc.submit("en-1", EN, market="intl")
    svc.submit("en-2", EN, market="intl")  # one text: the priorities differ by reach alone
    small = svc.submit("en-3", EN, market="intl",
                       author={"id": "s", "followers": 10})  # fmt: skip
    big = svc.submit("en-4", EN, market="intl",
                     author={"id": "b", "followers": 90_000})  # fmt: skip
    appealed = svc.submit("en-5", EN, market="intl")
    for d in (small, big, appealed):
        assert d["action"] == "limit_reach" and d["review"]["state"] == "overflowed"
    assert svc.queue("alice", "en/general")["backlog"] == 3
    r = svc.http("ingest").post("/v1/posts/en-5/appeal", json={"reason": "why limited?"})
    assert r.status_code == 202 and r.json()["queue"] == "en/appeal", r.text
    assert svc.queue("alice", "en/general")["backlog"] == 2

    alice = svc.http("alice")
    taken = [i["post_id"] for i in alice.post(
        "/v1/review/claim", json={"queue": "en/general", "count": 2}).json()["items"]]  # fmt: skip
    # taking the first of en-1 / en-2 (equal priority) made room for the big account's post,
    # which then came before the other; taking it made room for the small account's
    assert taken[0] in ("en-1", "en-2") and taken[1] == "en-4", taken
    other = ({"en-1", "en-2"} - {taken[0]}).pop()
    q = svc.queue("alice", "en/general")
    assert (q["waiting"], q["backlog"], q["admitted"]) == (2, 0, 2)
    more = [i["post_id"] for i in alice.post(
        "/v1/review/claim", json={"queue": "en/general", "count": 5}).json()["items"]]  # fmt: skip
    assert more == ["en-3", other]  # some reach before none
    # the appealed post is in the appeal queue only: never admitted to en/general
    assert svc.decision("en-5")["review"]["state"] == "appeal_queued"
    assert [h["event"] for h in svc.decision("en-5")["review"]["history"]] == ["overflowed", "appealed"]
