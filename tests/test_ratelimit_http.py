"""Rate limits over real HTTP, against the real app on a real Redis, on loopback.

Over the limit, per API key and per post author on submit: 429 in the one error shape with
Retry-After; in a batch only the throttled author's posts are rejected (type rate_limited);
what was accepted before is still in the stream, and nothing refused is; every refusal is
counted in /metrics (floodgate_rate_limited_total). The limits are set so low that no refill
can happen within a test's bounded loop (one token per 100 s, loops bounded to 60 s):
counts are exact and nothing depends on timing.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.test_access import EN, Api, assert_error_shape, running_api, serving

LOOP_S = 60.0  # bounds every loop below; a refill needs 100 s


def stream_ids(api: Api) -> list[str]:
    r, k = api.store.client, api.store.keys
    return [f["id"] for _, f in r.xrange(k.posts)]


def stream_posts(api: Api) -> dict[str, dict]:
    r, k = api.store.client, api.store.keys
    return {f["id"]: json.loads(f["post"]) for _, f in r.xrange(k.posts)}


def rate_limited_total(api: Api) -> dict[str, float]:
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(api.call("GET", "/metrics").text):
        for s in family.samples:
            if s.name == "floodgate_rate_limited_total":
                out[s.labels["scope"]] = s.value
    return out


def until_refused(send, limit: int = 20) -> tuple[list[httpx.Response], httpx.Response | None]:
    """Send until the first non-2xx answer; at most `limit` requests and LOOP_S seconds."""
    accepted: list[httpx.Response] = []
    deadline = time.monotonic() + LOOP_S
    for i in range(limit):
        if time.monotonic() > deadline:
            break
        r = send(i)
        if r.status_code >= 300:
            return accepted, r
        accepted.append(r)
    return accepted, None


def assert_limited(r: httpx.Response, field: str, rate_per_s: float) -> None:
    body = assert_error_shape(r, 429, "rate_limited", "rate_limited")
    assert [d["field"] for d in body["detail"]] == [field], body
    retry = int(r.headers["retry-after"])
    # whole seconds until one token is back: at most 1 / rate
    assert 1 <= retry <= 1 / rate_per_s, r.headers
    assert r.headers.get("x-request-id")


def test_a_key_over_its_limit_gets_429_and_keeps_what_it_sent(redis_url, model_dir):
    rate = 0.01
    with running_api(redis_url, model_dir, rate_key_per_s=rate, rate_key_burst=3,
                     rate_author_per_min=0) as api:  # fmt: skip
        for name in ("k1", "k2"):
            api.tokens[name] = api.store.create(name, ["submit"]).token
        with serving(api):
            accepted, refused = until_refused(
                lambda i: api.call("POST", "/v1/posts", "k1", json={"text": f"{EN} {i}"}))
            assert [r.status_code for r in accepted] == [202, 202, 202]
            assert refused is not None
            assert_limited(refused, "authorization", rate)
            # a batch on the same key: refused as a whole (the bucket is per request)
            again = api.call("POST", "/v1/posts/batch", "k1", json={"posts": [{"text": EN}]})
            assert_limited(again, "authorization", rate)
            # the bucket is the key's: another key of the same role is not affected
            assert api.call("POST", "/v1/posts", "k2", json={"text": EN}).status_code == 202

            ids = stream_ids(api)
            assert [r.json()["post_id"] for r in accepted] == ids[:3]
            assert len(ids) == 4  # the three of k1 and the one of k2; nothing refused
            assert rate_limited_total(api).get("key") == 2


AUTHOR_PER_MIN = 0.6  # one token per 100 s, a burst of 2


@contextmanager
def author_limited_api(redis_url, model_dir):
    """The API serving, authors limited to AUTHOR_PER_MIN with a burst of 2, and a
    `post(post_id, author)` that submits as the key "submit"."""
    with running_api(redis_url, model_dir, rate_author_per_min=AUTHOR_PER_MIN,
                     rate_author_burst=2) as api:  # fmt: skip
        api.tokens["submit"] = api.store.create("submitter", ["submit"]).token
        with serving(api):

            def post(post_id: str, author: str) -> httpx.Response:
                return api.call("POST", "/v1/posts", "submit", json={
                    "text": f"{EN} {post_id}", "post_id": post_id, "author": {"id": author}})  # fmt: skip

            yield api, post


def test_an_author_over_its_limit_is_refused_alone(redis_url, model_dir):
    per_min = AUTHOR_PER_MIN
    with author_limited_api(redis_url, model_dir) as (api, post):

        def alice(i: int) -> httpx.Response:
            return post(f"alice-{i}", "alice")

        accepted, refused = until_refused(alice)
        assert [r.json()["post_id"] for r in accepted] == ["alice-0", "alice-1"]
        assert refused is not None
        assert_limited(refused, "author.id", per_min / 60)
        # other authors, and posts without one, go through on the same key
        r = api.call("POST", "/v1/posts", "submit",
                     json={"text": EN, "post_id": "bob-0", "author": {"id": "bob"}})  # fmt: skip
        assert r.status_code == 202, r.text
        assert api.call("POST", "/v1/posts", "submit",
                        json={"text": EN, "post_id": "anon-0"}).status_code == 202  # fmt: skip

        batch = [
            {"text": EN, "post_id": "alice-b0", "author": {"id": "alice"}},
            {"text": EN, "post_id": "bob-b1", "author": {"id": "bob"}},
            {"text": EN, "post_id": "anon-b2"},
            {"text": EN, "post_id": "alice-b3", "author": {"id": "alice"}},
            {"text": EN, "post_id": "carol-b4", "author": {"id": "carol"}},
            {"text": "", "post_id": "bad-b5", "author": {"id": "carol"}},
        ]
        r = api.call("POST", "/v1/posts/batch", "submit", json={"posts": batch})
        assert r.status_code == 202, r.text
        results = r.json()["results"]
        assert [x["status"] for x in results] == [
            "rejected", "queued", "queued", "rejected", "queued", "rejected"]  # fmt: skip
        for i in (0, 3):
            assert results[i]["post_id"] == batch[i]["post_id"]
            assert results[i]["errors"] == [
                {"field": f"posts.{i}.author.id", "type": "rate_limited",
                 "message": results[i]["errors"][0]["message"]}]  # fmt: skip
        assert results[5]["errors"][0]["type"] != "rate_limited"  # invalid, not throttled
        assert r.json()["accepted"] == 3 and r.json()["rejected"] == 3
        assert "retry-after" not in r.headers  # that header is the backlog's

        posts = stream_posts(api)
        assert set(posts) == {"alice-0", "alice-1", "bob-0", "anon-0", "bob-b1", "anon-b2",
                              "carol-b4"}  # fmt: skip
        assert posts["alice-1"]["author"]["id"] == "alice"  # accepted before: intact
        # bob had one token left for the batch; a third post of his is refused now
        r = api.call("POST", "/v1/posts", "submit",
                     json={"text": EN, "post_id": "bob-2", "author": {"id": "bob"}})  # fmt: skip
        assert_limited(r, "author.id", per_min / 60)
        assert rate_limited_total(api).get("author") == 4  # alice 1 + 2 in the batch, bob 1
        assert "bob-2" not in stream_posts(api)


def test_retrying_a_delivered_post_is_a_duplicate_not_a_429(redis_url, model_dir):
    # a client that timed out resends what the API had already accepted: the answer is
    # `duplicate` even when its author is out of tokens, and the retries cost no token
    per_min = AUTHOR_PER_MIN
    with author_limited_api(redis_url, model_dir) as (api, post_as):

        def post(pid: str) -> httpx.Response:
            return post_as(pid, "dan")

        assert post("dan-0").status_code == 202
        for _ in range(3):  # retries of a delivered post: no token taken
            r = post("dan-0")
            assert r.status_code == 202 and r.json()["status"] == "duplicate", r.text
        assert post("dan-1").status_code == 202  # the second token was still there
        assert_limited(post("dan-2"), "author.id", per_min / 60)  # now dan is out
        r = post("dan-1")  # out of tokens, and retrying: still a duplicate
        assert r.status_code == 202 and r.json()["status"] == "duplicate", r.text
        batch = [{"text": EN, "post_id": pid, "author": {"id": "dan"}}
                 for pid in ("dan-0", "dan-3", "dan-1")]  # fmt: skip
        r = api.call("POST", "/v1/posts/batch", "submit", json={"posts": batch})
        assert [x["status"] for x in r.json()["results"]] == ["duplicate", "rejected", "duplicate"]
        assert r.json()["results"][1]["errors"][0]["type"] == "rate_limited"
        assert sorted(stream_posts(api)) == ["dan-0", "dan-1"]  # each once, nothing refused
        assert rate_limited_total(api).get("author") == 2  # dan-2 and dan-3 only
