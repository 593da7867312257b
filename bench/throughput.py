"""Worker throughput (posts/s through Redis -> worker -> stored decision) against the
model-only forward pass, measured in the same run on the same posts.

    python bench/throughput.py --posts 1024 --batch 64 --threads 2

Uses REDIS_URL, else 127.0.0.1:6379, else an embedded server; keys live under a private
prefix that is deleted afterwards. Prints a table and writes JSON with --json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
import uuid
from pathlib import Path

import redis

from service.config import Settings
from service.pipeline import Moderator
from service.queue import ENQUEUE_LUA, Keys
from service.redisdb import EmbeddedRedis, connect
from service.worker import Worker

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


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--posts", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    url, server = redis_url()
    settings = Settings(redis_url=url, key_prefix=f"fgbench-{uuid.uuid4().hex[:8]}",
                        batch_size=args.batch, batch_max_wait_ms=50, torch_threads=args.threads)  # fmt: skip
    moderator = Moderator.from_settings(settings)
    moderator.warm_up()
    texts = make_posts(args.posts)
    encoder = moderator.classifier.encoder

    # 1. model only: the forward pass over the same texts, same batch size
    t0 = time.perf_counter()
    for i in range(0, len(texts), args.batch):
        encoder.embed(texts[i : i + args.batch], prefix="query: ")
    model_s = time.perf_counter() - t0

    # 2. the whole pipeline without Redis: language + model + policy
    from service.pipeline import Job
    from service.schemas import PostIn

    jobs = [Job(f"b{i}", PostIn(text=t)) for i, t in enumerate(texts)]
    encoder.clear_cache()  # every phase embeds the same texts: no phase may reuse another's
    t0 = time.perf_counter()
    for i in range(0, len(jobs), args.batch):
        moderator.decide(jobs[i : i + args.batch])
    pipeline_s = time.perf_counter() - t0

    # 3. through Redis: enqueue everything, then one worker drains the stream
    client = connect(url)
    keys = Keys(settings.key_prefix)
    enqueue = client.register_script(ENQUEUE_LUA)
    now_ms = str(int(time.time() * 1000))
    with client.pipeline(transaction=False) as pipe:
        for i, t in enumerate(texts):
            enqueue(keys=[keys.accepted(f"w{i}"), keys.posts],
                    args=[3600, f"w{i}", json.dumps({"text": t}, ensure_ascii=False), now_ms], client=pipe)  # fmt: skip
        pipe.execute()
    worker = Worker(settings, moderator, name="bench")
    worker.consumer.ensure_group()
    encoder.clear_cache()
    t0 = time.perf_counter()
    while worker.decided < len(texts):
        worker.step()
    worker_s = time.perf_counter() - t0
    assert client.xlen(keys.audit) == len(texts)

    for key in client.scan_iter(f"{settings.key_prefix}:*", count=1000):
        client.delete(key)
    if server:
        server.stop()

    n = len(texts)
    rows = {
        "model forward only": n / model_s,
        "pipeline (language+model+policy)": n / pipeline_s,
        "worker via Redis (end to end)": n / worker_s,
    }
    base = rows["model forward only"]
    print(f"posts={n} batch={args.batch} torch_threads={args.threads} cpus={os.cpu_count()}")
    print(f"{'path':36s} {'posts/s':>9s} {'vs model':>9s}")
    for name, rate in rows.items():
        print(f"{name:36s} {rate:9.1f} {rate / base:9.2f}")
    if args.json:
        args.json.write_text(json.dumps({"posts": n, "batch": args.batch, "threads": args.threads,
                                         "posts_per_s": rows}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
