"""The rate limiter's own cost per request: token-bucket checks per second against a plain
PING round trip, measured in the same run on the same connection, as a ratio.

    python bench/ratelimit.py --calls 20000 --rounds 5

Rows (each sequential, one caller, as one API request waits for its check):
  ping            PING: the floor of any Redis round trip
  check 1 bucket  RateLimiter.check(key bucket)             (allowed)
  check 2 buckets RateLimiter.check(key, author)            (the submit path; allowed)
  check refused   RateLimiter.check on an empty bucket      (writes nothing)
  async ...       the same through redis.asyncio, as the API calls it
  verify key      AsyncKeyStore.verify (one HGETALL; API key lookup, for comparison)
Also Redis's own CPU time per script call (INFO commandstats, evalsha usec_per_call).

Rounds are interleaved (ping, checks, ping, ...) and the median is reported, so a noisy
neighbour on a shared machine hits every row alike. Uses REDIS_URL, else 127.0.0.1:6379,
else an embedded server; keys live under a private prefix that is deleted afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import redis

from service.auth import AsyncKeyStore, KeyStore
from service.queue import Keys
from service.ratelimit import AsyncRateLimiter, Bucket, Limit, RateLimiter
from service.redisdb import EmbeddedRedis, connect, connect_async

OPEN = Limit(rate=1e9, burst=1_000_000_000)  # never refuses: measures the allowed path
SHUT = Limit(rate=1e-9, burst=1)  # refuses after the first call


def timed(fn: Callable[[], object], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return calls / (time.perf_counter() - start)


async def timed_async(fn: Callable[[], Awaitable[object]], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        await fn()
    return calls / (time.perf_counter() - start)


def script_usec(client: redis.Redis) -> tuple[int, float]:
    stats = client.info("commandstats").get("cmdstat_evalsha", {})
    return int(stats.get("calls", 0)), float(stats.get("usec", 0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=20_000, help="calls per row per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()

    embedded = None
    url = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
    try:
        connect(url).ping()
    except redis.RedisError:
        embedded = EmbeddedRedis(Path("var") / "bench-redis", fsync="everysec").start()
        url = embedded.url
    keys = Keys(f"fgbench-{uuid.uuid4().hex[:8]}")
    client = connect(url)
    limiter = RateLimiter(client, keys)
    key, author = Bucket("key", "k1", OPEN), Bucket("author", "a1", OPEN)
    empty = Bucket("key", "empty", SHUT)
    limiter.check(empty)
    token = KeyStore(client, keys).create("bench", ["submit"]).token

    sync_rows: dict[str, Callable[[], object]] = {
        "ping": client.ping,
        "check 1 bucket": lambda: limiter.check(key),
        "check 2 buckets": lambda: limiter.check(key, author),
        "check refused": lambda: limiter.check(empty),
    }
    rates: dict[str, list[float]] = {name: [] for name in sync_rows}
    rates |= {"async ping": [], "async check 2 buckets": [], "async verify key": []}
    calls_before, usec_before = script_usec(client)

    async def async_round(calls: int) -> None:
        aclient = connect_async(url)
        alimiter, astore = AsyncRateLimiter(aclient, keys), AsyncKeyStore(aclient, keys)
        try:
            await aclient.ping()
            rates["async ping"].append(await timed_async(aclient.ping, calls))
            rates["async check 2 buckets"].append(
                await timed_async(lambda: alimiter.check(key, author), calls)
            )
            rates["async verify key"].append(
                await timed_async(lambda: astore.verify(token), calls)
            )
        finally:
            await aclient.aclose()

    try:
        for fn in sync_rows.values():  # warm-up: connections, script cache
            timed(fn, 200)
        for _ in range(args.rounds):
            for name, fn in sync_rows.items():
                rates[name].append(timed(fn, args.calls))
            asyncio.run(async_round(args.calls))
        calls_after, usec_after = script_usec(client)
    finally:
        for name in client.scan_iter(f"{keys.prefix}:*"):
            client.delete(name)
        if embedded:
            embedded.stop()

    median = {name: statistics.median(r) for name, r in rates.items()}
    script_calls = calls_after - calls_before
    result = {
        "redis": url.split("@")[-1],
        "calls_per_row": args.calls,
        "rounds": args.rounds,
        "calls_per_s": {k: round(v) for k, v in median.items()},
        "server_usec_per_script_call": round((usec_after - usec_before) / script_calls, 2)
        if script_calls
        else None,
    }
    print(f"Redis {result['redis']}, {args.rounds} rounds x {args.calls} calls, medians")
    print(f"{'':24}{'calls/s':>10}{'us/call':>10}{'vs ping':>9}{'added us':>10}")
    for name, rate in median.items():
        ping = median["async ping" if name.startswith("async") else "ping"]
        print(f"{name:24}{rate:10,.0f}{1e6 / rate:10.1f}{ping / rate:9.2f}x"
              f"{1e6 / rate - 1e6 / ping:10.1f}")  # fmt: skip
    print(f"Redis CPU per token-bucket script call: {result['server_usec_per_script_call']} us")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
