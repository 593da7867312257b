"""Synchronous moderation (POST /v1/moderate) against queued moderation, in the same run.

    python bench/sync_throughput.py --posts 300 --concurrency 32 --rounds 3

Starts an embedded service (Redis, API, workers: processes.EmbeddedService), then, on the
same kinds of posts (bench/throughput.py's mix, distinct texts and ids so nothing is a cache
hit or a duplicate), for each round:
1. queued: ``--posts`` posts sent in batches of 200, timed until the last decision is
   stored (counted on the audit stream in Redis: no HTTP polling steals the workers' CPU);
2. sync: as many other posts sent to /v1/moderate by ``--concurrency`` clients at once.
Rounds alternate the two phases so both see the same machine; each round's sync / queued
ratio is printed with the median and spread. Then, at low load, ``--probes`` calls one
after another (p50, p99), against the target of issue 14: p50 <= the batch wait
(FLOODGATE_BATCH_MAX_WAIT_MS) + one pass of the decide path on one post, the latter taken
from the worker's own model-time histogram during the probes (same run, same process).

Per phase it also reports what explains the figures: the workers' batches (count, mean
size, decide seconds per post) and the CPU seconds each process spent per post (API,
workers, Redis, this client). JSON with --json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.throughput import make_posts  # noqa: E402
from service.config import get_settings  # noqa: E402
from service.processes import EmbeddedService  # noqa: E402
from service.queue import Keys  # noqa: E402
from service.redisdb import connect  # noqa: E402


def queued(url: str, redis_url: str, posts: list[tuple[str, str]]) -> float:
    """Posts/s from the first batch sent to the last decision stored."""
    audit = Keys(get_settings().key_prefix).audit
    client = connect(redis_url)
    target = client.xlen(audit) + len(posts)
    with httpx.Client(base_url=url, timeout=120) as http:
        started = time.perf_counter()
        for i in range(0, len(posts), 200):
            body = {"posts": [{"post_id": pid, "text": t} for pid, t in posts[i : i + 200]]}
            http.post("/v1/posts/batch", json=body).raise_for_status()
        while client.xlen(audit) < target:
            time.sleep(0.01)
        return len(posts) / (time.perf_counter() - started)


async def sync(url: str, posts: list[tuple[str, str]], concurrency: int,
               timings: list[dict] | None = None) -> tuple[float, list[float]]:  # fmt: skip
    """Posts/s of ``concurrency`` clients calling /v1/moderate back to back; latencies (s);
    the decisions' own ``timings`` appended to ``timings``."""
    latencies: list[float] = []
    todo = list(reversed(posts))

    async def client(http: httpx.AsyncClient) -> None:
        while todo:
            pid, text = todo.pop()
            t0 = time.perf_counter()
            r = await http.post("/v1/moderate", json={"post_id": pid, "text": text})
            r.raise_for_status()
            latencies.append(time.perf_counter() - t0)
            if timings is not None:
                timings.append(r.json()["timings"])

    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        return len(posts) / (time.perf_counter() - started), latencies


def worker_figures(url: str) -> dict[str, float]:
    """The workers' batch-size and model-time histograms' sums and counts (/metrics)."""
    out = {}
    for line in httpx.get(url + "/metrics", timeout=30).text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("floodgate_batch_size_count", "floodgate_batch_size_sum",
                    "floodgate_model_seconds_sum", "floodgate_model_seconds_count"):  # fmt: skip
            out[name.removeprefix("floodgate_")] = float(value)
    return out


class Meter:
    """CPU seconds of the service's processes and of this one, and the workers' batches,
    over one phase."""

    def __init__(self, svc: EmbeddedService) -> None:
        self.url = svc.url
        self.procs = {"api": [psutil.Process(svc._api.pid)],
                      "workers": [psutil.Process(p.pid) for p in svc._procs],
                      "redis": [psutil.Process(svc._redis.process.pid)],
                      "client": [psutil.Process()]}  # fmt: skip

    def snapshot(self) -> dict[str, float]:
        cpu = {k: sum(sum(p.cpu_times()[:2]) for p in ps) for k, ps in self.procs.items()}
        return cpu | worker_figures(self.url)

    def phase(self, before: dict[str, float], posts: int) -> dict[str, float]:
        after = self.snapshot()
        d = {k: after[k] - before.get(k, 0.0) for k in after}
        batches = max(d["batch_size_count"], 1)
        return {"batches": int(d["batch_size_count"]),
                "mean_batch": round(d["batch_size_sum"] / batches, 1),
                "decide_ms_per_post": round(d["model_seconds_sum"] / max(d["batch_size_sum"], 1) * 1000, 2),
                "decide_ms_per_batch": round(d["model_seconds_sum"] / batches * 1000, 1),
                **{f"cpu_ms_per_post_{k}": round(d[k] / posts * 1000, 2) for k in self.procs}}  # fmt: skip


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def run_rounds(svc: EmbeddedService, texts: list[str], args) -> list[dict]:
    meter, rounds, n = Meter(svc), [], args.posts
    for r in range(args.rounds):
        base = 2 * r * n
        q_posts = [(f"q{r}-{i}", t) for i, t in enumerate(texts[base : base + n])]
        s_posts = [(f"s{r}-{i}", t) for i, t in enumerate(texts[base + n : base + 2 * n])]
        before = meter.snapshot()
        q_rate = queued(svc.url, svc.redis_url, q_posts)
        q_fig = meter.phase(before, n)
        before = meter.snapshot()
        s_rate, s_lat = asyncio.run(sync(svc.url, s_posts, args.concurrency))
        s_fig = meter.phase(before, n)
        rounds.append({"queued_posts_per_s": round(q_rate, 1), "sync_posts_per_s": round(s_rate, 1),
                       "sync_vs_queued": round(s_rate / q_rate, 2),
                       "sync_p50_ms": round(statistics.median(s_lat) * 1000, 1),
                       "queued": q_fig, "sync": s_fig})  # fmt: skip
        print(f"round {r + 1}: queued {q_rate:6.1f} posts/s, sync {s_rate:6.1f} posts/s, "
              f"ratio {s_rate / q_rate:.2f}", flush=True)  # fmt: skip
        for name, fig in (("queued", q_fig), ("sync", s_fig)):
            print(f"   {name:6s} " + ", ".join(f"{k} {v}" for k, v in fig.items()), flush=True)
    return rounds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--posts", type=int, default=300, help="posts per phase and round")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--probes", type=int, default=40)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--log-dir", type=Path, help="keep the service's log here")
    args = ap.parse_args()
    texts = make_posts(2 * args.rounds * args.posts + args.probes, seed=11)
    probes = [(f"p{i}", t) for i, t in enumerate(texts[-args.probes :])]
    with EmbeddedService(workers=args.workers, log_dir=args.log_dir) as svc:
        # warm-up: the first batches pay for lazy loads
        asyncio.run(sync(svc.url, [(f"warm-{i}", f"warm up {i}") for i in range(16)], 4))
        rounds = run_rounds(svc, texts, args)
        meter = Meter(svc)
        before, parts = meter.snapshot(), []
        _, low = asyncio.run(sync(svc.url, probes, 1, parts))
        probe_fig = meter.phase(before, len(probes))
    ratios = [r["sync_vs_queued"] for r in rounds]
    wait_ms = get_settings().batch_max_wait_ms
    one_pass_ms = probe_fig["decide_ms_per_batch"]
    out = {
        "posts": args.posts, "concurrency": args.concurrency, "workers": args.workers,
        "rounds": rounds, "sync_vs_queued_median": statistics.median(ratios),
        "sync_vs_queued_range": [min(ratios), max(ratios)],
        "low_load_p50_ms": round(pct(low, 50) * 1000, 1), "low_load_p99_ms": round(pct(low, 99) * 1000, 1),
        "low_load_worker": probe_fig, "batch_wait_ms": wait_ms,
        # what the decisions say of themselves: enqueued -> taken into the decide path, and
        # the decide path (the rest is HTTP, the enqueue, the commit and the reply)
        "low_load_queue_wait_p50_ms": round(statistics.median(t["queue_wait_ms"] for t in parts), 1),
        "low_load_processing_p50_ms": round(statistics.median(t["processing_ms"] for t in parts), 1),
        "p50_target_ms": round(wait_ms + one_pass_ms, 1),
    }  # fmt: skip
    print(f"sync / queued at concurrency {args.concurrency}: median {out['sync_vs_queued_median']:.2f} "
          f"(rounds: {', '.join(f'{x:.2f}' for x in ratios)}; target >= 0.8)")  # fmt: skip
    print(f"low load: p50 {out['low_load_p50_ms']} ms, p99 {out['low_load_p99_ms']} ms; target p50 <= "
          f"batch wait {wait_ms} ms + one decide pass {one_pass_ms} ms = {out['p50_target_ms']} ms "
          f"(worker batches during the probes: {probe_fig['batches']}, mean size {probe_fig['mean_batch']}; "
          f"p50 enqueue -> decide path {out['low_load_queue_wait_p50_ms']} ms, "
          f"decide path {out['low_load_processing_p50_ms']} ms)")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
