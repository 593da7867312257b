"""Token buckets (service/ratelimit.py) on the real Redis.

Refill is asserted against Redis's own clock (each result carries the server time of its
check), never against how fast the test ran.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from service.queue import Keys
from service.ratelimit import AsyncRateLimiter, Bucket, Limit, RateLimiter, RateResult, bucket_key
from service.redisdb import connect, connect_async

NEVER = 1e-9  # tokens per second: no refill within any test's lifetime


@pytest.fixture
def limiter(settings) -> RateLimiter:
    return RateLimiter(connect(settings.redis_url), Keys(settings.key_prefix))


def wait_for_server_time(limiter: RateLimiter, bucket: Bucket, after: float) -> RateResult:
    """Peek (cost 0) until Redis's clock has moved past ``after``."""
    while True:
        peek = limiter.check(bucket, cost=0)
        if peek.server_time > after:
            return peek


@pytest.mark.parametrize(("burst", "cost", "passes"), [(5, 1, 5), (10, 3, 3), (1, 1, 1), (4, 4, 1)])
def test_a_full_bucket_lets_burst_through_then_refuses(limiter, burst, cost, passes):
    bucket = Bucket("key", "k1", Limit(NEVER, burst))
    results = [limiter.check(bucket, cost=cost) for _ in range(passes + 2)]
    assert [r.allowed for r in results] == [True] * passes + [False, False]
    denied = results[-1]
    assert denied.limiting == bucket
    assert denied.retry_after > 0 and denied.headers()["Retry-After"] == denied.retry_after_header
    assert denied.remaining == pytest.approx(burst - passes * cost, abs=1e-6)


@pytest.mark.parametrize(
    ("rate", "burst", "taken"),
    [(50.0, 1000, 400), (2.0, 10, 10), (1000.0, 100_000, 50_000), (0.5, 3, 1)],
)
def test_bucket_refills_at_the_configured_rate(limiter, rate, burst, taken):
    bucket = Bucket("key", f"refill-{rate}", Limit(rate, burst))
    first = limiter.check(bucket, cost=taken)
    assert first.allowed
    assert first.remaining == pytest.approx(burst - taken)
    later = wait_for_server_time(limiter, bucket, first.server_time + 0.05)
    elapsed = later.server_time - first.server_time
    expected = min(burst, burst - taken + elapsed * rate)
    # the stored timestamp keeps 0.1 ms (Lua's %.14g): allow that much refill either way
    assert later.remaining == pytest.approx(expected, abs=rate * 2e-4 + 1e-6)


def test_refill_stops_at_burst(limiter):
    bucket = Bucket("author", "u1", Limit(1e6, 20))
    first = limiter.check(bucket, cost=20)
    assert first.allowed and first.remaining == pytest.approx(0, abs=1e-6)
    later = wait_for_server_time(limiter, bucket, first.server_time + 0.001)
    assert later.remaining == 20


def test_retry_after_is_when_the_tokens_are_back(limiter):
    limit = Limit(rate=4.0, burst=8)
    bucket = Bucket("key", "k-retry", limit)
    assert limiter.check(bucket, cost=8).allowed
    denied = limiter.check(bucket, cost=3)
    assert not denied.allowed
    # remaining + rate * retry_after == cost, in Redis time
    assert denied.remaining + limit.rate * denied.retry_after == pytest.approx(3, abs=1e-3)
    assert 0 < denied.retry_after <= 3 / limit.rate
    # (+10 ms: the stored timestamp is rounded to 0.1 ms)
    ready = wait_for_server_time(limiter, bucket, denied.server_time + denied.retry_after + 0.01)
    assert ready.remaining >= 3
    assert limiter.check(bucket, cost=3).allowed


def test_a_refusal_charges_no_bucket(limiter):
    roomy = Bucket("key", "k-roomy", Limit(NEVER, 100))
    empty = Bucket("author", "a-empty", Limit(NEVER, 1))
    assert limiter.check(empty).allowed
    for _ in range(5):
        refused = limiter.check(roomy, empty)
        assert not refused.allowed and refused.limiting == empty
    assert limiter.check(roomy, cost=0).remaining == pytest.approx(100)
    assert limiter.check(roomy).allowed  # alone, it still has room


def test_key_and_author_buckets_are_independent(limiter, settings):
    limit = Limit(NEVER, 2)
    checks = [Bucket("key", "k1", limit), Bucket("key", "k2", limit),
              Bucket("author", "k1", limit)]  # fmt: skip
    for b in checks:
        assert [limiter.check(b).allowed for _ in range(3)] == [True, True, False]
    names = {bucket_key(limiter.keys, b) for b in checks}
    assert len(names) == 3 and all(n.startswith(settings.key_prefix + ":rl:") for n in names)


def test_client_supplied_ids_are_hashed_when_long_or_odd(limiter):
    for ident in ["x" * 500, "a\nb", "tab\there"]:
        name = bucket_key(limiter.keys, Bucket("author", ident, Limit(1, 1)))
        assert ident not in name and ":rl:author:h:" in name
    assert bucket_key(limiter.keys, Bucket("author", "u-42", Limit(1, 1))).endswith(":author:u-42")


def test_buckets_expire_once_they_would_be_full_again(limiter):
    bucket = Bucket("key", "k-ttl", Limit(rate=10.0, burst=50))
    limiter.check(bucket)
    ttl = limiter.client.pttl(bucket_key(limiter.keys, bucket))
    assert 0 < ttl <= 50 / 10 * 1000 + 1000


def test_a_peek_consumes_nothing_and_writes_nothing(limiter):
    bucket = Bucket("key", "k-peek", Limit(NEVER, 3))
    assert limiter.check(bucket, cost=0).remaining == 3
    assert not limiter.client.exists(bucket_key(limiter.keys, bucket))


@pytest.mark.parametrize(
    ("rate", "burst", "cost"),
    [(0, 1, 1), (-1, 1, 1), (float("inf"), 1, 1), (1, 0, 1), (1, 5, 6), (1, 5, -1)],
)
def test_impossible_limits_and_costs_are_refused(limiter, rate, burst, cost):
    with pytest.raises(ValueError):
        limiter.check(Bucket("key", "k", Limit(rate, burst)), cost=cost)


@pytest.mark.parametrize(
    ("retry_after", "header"), [(0.001, "1"), (0.999, "1"), (1.0, "1"), (1.01, "2"), (59.5, "60")]
)
def test_retry_after_header_rounds_up_to_whole_seconds(retry_after, header):
    result = RateResult(allowed=False, retry_after=retry_after, remaining=0.3, server_time=0)
    assert result.retry_after_header == header
    assert result.headers() == {"X-RateLimit-Remaining": "0", "Retry-After": header}


def test_per_minute():
    assert Limit.per_minute(120) == Limit(2.0, 120)
    assert Limit.per_minute(30, burst=5) == Limit(0.5, 5)


def test_concurrent_callers_never_exceed_burst(limiter):
    burst, threads, calls = 100, 8, 40
    bucket = Bucket("key", "hammered", Limit(NEVER, burst))
    allowed = []
    start = threading.Barrier(threads)

    def hammer() -> None:
        start.wait()
        mine = sum(limiter.check(bucket).allowed for _ in range(calls))
        allowed.append(mine)

    pool = [threading.Thread(target=hammer) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(60)
    assert len(allowed) == threads
    assert sum(allowed) == burst  # threads * calls = 320 tried


def test_check_many_is_one_check_per_request(limiter):
    limit = Limit(NEVER, 2)
    key = Bucket("key", "k-batch", Limit(NEVER, 10))
    requests = [([key, Bucket("author", a, limit)], 1) for a in ["a", "a", "a", "b"]]
    assert [r.allowed for r in limiter.check_many(requests)] == [True, True, False, True]
    assert limiter.check(key, cost=0).remaining == pytest.approx(7)


def test_async_limiter_shares_buckets_and_never_exceeds_burst(settings, limiter):
    bucket = Bucket("key", "async", Limit(NEVER, 10))

    async def main() -> tuple[list[bool], list[bool]]:
        client = connect_async(settings.redis_url)
        alimiter = AsyncRateLimiter(client, Keys(settings.key_prefix))
        try:
            results = await asyncio.gather(*(alimiter.check(bucket) for _ in range(30)))
            many = await alimiter.check_many([([bucket], 0), ([bucket], 1)])
            return [r.allowed for r in results], [r.allowed for r in many]
        finally:
            await client.aclose()

    allowed, many = asyncio.run(main())
    assert sum(allowed) == 10 and many == [True, False]
    assert not limiter.check(bucket).allowed  # the sync limiter sees the same bucket
