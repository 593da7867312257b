"""Worker throughput (posts/s through Redis -> worker -> stored decision) against the
model-only forward pass, measured in the same run on the same kinds of posts.

    python bench/throughput.py --posts 512 --batch 64 --threads 2 --rounds 8

Each round runs, one after another on fresh texts (no phase reuses another's embeddings;
each round starts with the next path, so that a change of load hits every path alike):
1. the model's forward pass alone, batch by batch;
2. the decide path without Redis (language + model + policy: Moderator.decide);
3. the worker one batch at a time (``Worker.step``: read, decide, store, in one thread);
4. the worker as it serves (``Worker.run``: the next batch is read, detected and goes
   forward while the finisher thread applies the policy to the previous one and stores it).
The worker paths drain a stream filled beforehand and are timed to the last decision
stored. The figures are ratios against the forward pass of the same round; the median over
rounds is printed with the range (the machines here are shared and noisy).

Uses REDIS_URL, else 127.0.0.1:6379, else an embedded server; keys live under a private
prefix that is deleted afterwards. JSON with --json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import threading
import time
import uuid
from pathlib import Path

# as `floodgate worker` runs torch (service/commands/serving.py): idle OpenMP threads sleep.
# Read when torch loads, so before the imports below; spinning threads made every path here
# slower and the forward pass in the main thread twice as slow as in another thread
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import redis  # noqa: E402

from service.config import Settings  # noqa: E402
from service.pipeline import Job, Moderator  # noqa: E402
from service.queue import ENQUEUE_LUA, Keys  # noqa: E402
from service.redisdb import EmbeddedRedis, connect  # noqa: E402
from service.schemas import PostIn  # noqa: E402
from service.worker import Worker  # noqa: E402

EN = [
    "hello from America, so happy to be here",
    "my cat knocked over my coffee again",
    "what is the best hotpot place in Chengdu?",
    "buy followers cheap, dm me now",
    "can someone teach me how to say thank you in Chinese?",
    "I will find you and hurt you",
]
ZH = ["今天做了红烧肉，味道还不错", "周末去爬山，风景真漂亮", "有没有人推荐好用的防晒霜",
      "加微信领取免费福利", "我們今天去台北吃東西", "美国朋友们好，欢迎来小红书"]  # fmt: skip
PATHS = ("model forward only", "pipeline (language+model+policy)",
         "worker, one thread (Worker.step)", "worker as served (overlapped)")  # fmt: skip


def make_posts(n: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        pool = EN if rng.random() < 0.3 else ZH
        out.append(
            f"{rng.choice(pool)} {rng.choice(pool)} #{i}"
            if rng.random() < 0.3
            else f"{rng.choice(pool)} #{i}"
        )
    return out


def redis_url() -> tuple[str, EmbeddedRedis | None]:
    for url in filter(None, [os.environ.get("REDIS_URL"), "redis://127.0.0.1:6379/0"]):
        try:
            if connect(url).ping():
                return url, None
        except redis.RedisError:
            pass
    server = EmbeddedRedis(Path("var/bench"), fsync="everysec").start()
    return server.url, server


def enqueue(client: redis.Redis, keys: Keys, texts: list[str], tag: str) -> None:
    script = client.register_script(ENQUEUE_LUA)
    now_ms = str(int(time.time() * 1000))
    with client.pipeline(transaction=False) as pipe:
        for i, t in enumerate(texts):
            script(keys=[keys.accepted(f"{tag}-{i}"), keys.posts],
                   args=[3600, f"{tag}-{i}", json.dumps({"text": t}, ensure_ascii=False), now_ms, 0],
                   client=pipe)  # fmt: skip
        pipe.execute()


def drain_stepwise(worker: Worker, target: int) -> float:
    t0 = time.perf_counter()
    while worker.decided < target:
        worker.step()
    return time.perf_counter() - t0


def drain_served(worker: Worker, target: int) -> float:
    """Worker.run until ``target`` decisions are stored, timed to the last one (a watcher
    thread notes the moment: run itself returns only after its next idle read)."""
    done_at: list[float] = []

    def watch() -> None:
        while worker.decided < target:
            time.sleep(0.002)
        done_at.append(time.perf_counter())

    watcher = threading.Thread(target=watch)
    watcher.start()
    t0 = time.perf_counter()
    worker.run(until=lambda: bool(done_at))
    watcher.join()
    return done_at[0] - t0


def one_round(moderator: Moderator, client: redis.Redis, settings: Settings, texts: list[list[str]],
              r: int, batch: int) -> tuple[dict[str, float], dict[str, float]]:  # fmt: skip
    """posts/s of each path on its own texts (``texts[k]`` for path k), and the CPU
    milliseconds this process (all its threads) spent per post on it."""
    encoder, keys, rates, cpu = moderator.encoder, Keys(settings.key_prefix), {}, {}

    def model_only() -> float:
        t0 = time.perf_counter()
        for i in range(0, len(texts[0]), batch):
            encoder.embed(texts[0][i : i + batch], prefix="query: ")
        return time.perf_counter() - t0

    def pipeline() -> float:
        jobs = [Job(f"b{r}-{i}", PostIn(text=t)) for i, t in enumerate(texts[1])]
        t0 = time.perf_counter()
        for i in range(0, len(jobs), batch):
            moderator.decide(jobs[i : i + batch])
        return time.perf_counter() - t0

    def worker_path(drain, tx: list[str], tag: str):
        def run() -> float:
            enqueue(client, keys, tx, tag)
            worker = Worker(settings, moderator, name=f"bench-{tag}")
            worker.consumer.ensure_group()
            return drain(worker, len(tx))

        return run

    encoder.clear_cache()
    runs = (model_only, pipeline, worker_path(drain_stepwise, texts[2], f"w{r}-step"),
            worker_path(drain_served, texts[3], f"w{r}-served"))  # fmt: skip
    order = list(zip(PATHS, runs, texts, strict=True))
    for path, run, tx in order[r % 4 :] + order[: r % 4]:  # each round starts with another path
        c0 = time.process_time()
        rates[path] = len(tx) / run()
        cpu[path] = (time.process_time() - c0) / len(tx) * 1000
    assert client.xlen(keys.posts) == 0
    return rates, cpu


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--posts", type=int, default=1024, help="posts per path and round")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    url, server = redis_url()
    settings = Settings(redis_url=url, key_prefix=f"fgbench-{uuid.uuid4().hex[:8]}",
                        batch_size=args.batch, batch_max_wait_ms=50, torch_threads=args.threads)  # fmt: skip
    moderator = Moderator.from_settings(settings)
    moderator.warm_up()
    client = connect(url)
    texts = make_posts(4 * args.rounds * args.posts)
    rounds: list[dict[str, float]] = []
    cpus: list[dict[str, float]] = []
    try:
        for r in range(args.rounds):
            base = 4 * r * args.posts
            mine = [texts[base + k * args.posts : base + (k + 1) * args.posts] for k in range(4)]
            rates, cpu = one_round(moderator, client, settings, mine, r, args.batch)
            rounds.append(rates)
            cpus.append(cpu)
            print(f"round {r + 1}: " + ", ".join(f"{k} {v:.1f}/s ({cpu[k]:.1f} CPU ms/post)"
                                                 for k, v in rates.items()), flush=True)  # fmt: skip
    finally:
        for key in client.scan_iter(f"{settings.key_prefix}:*", count=1000):
            client.delete(key)
        if server:
            server.stop()

    print(f"posts={args.posts} x {args.rounds} rounds, batch={args.batch} "
          f"torch_threads={args.threads} cpus={os.cpu_count()}")  # fmt: skip
    print(f"{'path':36s} {'posts/s':>9s} {'vs model':>9s} {'range':>12s} {'CPU ms/post':>12s}")
    summary = {}
    for path in PATHS:
        ratios = [r[path] / r[PATHS[0]] for r in rounds]
        rate = statistics.median(r[path] for r in rounds)
        cpu_ms = statistics.median(c[path] for c in cpus)
        summary[path] = {"posts_per_s": round(rate, 1), "vs_model": round(statistics.median(ratios), 3),
                         "vs_model_range": [round(min(ratios), 3), round(max(ratios), 3)],
                         "cpu_ms_per_post": round(cpu_ms, 2)}  # fmt: skip
        print(f"{path:36s} {rate:9.1f} {statistics.median(ratios):9.2f} "
              f"{min(ratios):5.2f}-{max(ratios):4.2f} {cpu_ms:12.1f}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"posts": args.posts, "rounds": rounds, "cpu_ms": cpus, "batch": args.batch,
                                         "threads": args.threads, "summary": summary}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
