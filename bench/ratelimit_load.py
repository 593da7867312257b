"""A bounded load test of the rate limits, on loopback, over the limit; and what the limiter
costs per request.

    python bench/ratelimit_load.py --posts 3000 --concurrency 16 --rounds 12

Runs `floodgate api` processes on 127.0.0.1 against Redis on 127.0.0.1:6379 (``--redis-url``),
each under a private key prefix with its own keys (so the API is closed), no worker.

1. Over the limit: a key sending single posts and a key sending batches of 20, both at full
   speed, authors drawn from a small pool, with low limits (key 20/s, burst 40; author
   6/min, burst 3). Counted: answers by status (202 / 429 / 5xx / other), 429s without
   Retry-After, posts rejected in batches with type rate_limited, and whether the posts
   stream holds exactly the accepted posts (none lost, none refused let in).
2. The limiter's cost: single posts (each with an author, so both buckets are checked, as on
   the submit path), one caller at a time (``--cost-concurrency``), against an API whose
   limits never refuse and one with the limits off, in interleaved rounds (median): the
   server's own time per request (floodgate_http_request_seconds) on and off, their ratio
   and difference, and the ratio of the client's requests per second.

Bounded in count (``--posts``) and in time (``--max-seconds`` per phase). Exit 1 when a 5xx,
a 429 without Retry-After or a lost post was seen. The private keys are deleted afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from service.auth import KeyStore
from service.processes import free_port
from service.queue import Keys
from service.redisdb import connect

TEXT = "Hello from Texas, first time here! 大家好，请多关照"
AUTHORS = 120


@dataclass
class Api:
    """`floodgate api` in a process of its own, with a submit key."""

    redis_url: str
    limits: dict[str, str]
    prefix: str = field(default_factory=lambda: f"fgload-{uuid.uuid4().hex[:10]}")
    port: int = field(default_factory=free_port)
    tokens: list[str] = field(default_factory=list)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, keys: int = 2) -> Api:
        store = KeyStore(connect(self.redis_url), Keys(self.prefix))
        self.tokens = [store.create(f"load-{i}", ["submit", "read"]).token for i in range(keys)]
        env = {**os.environ, "REDIS_URL": self.redis_url, "FLOODGATE_KEY_PREFIX": self.prefix,
               "FLOODGATE_POLICY_WATCH": "false", "FLOODGATE_LOG_LEVEL": "WARNING",
               "FLOODGATE_LOG_FORMAT": "json", **self.limits}  # fmt: skip
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service", "api", "--host", "127.0.0.1", "--port",
             str(self.port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/livez", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("the API did not start")

    def stop(self) -> None:
        if self.proc:
            self.proc.terminate()
            self.proc.wait(15)
        client = connect(self.redis_url)
        keys = list(client.scan_iter(f"{self.prefix}:*", count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i : i + 500])

    def stream_ids(self) -> set[str]:
        client = connect(self.redis_url)
        return {f["id"] for _, f in client.xrange(Keys(self.prefix).posts)}

    def server_seconds(self, route: str = "/v1/posts") -> tuple[float, float]:
        """(sum of seconds, count) of the server's own time on `route` so far."""
        total = count = 0.0
        text = httpx.get(self.url + "/metrics", timeout=30).text
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.labels.get("route") != route:
                    continue
                if s.name == "floodgate_http_request_seconds_sum":
                    total = s.value
                elif s.name == "floodgate_http_request_seconds_count":
                    count = s.value
        return total, count


@dataclass
class Tally:
    statuses: Counter = field(default_factory=Counter)
    no_retry_after: int = 0
    accepted: set[str] = field(default_factory=set)
    posts_rate_limited: int = 0
    posts_sent: int = 0
    latencies: list[float] = field(default_factory=list)


async def send_load(api: Api, posts: int, concurrency: int, max_seconds: float,
                    batch: int, tag: str) -> tuple[Tally, float]:  # fmt: skip
    """Single posts on the first key (and batches on the second when `batch`), full speed."""
    tally = Tally()
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(posts):
        queue.put_nowait(i)
    deadline = time.monotonic() + max_seconds
    headers = [{"Authorization": f"Bearer {t}"} for t in api.tokens]

    def post(i: int) -> dict:
        return {"text": f"{TEXT} #{i}", "post_id": f"{tag}-{i}",
                "author": {"id": f"author-{i % AUTHORS}"}}  # fmt: skip

    async def one(client: httpx.AsyncClient, n: int) -> None:
        while time.monotonic() < deadline:
            try:
                i = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            started = time.perf_counter()
            if batch and n % 4 == 3:  # a quarter of the callers send batches on key 2
                items = [post(i)] + [post(queue.get_nowait()) for _ in range(min(batch - 1, queue.qsize()))]
                r = await client.post("/v1/posts/batch", json={"posts": items}, headers=headers[1])
                tally.posts_sent += len(items)
                if r.status_code == 202:
                    for res in r.json()["results"]:
                        if res["status"] in ("queued", "duplicate"):
                            tally.accepted.add(res["post_id"])
                        elif any(e["type"] == "rate_limited" for e in res["errors"]):
                            tally.posts_rate_limited += 1
            else:
                r = await client.post("/v1/posts", json=post(i), headers=headers[0])
                tally.posts_sent += 1
                if r.status_code == 202:
                    tally.accepted.add(r.json()["post_id"])
            tally.latencies.append(time.perf_counter() - started)
            tally.statuses[r.status_code] += 1
            if r.status_code == 429 and not r.headers.get("retry-after"):
                tally.no_retry_after += 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=api.url, timeout=60, limits=limits) as client:
        await asyncio.gather(*(one(client, n) for n in range(concurrency)))
    return tally, time.perf_counter() - started


def over_the_limit(args) -> dict:
    api = Api(args.redis_url, {"FLOODGATE_RATE_KEY_PER_S": "20", "FLOODGATE_RATE_KEY_BURST": "40",
                               "FLOODGATE_RATE_AUTHOR_PER_MIN": "6",
                               "FLOODGATE_RATE_AUTHOR_BURST": "3"}).start()  # fmt: skip
    try:
        tally, seconds = asyncio.run(send_load(api, args.posts, args.concurrency,
                                               args.max_seconds, 20, "over"))  # fmt: skip
        metrics = httpx.get(api.url + "/metrics", timeout=30).text
        counted = {s.labels["scope"]: s.value for f in text_string_to_metric_families(metrics)
                   for s in f.samples if s.name == "floodgate_rate_limited_total"}  # fmt: skip
        stream = api.stream_ids()
    finally:
        api.stop()
    five = sum(n for code, n in tally.statuses.items() if code >= 500)
    return {
        "requests": sum(tally.statuses.values()), "seconds": round(seconds, 1),
        "posts_sent": tally.posts_sent,
        "status_202": tally.statuses[202], "status_429": tally.statuses[429], "status_5xx": five,
        "other_statuses": {str(c): n for c, n in tally.statuses.items() if c not in (202, 429) and c < 500},
        "429_without_retry_after": tally.no_retry_after,
        "posts_accepted": len(tally.accepted),
        "batch_posts_rejected_rate_limited": tally.posts_rate_limited,
        "metrics_rate_limited_total": counted,
        "accepted_missing_from_stream": len(tally.accepted - stream),
        "stream_entries_not_accepted": len(stream - tally.accepted),
    }  # fmt: skip


def limiter_cost(args) -> dict:
    never = {"FLOODGATE_RATE_KEY_PER_S": "1000000000", "FLOODGATE_RATE_KEY_BURST": "1000000000",
             "FLOODGATE_RATE_AUTHOR_PER_MIN": "1000000000",
             "FLOODGATE_RATE_AUTHOR_BURST": "1000000000"}  # fmt: skip
    off = {"FLOODGATE_RATE_KEY_PER_S": "0", "FLOODGATE_RATE_AUTHOR_PER_MIN": "0"}
    apis = {"limits on": Api(args.redis_url, never).start(1),
            "limits off": Api(args.redis_url, off).start(1)}
    server = {n: [0.0, 0.0] for n in apis}  # seconds, requests
    latencies: dict[str, list[float]] = {n: [] for n in apis}
    rps: dict[str, list[float]] = {n: [] for n in apis}
    try:
        for api in apis.values():  # warm-up, unmeasured
            asyncio.run(send_load(api, 100, args.cost_concurrency, args.max_seconds, 0, "warm"))
        for rnd in range(args.rounds):  # interleaved: a noisy neighbour hits both alike
            for name, api in apis.items():
                s0, c0 = api.server_seconds()
                tally, seconds = asyncio.run(send_load(api, args.cost_posts, args.cost_concurrency,
                                                       args.max_seconds, 0, f"r{rnd}"))  # fmt: skip
                s1, c1 = api.server_seconds()
                assert tally.statuses[202] == sum(tally.statuses.values()), tally.statuses
                server[name][0] += s1 - s0
                server[name][1] += c1 - c0
                latencies[name] += tally.latencies
                rps[name].append(sum(tally.statuses.values()) / seconds)
    finally:
        for api in apis.values():
            api.stop()
    out: dict[str, dict[str, float]] = {}
    for name in apis:
        lat = sorted(latencies[name])
        out[name] = {
            "requests": len(lat),
            "server_ms_mean": round(server[name][0] / max(server[name][1], 1) * 1000, 3),
            "client_p50_ms": round(statistics.median(lat) * 1000, 3),
            "client_p90_ms": round(lat[int(0.9 * (len(lat) - 1))] * 1000, 3),
            "rps_median": round(statistics.median(rps[name]), 1),
        }  # fmt: skip
    on, off_ = out["limits on"], out["limits off"]
    return {
        "rounds": args.rounds, "posts_per_round": args.cost_posts,
        "concurrency": args.cost_concurrency, **out,
        "p50_ratio_on_off": round(on["client_p50_ms"] / off_["client_p50_ms"], 3),
        "p50_added_ms": round(on["client_p50_ms"] - off_["client_p50_ms"], 3),
        "server_ms_ratio_on_off": round(on["server_ms_mean"] / off_["server_ms_mean"], 3),
        "rps_ratio_on_off": round(on["rps_median"] / off_["rps_median"], 3),
    }  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--posts", type=int, default=3000, help="posts in the over-the-limit phase")
    ap.add_argument("--cost-posts", type=int, default=100, help="posts per cost round and API")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--cost-concurrency", type=int, default=1,
                    help="callers in the cost rounds (1: the server's time is the request's own)")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--max-seconds", type=float, default=120.0, help="bound of each load")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    report = {"over_the_limit": over_the_limit(args), "limiter_cost": limiter_cost(args)}
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    o = report["over_the_limit"]
    bad = (o["status_5xx"] or o["429_without_retry_after"] or o["accepted_missing_from_stream"]
           or o["stream_entries_not_accepted"] or not o["status_429"])  # fmt: skip
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
