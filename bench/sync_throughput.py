"""Synchronous moderation (POST /v1/moderate) against queued moderation, in the same run.

    python bench/sync_throughput.py --posts 600 --concurrency 32 --workers 1

Starts an embedded service (Redis, API, workers: processes.EmbeddedService), then, on
the same kinds of posts (bench/throughput.py's mix, distinct texts so nothing is a cache
hit):
1. queued: the posts sent in batches, timed until the last decision is stored;
2. sync: as many other posts sent to /v1/moderate by `--concurrency` clients at once;
3. latency at low load: `--probes` calls one after another (p50, p99).
Prints the table (posts/s, sync / queued ratio) and writes JSON with --json. The target of
issue 14: sync at concurrency 32 >= 0.8 x queued; p50 at low load <= batch wait + one
forward pass (the model alone on one post, measured by bench/model_speed.py).
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.throughput import make_posts  # noqa: E402
from service.processes import EmbeddedService  # noqa: E402


def queued(url: str, texts: list[str]) -> float:
    ids = [f"q{i}" for i in range(len(texts))]
    with httpx.Client(base_url=url, timeout=120) as http:
        started = time.perf_counter()
        for i in range(0, len(texts), 200):
            posts = [{"post_id": pid, "text": t} for pid, t in zip(ids[i:i + 200], texts[i:i + 200], strict=True)]
            r = http.post("/v1/posts/batch", json={"posts": posts})
            r.raise_for_status()
        todo = set(ids)
        while todo:
            for pid in list(todo)[:200]:
                if http.get(f"/v1/posts/{pid}/decision").status_code == 200:
                    todo.discard(pid)
            time.sleep(0.05)
        return len(texts) / (time.perf_counter() - started)


async def sync(url: str, texts: list[str], concurrency: int) -> tuple[float, list[float]]:
    latencies: list[float] = []
    queue: asyncio.Queue = asyncio.Queue()
    for i, t in enumerate(texts):
        queue.put_nowait((f"s{i}", t))

    async def client(http: httpx.AsyncClient) -> None:
        while not queue.empty():
            pid, text = queue.get_nowait()
            t0 = time.perf_counter()
            r = await http.post("/v1/moderate", json={"post_id": pid, "text": text})
            r.raise_for_status()
            latencies.append(time.perf_counter() - t0)

    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        return len(texts) / (time.perf_counter() - started), latencies


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--posts", type=int, default=600)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--probes", type=int, default=40)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--log-dir", type=Path, help="keep the service's log here")
    args = ap.parse_args()
    texts = make_posts(2 * args.posts + args.probes, seed=11)
    with EmbeddedService(workers=args.workers, log_dir=args.log_dir) as svc:
        # warm-up: the first batches pay for lazy loads
        asyncio.run(sync(svc.url, [f"warm up {i}" for i in range(16)], 4))
        q_rate = queued(svc.url, texts[: args.posts])
        s_rate, s_lat = asyncio.run(sync(svc.url, texts[args.posts : 2 * args.posts], args.concurrency))
        _, low = asyncio.run(sync(svc.url, texts[2 * args.posts :], 1))
    out = {
        "posts": args.posts, "concurrency": args.concurrency, "workers": args.workers,
        "queued_posts_per_s": round(q_rate, 1), "sync_posts_per_s": round(s_rate, 1),
        "sync_vs_queued": round(s_rate / q_rate, 2),
        "sync_p50_ms_at_concurrency": round(statistics.median(s_lat) * 1000, 1),
        "low_load_p50_ms": round(pct(low, 50) * 1000, 1), "low_load_p99_ms": round(pct(low, 99) * 1000, 1),
    }  # fmt: skip
    for k, v in out.items():
        print(f"{k:30} {v}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
