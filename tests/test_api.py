"""The HTTP API against the real app, over real HTTP, on a real Redis (and the real model).

* bad input of every kind is a 4xx with one JSON shape naming the field, never a 500, and
  leaves what was accepted before untouched;
* accepted posts are in the Redis stream before the 202; re-submitting a post_id is a no-op;
* batches accept or reject each post on its own, in order;
* through a real worker, posts in English and Chinese get complete decisions, exactly once;
* /v1/moderate decides synchronously; /v1/stats, /healthz and /metrics agree with the traffic.

Tests without the model (the `api` fixture) come first, then the ones with a worker (the
session's moderator is loaded once), and the synchronous /v1/moderate last.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from service.config import REPO_ROOT
from service.queue import Keys
from service.redisdb import connect
from tests.conftest import LiveServer, WorkerThread, make_settings, wait_for_decision

JSON = {"content-type": "application/json"}
ACTIONS = {"allow", "label", "limit_reach", "review", "remove"}
CATEGORIES = set(
    yaml.safe_load((REPO_ROOT / "policies" / "default.yaml").read_text())["categories"]
)

EN = "The weather is lovely today and we are going to the beach with our friends."
ZH = "我们今天去北京吃饭，这里的风景真漂亮，大家周末愉快"
HARMFUL = "I will kill you and your whole family"


# ---------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    """One keep-alive client for the module (a new client per request costs ~50 ms)."""
    with httpx.Client(timeout=30) as client:
        yield client


def post_raw(http: httpx.Client, url: str, body, headers: dict | None = None) -> httpx.Response:
    return http.post(url, content=body, headers=JSON if headers is None else headers)


def assert_error(r: httpx.Response, status: int, field: str, error: str | None = None) -> dict:
    """A client error: the given status and the documented shape, naming ``field``."""
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error", "detail"}, body
    assert isinstance(body["error"], str) and body["error"]
    if error is not None:
        assert body["error"] == error, body
    assert isinstance(body["detail"], list) and body["detail"], body
    for d in body["detail"]:
        assert set(d) == {"field", "message", "type"}, d
        assert all(isinstance(d[k], str) and d[k] for k in d), d
    assert field in [d["field"] for d in body["detail"]], body
    return body


def stream_entries(settings) -> list[tuple[str, str, dict]]:
    """(entry id, post id, post) for every entry in the posts stream."""
    client = connect(settings.redis_url)
    entries = client.xrange(Keys(settings.key_prefix).posts)
    return [(eid, f["id"], json.loads(f["post"])) for eid, f in entries]


def xlen(settings, key: str = "posts") -> int:
    return connect(settings.redis_url).xlen(getattr(Keys(settings.key_prefix), key))


def metric_samples(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def assert_decision(d: dict, post_id: str) -> None:
    """A complete decision, as stored by a worker or returned by /v1/moderate."""
    assert d["post_id"] == post_id
    assert d["status"] == "decided"
    assert d["action"] in ACTIONS
    assert isinstance(d["reasons"], list)
    for reason in d["reasons"]:
        assert reason["action"] in ACTIONS and reason["rule"]
    lang = d["language"]
    assert set(lang) >= {"code", "script", "confidence", "mixed"}
    assert isinstance(lang["code"], str) and isinstance(lang["script"], str)
    assert 0.0 <= lang["confidence"] <= 1.0
    assert isinstance(lang["mixed"], list)
    assert set(d["scores"]) == CATEGORIES, d["scores"]
    assert all(0.0 <= v <= 1.0 for v in d["scores"].values()), d["scores"]
    assert d["policy"]["name"] == "floodgate-default"
    assert re.fullmatch(r"[0-9a-f]{16}", d["policy"]["version"])
    assert d["model"]["name"] and d["model"]["version"]
    assert d["timings"]["queue_wait_ms"] >= 0 and d["timings"]["processing_ms"] > 0
    decided_at = datetime.fromisoformat(d["decided_at"].replace("Z", "+00:00"))
    assert abs(datetime.now(UTC) - decided_at) < timedelta(minutes=5)
    # the decision for the post's own market, and one outcome per market
    assert set(d["outcomes"]) == {"cn", "intl"}
    assert d["outcomes"][d["market"]]["action"] == d["action"]


# ---------------------------------------------------------------------------- 1. bad input

BAD_INPUT = [
    # id, raw body, headers (None: application/json), status, field, error
    ("malformed-json", b'{"text": "hi",', None, 422, "body", "validation_error"),
    ("trailing-comma", b'{"text": "hi",}', None, 422, "body", "validation_error"),
    ("array-body", b'[{"text": "hi"}]', None, 422, "body", "validation_error"),
    ("string-body", b'"hello"', None, 422, "body", "validation_error"),
    ("null-body", b"null", None, 422, "body", "validation_error"),
    ("empty-body", b"", None, 422, "body", "validation_error"),
    ("not-json-content-type", b'{"text": "hi"}', {"content-type": "text/plain"}, 422, "body", None),
    ("missing-text", b'{"post_id": "x-1"}', None, 422, "text", "validation_error"),
    ("empty-text", b'{"text": ""}', None, 422, "text", "validation_error"),
    ("whitespace-text", b'{"text": " \\t\\n\\u3000 "}', None, 422, "text", "validation_error"),
    (
        "text-10001",
        json.dumps({"text": "  " + "a" * 10_001 + "\n"}).encode(),
        None,
        422,
        "text",
        None,
    ),
    ("text-number", b'{"text": 42}', None, 422, "text", "validation_error"),
    ("text-null", b'{"text": null}', None, 422, "text", "validation_error"),
    ("text-object", b'{"text": {"en": "hi"}}', None, 422, "text", "validation_error"),
    ("author-string", b'{"text": "hi", "author": "bob"}', None, 422, "author", None),
    ("author-id-empty", b'{"text": "hi", "author": {"id": ""}}', None, 422, "author.id", None),
    (
        "author-unknown-field",
        b'{"text": "hi", "author": {"id": "a", "x": 1}}',
        None,
        422,
        "author.x",
        None,
    ),
    (
        "author-created-at",
        b'{"text": "hi", "author": {"id": "a", "created_at": "soon"}}',
        None,
        422,
        "author.created_at",
        None,
    ),
    ("market-number", b'{"text": "hi", "market": 7}', None, 422, "market", None),
    ("market-pattern", b'{"text": "hi", "market": "CN!"}', None, 422, "market", None),
    (
        "created-at-not-a-date",
        b'{"text": "hi", "created_at": "not a date"}',
        None,
        422,
        "created_at",
        None,
    ),
    # year 1 once crashed the worker (naive time through the local zone); times are bounded
    (
        "created-at-year-1",
        b'{"text": "hi", "created_at": "0001-01-01T00:00:00", "author": {"id": "u1"}}',
        None,
        422,
        "created_at",
        None,
    ),
    (
        "created-at-year-1-plus-offset",
        b'{"text": "hi", "created_at": "0001-01-01T00:00:00+05:00"}',
        None,
        422,
        "created_at",
        None,
    ),
    (
        "author-created-at-year-9999",
        b'{"text": "hi", "author": {"id": "a", "created_at": "9999-12-31T23:59:59"}}',
        None,
        422,
        "author.created_at",
        None,
    ),
    ("lang-hint", b'{"text": "hi", "lang_hint": "english please"}', None, 422, "lang_hint", None),
    ("unknown-field", b'{"text": "hi", "priority": "high"}', None, 422, "priority", None),
    ("post-id-spaces", b'{"text": "hi", "post_id": "a b c"}', None, 422, "post_id", None),
    (
        "post-id-200",
        json.dumps({"text": "hi", "post_id": "p" * 200}).encode(),
        None,
        422,
        "post_id",
        None,
    ),
    ("post-id-empty", b'{"text": "hi", "post_id": ""}', None, 422, "post_id", None),
    ("post-id-number", b'{"text": "hi", "post_id": 12}', None, 422, "post_id", None),
    ("invalid-utf8", b'{"text": "\xff\xfe"}', None, 400, "body", "invalid_utf8"),
    ("lone-surrogate", b'{"text": "ok \\ud800 then"}', None, 422, "text", "validation_error"),
    (
        "lone-surrogate-author",
        b'{"text": "hi", "author": {"id": "\\udc00"}}',
        None,
        422,
        "author.id",
        None,
    ),
]


@pytest.mark.parametrize(
    "body, headers, status, field, error", [c[1:] for c in BAD_INPUT], ids=[c[0] for c in BAD_INPUT]
)
def test_bad_input_is_a_4xx_naming_the_field_and_changes_nothing(
    http, api, settings, body, headers, status, field, error
):
    keep = {"post_id": "keep-1", "text": "accepted before the bad request", "market": "intl"}
    r = http.post(f"{api.url}/v1/posts", json=keep)
    assert r.status_code == 202, r.text
    before = stream_entries(settings)

    assert_error(post_raw(http, f"{api.url}/v1/posts", body, headers), status, field, error)

    # nothing was queued by the bad request, and the earlier post is intact
    assert stream_entries(settings) == before
    assert len(before) == 1 and before[0][1] == "keep-1" and before[0][2]["text"] == keep["text"]
    r = http.get(f"{api.url}/v1/posts/keep-1/decision")
    assert r.status_code == 202 and r.json() == {"post_id": "keep-1", "status": "pending"}
    # and the server is still serving
    assert http.get(f"{api.url}/livez").status_code == 200


def test_body_over_the_limit_is_413_declared_or_streamed(http, api, settings):
    assert settings.max_body_bytes == 4 * 1024 * 1024
    r = http.post(f"{api.url}/v1/posts", json={"post_id": "keep-2", "text": "small"})
    assert r.status_code == 202
    big = json.dumps({"text": "a" * (5 * 1024 * 1024)}).encode()
    body = assert_error(post_raw(http, f"{api.url}/v1/posts", big), 413, "body", "body_too_large")
    assert body["detail"][0]["type"] == "body_too_large"
    # no Content-Length (chunked): refused once the limit is crossed, not after reading it all
    step = 1 << 20
    chunks = (big[i : i + step] for i in range(0, len(big), step))
    assert_error(post_raw(http, f"{api.url}/v1/posts/batch", chunks), 413, "body", "body_too_large")
    assert [e[1] for e in stream_entries(settings)] == ["keep-2"]


def test_text_of_exactly_10000_chars_after_trimming_is_accepted_and_stored_trimmed(
    http, api, settings
):
    text = "\n  " + "字" * 10_000 + "  \t"
    r = http.post(f"{api.url}/v1/posts", json={"text": text, "post_id": "long-1"})
    assert r.status_code == 202, r.text
    assert r.json() == {"post_id": "long-1", "status": "queued"}
    [(_, post_id, post)] = stream_entries(settings)
    assert post_id == "long-1" and post["text"] == "字" * 10_000


# ---------------------------------------------------------------------------- 2. submit, pending, unknown


def test_submit_queues_in_redis_before_the_202_and_reads_pending(http, api, settings):
    keys = Keys(settings.key_prefix)
    client = connect(settings.redis_url)
    post = {
        "post_id": "post-1",
        "text": "  hello from Texas, happy to be here  ",
        "market": "intl",
        "author": {"id": "u-42", "created_at": "2025-01-10T08:00:00Z"},
        "created_at": "2025-01-15T10:00:00+00:00",
        "lang_hint": "en-US",
    }
    r = http.post(f"{api.url}/v1/posts", json=post)
    assert r.status_code == 202, r.text
    assert r.json() == {"post_id": "post-1", "status": "queued"}
    assert client.xlen(keys.posts) == 1
    [(entry_id, post_id, stored)] = stream_entries(settings)
    assert post_id == "post-1"
    assert stored["text"] == "hello from Texas, happy to be here"
    assert (
        stored["market"] == "intl"
        and stored["author"]["id"] == "u-42"
        and stored["lang_hint"] == "en-US"
    )
    assert datetime.fromisoformat(stored["created_at"].replace("Z", "+00:00")) == datetime(
        2025, 1, 15, 10, tzinfo=UTC
    )
    assert client.get(keys.accepted("post-1")) == entry_id
    assert 0 < client.ttl(keys.accepted("post-1")) <= settings.decision_ttl_s

    # without a post_id the server makes one up
    r = http.post(f"{api.url}/v1/posts", json={"text": "no id given"})
    assert r.status_code == 202
    generated = r.json()["post_id"]
    assert re.fullmatch(r"p_[0-9a-f]{32}", generated) and r.json()["status"] == "queued"
    assert client.xlen(keys.posts) == 2

    for pid in ("post-1", generated):  # no worker: still pending
        r = http.get(f"{api.url}/v1/posts/{pid}/decision")
        assert r.status_code == 202
        assert r.json() == {"post_id": pid, "status": "pending"}

    body = assert_error(
        http.get(f"{api.url}/v1/posts/nope-404/decision"), 404, "post_id", "not_found"
    )
    assert "nope-404" in body["detail"][0]["message"]
    assert_error(http.get(f"{api.url}/v1/no-such-route"), 404, "path")


# ---------------------------------------------------------------------------- 3. idempotency


def test_resubmitting_a_post_id_queues_it_once(http, api, settings):
    keys = Keys(settings.key_prefix)
    client = connect(settings.redis_url)
    url = f"{api.url}/v1/posts"
    r1 = http.post(url, json={"post_id": "dup-1", "text": "first version"})
    entry = client.get(keys.accepted("dup-1"))
    r2 = http.post(url, json={"post_id": "dup-1", "text": "second version, edited"})
    assert (r1.status_code, r1.json()) == (202, {"post_id": "dup-1", "status": "queued"})
    assert (r2.status_code, r2.json()) == (202, {"post_id": "dup-1", "status": "duplicate"})
    assert client.xlen(keys.posts) == 1
    assert client.get(keys.accepted("dup-1")) == entry
    assert stream_entries(settings)[0][2]["text"] == "first version"

    # concurrent submissions of one new id: exactly one is queued
    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=10) as c:
            return await asyncio.gather(
                *(
                    c.post(url, json={"post_id": "race-1", "text": f"attempt {i}"})
                    for i in range(20)
                )
            )

    statuses = Counter(r.json()["status"] for r in asyncio.run(burst()))
    assert statuses == {"queued": 1, "duplicate": 19}
    assert client.xlen(keys.posts) == 2


# ---------------------------------------------------------------------------- 4. batches


def test_batch_accepts_and_rejects_each_post_on_its_own_in_order(http, api, settings):
    client = connect(settings.redis_url)
    keys = Keys(settings.key_prefix)
    posts = [
        {"post_id": "b-0", "text": "first good one"},
        {"post_id": "b-1"},  # missing text
        {"text": "good, no id"},
        {"post_id": "b-3", "text": "x" * 10_001},  # too long
        {"post_id": "b-4", "text": "今天做了红烧肉，味道还不错", "market": "cn"},
    ]
    r = http.post(f"{api.url}/v1/posts/batch", json={"posts": posts})
    assert r.status_code == 202, r.text
    body = r.json()
    assert (body["accepted"], body["rejected"]) == (3, 2)
    results = body["results"]
    assert [x["index"] for x in results] == [0, 1, 2, 3, 4]
    assert [x["status"] for x in results] == ["queued", "rejected", "queued", "rejected", "queued"]
    assert results[0]["post_id"] == "b-0" and results[4]["post_id"] == "b-4"
    assert re.fullmatch(r"p_[0-9a-f]{32}", results[2]["post_id"])
    for i in (1, 3):
        assert results[i]["post_id"] is None
        assert [e["field"] for e in results[i]["errors"]] == [f"posts.{i}.text"]
        assert all(set(e) == {"field", "message", "type"} for e in results[i]["errors"])
    assert results[1]["errors"][0]["type"] == "missing"
    assert "10000" in results[3]["errors"][0]["message"]
    assert [e[1] for e in stream_entries(settings)] == ["b-0", results[2]["post_id"], "b-4"]
    assert not client.exists(keys.accepted("b-1")) and not client.exists(keys.accepted("b-3"))
    assert http.get(f"{api.url}/v1/posts/b-1/decision").status_code == 404

    # duplicates inside one batch and across requests; items that are not objects
    posts = [
        {"post_id": "d-1", "text": "one"},
        {"post_id": "d-1", "text": "one again"},
        {"post_id": "b-0", "text": "already accepted above"},
        None,
        "just a string",
        {"text": "lone \ud800 surrogate"},
        {"text": "ok", "extra": True},
    ]
    # (json.dumps escapes the lone surrogate as \\ud800, as a JSON client would)
    r = post_raw(http, f"{api.url}/v1/posts/batch", json.dumps({"posts": posts}).encode())
    assert r.status_code == 202, r.text
    results = r.json()["results"]
    assert [x["status"] for x in results] == ["queued", "duplicate", "duplicate"] + ["rejected"] * 4
    assert [x["post_id"] for x in results[:3]] == ["d-1", "d-1", "b-0"]
    assert [e["field"] for e in results[3]["errors"]] == ["posts.3"]
    assert [e["field"] for e in results[4]["errors"]] == ["posts.4"]
    assert [e["field"] for e in results[5]["errors"]] == ["posts.5.text"]
    assert [e["field"] for e in results[6]["errors"]] == ["posts.6.extra"]
    assert client.xlen(keys.posts) == 4


@pytest.mark.parametrize(
    "payload, field",
    [
        ({"posts": [{"text": f"post {i}"} for i in range(1_001)]}, "posts"),
        ({"posts": []}, "posts"),
        ({"posts": "not a list"}, "posts"),
        ({}, "posts"),
        ({"posts": [{"text": "hi"}], "mode": "fast"}, "mode"),
    ],
    ids=["1001-posts", "empty-list", "not-a-list", "missing-posts", "unknown-field"],
)
def test_batch_shape_errors_are_422_and_queue_nothing(http, api, settings, payload, field):
    r = http.post(f"{api.url}/v1/posts/batch", json=payload)
    assert_error(r, 422, field, "validation_error")
    assert xlen(settings) == 0


def test_batch_of_exactly_1000_posts_is_accepted(http, api, settings):
    posts = [{"post_id": f"k-{i}", "text": f"post number {i}"} for i in range(1_000)]
    r = http.post(f"{api.url}/v1/posts/batch", json={"posts": posts})
    assert r.status_code == 202, r.text
    body = r.json()
    assert (body["accepted"], body["rejected"]) == (1_000, 0)
    assert [x["post_id"] for x in body["results"]] == [p["post_id"] for p in posts]
    assert xlen(settings) == 1_000


# ---------------------------------------------------------------------------- 7a. operations, no worker


def test_stats_health_and_metrics_without_a_worker(http, api, settings):
    url = api.url
    for i in range(3):
        assert (
            http.post(f"{url}/v1/posts", json={"post_id": f"s-{i}", "text": "hi there"}).status_code
            == 202
        )
    assert (
        http.post(f"{url}/v1/posts", json={"post_id": "s-0", "text": "again"}).json()["status"]
        == "duplicate"
    )
    r = http.post(f"{url}/v1/posts/batch", json={"posts": [{"text": "ok"}, {"text": ""}]})
    assert r.json()["accepted"] == 1
    assert post_raw(http, f"{url}/v1/posts", b'{"text": ').status_code == 422

    stats = http.get(f"{url}/v1/stats").json()
    assert stats["stream"]["length"] == 4
    assert stats["stream"]["pending"] == 0 and stats["stream"]["waiting"] == 4
    assert isinstance(stats["stream"]["lag_ms"], int) and stats["stream"]["consumers"] == []
    assert stats["dead_letters"] == 0
    assert stats["decisions"]["total"] == 0 and stats["decisions"]["by_language"] == {}

    # Redis answers but no worker is alive: accepted posts would wait, so not healthy
    health = http.get(f"{url}/healthz")
    assert (health.status_code, health.json()) == (
        503, {"status": "degraded", "redis": "ok", "workers": 0}
    )

    r = http.get(f"{url}/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert "floodgate_posts_total" in r.text and "floodgate_stream_length" in r.text
    m = metric_samples(r.text)
    assert m[("floodgate_posts_total", (("outcome", "queued"),))] == 4
    assert m[("floodgate_posts_total", (("outcome", "duplicate"),))] == 1
    assert m[("floodgate_posts_total", (("outcome", "rejected"),))] == 1
    assert m[("floodgate_stream_length", ())] == 4
    assert m[("floodgate_dead_letters", ())] == 0
    assert m[("floodgate_http_requests_total", (("route", "/v1/posts"), ("status", "422")))] == 1


def test_stats_lag_of_a_fresh_post_is_never_negative(http, api, settings):
    # be half a second into a second, so that the post and the query share it
    time.sleep((1.5 - time.time() % 1) % 1)
    assert http.post(f"{api.url}/v1/posts", json={"text": "fresh"}).status_code == 202
    stats = http.get(f"{api.url}/v1/stats").json()
    assert stats["stream"]["length"] == 1
    assert 0 <= stats["stream"]["lag_ms"] < 5_000


# ---------------------------------------------------------------------------- 5. end to end


def test_end_to_end_english_chinese_and_harmful(http, service, settings):
    ids = {"en": "e2e-en", "zh": "e2e-zh", "harm": "e2e-harm"}
    for kind, text in (("en", EN), ("zh", ZH), ("harm", HARMFUL)):
        r = http.post(f"{service.url}/v1/posts", json={"post_id": ids[kind], "text": text})
        assert r.status_code == 202 and r.json()["status"] == "queued", r.text

    decisions = {}
    for kind, pid in ids.items():
        r = wait_for_decision(service.url, pid)
        assert r.status_code == 200, r.text
        decisions[kind] = r.json()
        assert_decision(decisions[kind], pid)

    en, zh, harm = decisions["en"], decisions["zh"], decisions["harm"]
    assert en["language"]["code"] == "en" and en["language"]["script"] == "Latn"
    assert zh["language"]["code"] == "zh" and zh["language"]["script"] == "Hans"
    assert harm["language"]["code"] == "en"
    assert harm["action"] != "allow"
    assert harm["scores"]["violence"] > en["scores"]["violence"]
    assert harm["scores"]["violence"] > zh["scores"]["violence"]
    assert any("violence" in reason["categories"] for reason in harm["reasons"])
    assert en["market"] == "cn"  # the policy's default market

    # decided posts leave the stream; each decided exactly once
    assert xlen(settings) == 0
    audit = connect(settings.redis_url).xrange(Keys(settings.key_prefix).audit)
    assert sorted(f["id"] for _, f in audit) == sorted(ids.values())


def test_resubmit_after_the_decision_is_a_duplicate_and_decides_nothing(http, service, settings):
    keys = Keys(settings.key_prefix)
    client = connect(settings.redis_url)
    post = {"post_id": "once-1", "text": "my cat knocked over my coffee again"}
    assert http.post(f"{service.url}/v1/posts", json=post).json()["status"] == "queued"
    first = wait_for_decision(service.url, "once-1")
    assert first.status_code == 200, first.text

    for text in (post["text"], "a different text under the same id"):
        r = http.post(f"{service.url}/v1/posts", json={**post, "text": text})
        assert (r.status_code, r.json()) == (202, {"post_id": "once-1", "status": "duplicate"})
        assert client.xlen(keys.posts) == 0  # nothing was queued again
    r = http.post(f"{service.url}/v1/posts/batch", json={"posts": [post]})
    assert r.json()["results"][0]["status"] == "duplicate"

    time.sleep(0.3)  # give a (wrongly) re-queued post the time to be decided again
    audit = [f for _, f in client.xrange(keys.audit) if f["id"] == "once-1"]
    assert len(audit) == 1
    assert json.loads(audit[0]["decision"])["decided_at"] == first.json()["decided_at"]
    again = http.get(f"{service.url}/v1/posts/once-1/decision")
    assert again.status_code == 200 and again.json() == first.json()


# ---------------------------------------------------------------------------- 7b. stats after decisions


def test_stats_and_metrics_after_decisions(http, service, settings):
    posts = [
        {"post_id": "st-en-1", "text": EN},
        {"post_id": "st-en-2", "text": HARMFUL},
        {"post_id": "st-zh-1", "text": ZH},
        {"post_id": "st-bad", "text": "   "},
    ]
    r = http.post(f"{service.url}/v1/posts/batch", json={"posts": posts})
    assert r.json()["accepted"] == 3
    decided = [wait_for_decision(service.url, p["post_id"], timeout=30).json() for p in posts[:3]]
    expected = Counter((d["language"]["code"], d["action"]) for d in decided)
    assert Counter(d["language"]["code"] for d in decided) == {"en": 2, "zh": 1}

    deadline = time.monotonic() + 3  # the throughput window counts whole seconds only
    while True:
        stats = http.get(f"{service.url}/v1/stats").json()
        if stats["throughput"]["decisions"] == 3 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert stats["stream"]["length"] == 0 and stats["stream"]["pending"] == 0
    assert stats["stream"]["lag_ms"] == 0 and stats["stream"]["oldest_pending_ms"] is None
    assert stats["stream"]["consumers"] == []  # (XPENDING lists consumers with pending entries)
    assert stats["dead_letters"] == 0
    dec = stats["decisions"]
    assert dec["total"] == 3 and dec["audit_length"] == 3
    got = Counter(
        {
            (lang, action): n
            for lang, acts in dec["by_language"].items()
            for action, n in acts.items()
        }
    )
    assert got == expected
    assert dec["by_action"] == dict(Counter(d["action"] for d in decided))
    assert stats["throughput"]["decisions"] == 3

    m = metric_samples(http.get(f"{service.url}/metrics").text)
    assert m[("floodgate_posts_total", (("outcome", "queued"),))] == 3
    assert m[("floodgate_posts_total", (("outcome", "rejected"),))] == 1
    assert m[("floodgate_stream_length", ())] == 0
    for (lang, action), n in expected.items():
        assert m[("floodgate_decisions", (("action", action), ("language", lang)))] == n
    health = http.get(f"{service.url}/healthz")
    assert (health.status_code, health.json()) == (200, {"status": "ok", "redis": "ok", "workers": 1})
    assert [w["name"] for w in stats["workers"]] == ["test-worker"]


# ---------------------------------------------------------------------------- 6. synchronous


def test_moderate_rides_the_workers_and_is_the_same_decision_as_queued(http, service, settings):
    url = f"{service.url}/v1/moderate"
    # validation happens before anything is queued
    assert_error(post_raw(http, url, b'{"text": "   "}'), 422, "text", "validation_error")
    assert_error(post_raw(http, url, b'{"text": 1}'), 422, "text", "validation_error")
    assert_error(post_raw(http, url, b"[]"), 422, "body", "validation_error")
    assert_error(post_raw(http, url, b"{nope"), 422, "body", "validation_error")
    assert_error(post_raw(http, url, b'{"text": "hi", "post_id": "a b"}'), 422, "post_id")
    assert_error(post_raw(http, url, b'{"text": "\\ud800"}'), 422, "text")
    assert_error(post_raw(http, url, b'{"text": "\xc3\x28"}'), 400, "body", "invalid_utf8")

    r = http.post(url, json={"post_id": "sync-en", "text": EN}, timeout=60)
    assert r.status_code == 200, r.text
    benign = r.json()
    assert_decision(benign, "sync-en")
    assert benign["language"]["code"] == "en" and benign["timings"]["queue_wait_ms"] >= 0

    r = http.post(url, json={"text": HARMFUL, "market": "intl"}, timeout=60)
    assert r.status_code == 200, r.text
    harm = r.json()
    assert_decision(harm, harm["post_id"])
    assert re.fullmatch(r"p_[0-9a-f]{32}", harm["post_id"]) and harm["market"] == "intl"
    assert harm["action"] != "allow" and harm["scores"]["violence"] > benign["scores"]["violence"]

    r = http.post(url, json={"text": ZH}, timeout=60)
    assert (
        r.status_code == 200
        and r.json()["language"]["code"] == "zh"
        and r.json()["language"]["script"] == "Hans"
    )

    # stored like any post: retrievable by id, the same decision
    assert http.get(f"{service.url}/v1/posts/sync-en/decision").json() == benign
    # queued first, then asked synchronously: one decision, answered from the store
    assert http.post(f"{service.url}/v1/posts", json={"post_id": "both-1", "text": EN}).status_code == 202
    queued = wait_for_decision(service.url, "both-1").json()
    again = http.post(url, json={"post_id": "both-1", "text": EN}, timeout=60).json()
    assert again == queued
    audit = [f["id"] for _, f in connect(settings.redis_url).xrange(Keys(settings.key_prefix).audit)]
    assert audit.count("both-1") == 1 and audit.count("sync-en") == 1
    assert xlen(settings) == 0 and xlen(settings, "sync_posts") == 0


def test_moderate_past_its_deadline_is_504_and_the_post_is_decided_later(redis_url, model_dir, moderator):
    settings = make_settings(redis_url, model_dir, sync_deadline_s=1)
    with LiveServer(settings) as api, httpx.Client(timeout=30) as http:  # no worker yet
        r = http.post(f"{api.url}/v1/moderate", json={"post_id": "late-1", "text": EN})
        assert_error(r, 504, "post_id", "deadline_exceeded")
        assert "late-1" in r.json()["detail"][0]["message"]
        assert http.get(f"{api.url}/v1/posts/late-1/decision").status_code == 202  # still queued
        with WorkerThread(settings, moderator):
            assert wait_for_decision(api.url, "late-1").json()["status"] == "decided"


def test_decision_feed_pages_through_the_audit_stream(http, service):
    ids = [f"feed-{i}" for i in range(5)]
    posts = [{"post_id": pid, "text": f"hello number {i}"} for i, pid in enumerate(ids)]
    assert http.post(f"{service.url}/v1/posts/batch", json={"posts": posts}).status_code == 202
    for pid in ids:
        wait_for_decision(service.url, pid)
    seen, cursor = [], "0"
    for _ in range(10):
        page = http.get(f"{service.url}/v1/decisions", params={"after": cursor, "limit": 2}).json()
        if not page["decisions"]:
            break
        assert len(page["decisions"]) <= 2
        seen += [d["post_id"] for d in page["decisions"]]
        cursor = page["next"]
    assert sorted(seen) == sorted(ids)
    # caught up: the same cursor gives an empty page, not a repeat
    again = http.get(f"{service.url}/v1/decisions", params={"after": cursor}).json()
    assert again == {"decisions": [], "next": cursor}
    bad = http.get(f"{service.url}/v1/decisions", params={"after": "x y"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "query.after"


@pytest.mark.parametrize(
    "path, params, field",
    [
        ("/v1/decisions", {"after": "18446744073709551616"}, "after"),  # 2**64: not a stream id
        ("/v1/decisions", {"after": "1-18446744073709551616"}, "after"),
        ("/v1/decisions", {"after": "1" * 21}, "query.after"),
        ("/v1/decisions", {"limit": "0"}, "query.limit"),
        ("/v1/posts/a%20b/decision", {}, "path.post_id"),
        ("/v1/posts/" + "p" * 200 + "/decision", {}, "path.post_id"),
    ],
)
def test_parameters_are_checked_before_they_reach_redis(http, api, path, params, field):
    r = http.get(f"{api.url}{path}", params=params)
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["field"] == field
    assert http.get(f"{api.url}/v1/decisions", params={"after": "18446744073709551615"}).status_code == 200
