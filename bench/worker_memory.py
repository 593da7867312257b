"""Memory of a worker and of the API process (RSS), and what takes it.

    python bench/worker_memory.py --batches 40

1. A worker's load path, in a child process of its own (nothing else loaded): the resident
   memory after each step of Moderator.from_settings and warm_up, as the worker runs them
   (the real functions, wrapped to read /proc/self/status around them): the imports, the
   tokenizer, the encoder weights (memory-mapped from model.safetensors: their pages count
   once touched, and are file-backed, i.e. shared by every worker on the host), the
   fine-tuned top layers, the heads, the language models (lingua, fastText-lite, cld2) and
   the first decision; then after ``--batches`` batches of 64 of refugee_surge's posts
   (its languages and text lengths, through Moderator.decide), and once idle (the worker
   calls Moderator.release_memory when a read finds nothing after work).
2. The real processes, started as `floodgate serve` starts them (processes.EmbeddedService:
   the API and one worker): RSS after start-up, the moment ``--batches`` batches of queued
   posts are decided, and idle after ``--sync`` synchronous calls. The API must stay under
   200 MB: it never loads torch or a language model.

Each row gives RSS, its private part (RssAnon) and its file-backed part (RssFile), in MB.
JSON with --json.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `floodgate worker` runs torch
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

API_LIMIT_MB = 200


def memory(pid: int | str = "self") -> dict[str, int]:
    """RSS, RssAnon and RssFile of a process, in MB (Linux /proc)."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {k: int(fields[k].split()[0]) // 1024 for k in ("VmRSS", "RssAnon", "RssFile")}


def surge_posts(n: int) -> list[dict]:
    """``n`` of refugee_surge's posts, spread over its phases."""
    from service.replay.generate import generate
    from service.replay.runner import load

    posts = [g.post for g in generate(load("refugee_surge"), seed=3)]
    step = max(1, len(posts) // n)
    return [dict(p, post_id=f"m{i}") for i, p in enumerate(posts[::step][:n])]


class Steps:
    """Rows of (step, memory after it, growth over the row before)."""

    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.last = memory()
        self.note("python started")

    def note(self, step: str) -> None:
        now = memory()
        self.rows.append({"step": step, **now, "delta": now["VmRSS"] - self.last["VmRSS"]})
        self.last = now

    def around(self, owner, name: str, step: str) -> None:
        """Note ``step`` after every call of ``owner.name`` (the call itself unchanged)."""
        fn = getattr(owner, name)

        @functools.wraps(fn)
        def wrapped(*args, **kwargs):
            self.note(f"(before {step})")
            self.rows.pop()  # only moves the baseline: the step's growth is its own
            out = fn(*args, **kwargs)
            self.note(step)
            return out

        setattr(owner, name, wrapped)


def load_path(batches: int) -> list[dict]:
    """Part 1, run in the child process."""
    steps = Steps()
    import torch  # noqa: F401
    from transformers import AutoTokenizer, BertModel

    import service.classifier.encoder as encoder_module
    import service.pipeline as pipeline
    from service.config import get_settings
    from service.schemas import PostIn

    steps.note("imports: service, torch, transformers")
    steps.around(AutoTokenizer, "from_pretrained", "tokenizer (250k pieces)")
    steps.around(BertModel, "from_pretrained", "encoder weights (mapped, not yet read)")
    steps.around(encoder_module, "load_tuned", "fine-tuned top layers")
    steps.around(pipeline, "load_heads", "category heads")
    steps.around(pipeline.language, "warm_up", "language models (lingua, fastText-lite, cld2)")
    moderator = pipeline.Moderator.from_settings(get_settings())
    steps.note("policy and scorers")
    moderator.warm_up()
    steps.note("first decision")
    posts = surge_posts(64 * batches)
    for i in range(0, len(posts), 64):
        moderator.decide([pipeline.Job(p["post_id"], PostIn.model_validate(p)) for p in posts[i : i + 64]])
        if i // 64 + 1 in (1, batches // 4, batches):
            steps.note(f"after {i // 64 + 1} batches of the surge's posts")
    moderator.release_memory()
    steps.note("idle: Moderator.release_memory")
    steps.rows.append({"step": "embedding cache", "texts": len(moderator.encoder._cache),
                       "cache_size": moderator.encoder.cache_size})  # fmt: skip
    return steps.rows


def real_processes(batches: int, sync_calls: int) -> list[dict]:
    """Part 2: the API and a worker as `serve` runs them."""
    import httpx

    from bench.sync_throughput import queued, sync
    from service.processes import EmbeddedService

    rows = []
    with EmbeddedService(workers=1) as svc:
        pids = {"API": svc._api.pid, "worker": svc._procs[0].pid}
        rows += [{"process": k, "when": "started (worker warmed up)", **memory(p)} for k, p in pids.items()]
        posts = surge_posts(64 * batches)
        queued(svc.url, svc.redis_url, [(p["post_id"], p["text"]) for p in posts])
        when = f"the moment its {len(posts)} queued posts are decided"
        rows += [{"process": k, "when": when, **memory(p)} for k, p in pids.items()]
        extra = [(f"sync-{i}", p["text"]) for i, p in enumerate(surge_posts(sync_calls))]
        asyncio.run(sync(svc.url, extra, 4))
        httpx.get(svc.url + "/metrics", timeout=30).raise_for_status()
        time.sleep(2)  # the worker finds nothing to read and gives back its freed heap
        when = f"then {sync_calls} synchronous calls, /metrics, 2 s idle"
        rows += [{"process": k, "when": when, **memory(p)} for k, p in pids.items()]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--sync", type=int, default=50, help="synchronous calls in part 2")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(load_path(args.batches)))
        return
    started = time.perf_counter()
    child = subprocess.run([sys.executable, __file__, "--child", "--batches", str(args.batches)],
                           check=True, capture_output=True, text=True)  # fmt: skip
    steps = json.loads(child.stdout.strip().splitlines()[-1])
    print("1. a worker's load path (MB): RSS (growth) | private | file-backed")
    for r in steps:
        if "VmRSS" in r:
            print(f"   {r['step']:52s} {r['VmRSS']:6d} ({r['delta']:+5d}) | {r['RssAnon']:6d} | {r['RssFile']:5d}")
        else:
            print(f"   {r['step']:52s} {r['texts']} texts of {r['cache_size']}")
    procs = real_processes(args.batches, args.sync)
    print("2. the processes `floodgate serve` runs (MB): RSS | private | file-backed")
    for r in procs:
        print(f"   {r['process']:7s} {r['when']:58s} {r['VmRSS']:6d} | {r['RssAnon']:6d} | {r['RssFile']:5d}")
    api = max(r["VmRSS"] for r in procs if r["process"] == "API")
    print(f"API at most {api} MB RSS (limit {API_LIMIT_MB} MB): {'ok' if api < API_LIMIT_MB else 'OVER'}; "
          f"{time.perf_counter() - started:.0f} s")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"load_path": steps, "processes": procs}, indent=1) + "\n")


if __name__ == "__main__":
    main()
