"""Posts/s of the model path at batch 1, 8, 32, 128 on short (<= 32 tokens), long
(>= 256 tokens) and mixed (80 % short, 20 % long) posts, with the thread count fixed, against the plain fp32 forward pass
measured in the same run (machines here are shared and noisy: compare ratios, not runs).

    python bench/model_speed.py --threads 2 --json var/bench/model_speed.json

Variants:
  plain      fp32, the batch padded to its longest post, max_length 512
  bucketed   fp32, sorted by length into sub-batches (what Encoder.embed does), max_length 256
  int8       bucketed + dynamic int8 quantisation of the Linear layers
  int8+trunc128  int8 with posts truncated at 128 tokens (most posts are far shorter)
  int8+dedup int8 with the exact-duplicate cache a spam flood hits (30 % repeats)
Quality of int8 is reported as the cosine to fp32 embeddings on the same posts.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
import torch

from service.classifier.encoder import Encoder
from service.config import get_settings

SHORT = ["hello from Ohio 👋", "今天的晚饭真好吃", "my cat says hi", "加微信领取福利", "where to buy bubble tea?",
         "我們今天去台北", "so happy to be here, everyone is so kind!", "免费领取iPhone点击链接"]  # fmt: skip
LONG_EN = ("I moved here from another app last week and honestly I am still figuring out how everything "
           "works, the recommendations are very different and people are so friendly, ")  # fmt: skip
LONG_ZH = (
    "最近来了很多美国朋友，大家都在讨论怎么用这个应用，我也想分享一下我自己的经验和一些小技巧，"
)


def posts(kind: str, n: int, rng: random.Random) -> list[str]:
    def long(i: int) -> str:
        return (LONG_EN * 4 if rng.random() < 0.5 else LONG_ZH * 8) + str(i)

    if kind == "short":
        return [f"{rng.choice(SHORT)} {i}" for i in range(n)]
    if kind == "long":
        return [long(i) for i in range(n)]
    # a feed: mostly short posts, one in five long
    return [long(i) if rng.random() < 0.2 else f"{rng.choice(SHORT)} {i}" for i in range(n)]


def plain_forward(enc: Encoder, texts: list[str]) -> np.ndarray:
    with torch.inference_mode():
        batch = enc.tokenizer(["query: " + t for t in texts], padding=True, truncation=True,
                              max_length=512, return_tensors="pt")  # fmt: skip
        hidden = enc.model(
            **{k: batch[k] for k in ("input_ids", "attention_mask")}
        ).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1)
        return torch.nn.functional.normalize(pooled, dim=-1).numpy()


def rate(fn, texts: list[str], batch: int, min_s: float = 2.0, before_pass=None) -> float:
    fn(texts[:batch])  # warm
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < min_s:
        if before_pass:
            before_pass()
        for i in range(0, len(texts), batch):
            fn(texts[i : i + batch])
            done += len(texts[i : i + batch])
            if time.perf_counter() - started >= min_s:
                break
    return done / (time.perf_counter() - started)


def markdown(result: dict) -> str:
    cols = ["plain", "bucketed", "int8", "int8+trunc128", "int8+dedup"]
    lines = [
        f"Posts/s with torch threads = {result['threads']}; ratios against `plain` (fp32, padded "
        "batch) measured in the same run. int8 min cosine to fp32: "
        + ", ".join(f"{k} {v}" for k, v in _cosines(result).items()) + ".",
        "",
        "| posts | median tokens | batch | plain posts/s | " + " | ".join(f"{c} x" for c in cols[1:]) + " |",
        "| --- | --- | --- | --- | " + " | ".join("---" for _ in cols[1:]) + " |",
    ]
    for r in result["rows"]:
        ratios = " | ".join(f"{r[c] / r['plain']:.2f}" for c in cols[1:])
        lines.append(f"| {r['posts']} | {r['median_tokens']} | {r['batch']} | {r['plain']:.1f} | {ratios} |")
    return "\n".join(lines) + "\n"


def _cosines(result: dict) -> dict:
    return result.get("int8_cosine") or {r["posts"]: r["int8_min_cosine"] for r in result["rows"]}


def write_card(result: dict, card: Path) -> None:
    text = card.read_text("utf-8")
    start, end = "<!-- SPEED:START -->", "<!-- SPEED:END -->"
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    card.write_text(f"{head}{start}\n{markdown(result)}{end}{tail}", "utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", default="1,8,32,128")
    ap.add_argument("--min-seconds", type=float, default=2.0)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--card", type=Path, help="write the table into this model card (SPEED markers)")
    ap.add_argument("--from-json", type=Path, help="only render a previous run's JSON")
    args = ap.parse_args()
    if args.from_json:
        result = json.loads(args.from_json.read_text())
        print(markdown(result))
        if args.card:
            write_card(result, args.card)
        return
    torch.set_num_threads(args.threads)
    model_dir = get_settings().resolved_model_dir
    fp32 = Encoder(model_dir, max_length=256, threads=args.threads)
    int8 = Encoder(model_dir, max_length=256, threads=args.threads, quantize=True)
    int8_128 = Encoder(model_dir, max_length=128, threads=args.threads, quantize=True)
    rng = random.Random(3)
    results = []
    cosines = {}
    for kind in ("short", "long", "mixed"):
        texts = posts(kind, 256, rng)
        tokens = [len(x) for x in fp32.tokenizer(["query: " + t for t in texts])["input_ids"]]
        quality = float(np.min(np.sum(fp32.embed(texts[:64]) * int8.embed(texts[:64]), axis=1)))
        cosines[kind] = round(quality, 4)
        # a spam flood: 30 % of posts repeat an earlier one exactly
        dupes = [rng.choice(texts[: max(i, 1)]) if rng.random() < 0.3 else t for i, t in enumerate(texts)]
        for b in (int(x) for x in args.batches.split(",")):
            row = {"posts": kind, "median_tokens": int(np.median(tokens)), "batch": b}
            row["plain"] = rate(lambda t: plain_forward(fp32, t), texts, b, args.min_seconds)
            row["bucketed"] = rate(fp32.embed, texts, b, args.min_seconds)
            row["int8"] = rate(int8.embed, texts, b, args.min_seconds)
            row["int8+trunc128"] = rate(int8_128.embed, texts, b, args.min_seconds)
            row["int8+dedup"] = rate(lambda t: int8.embed(t, use_cache=True), dupes, b,
                                     args.min_seconds, before_pass=int8.clear_cache)  # fmt: skip
            row["int8_min_cosine"] = round(quality, 4)
            results.append(row)
            print(f"{kind:5s} b={b:<4d} plain {row['plain']:7.1f}/s  bucketed x{row['bucketed'] / row['plain']:.2f}  "
                  f"int8 x{row['int8'] / row['plain']:.2f}  +trunc128 x{row['int8+trunc128'] / row['plain']:.2f}  "
                  f"+dedup x{row['int8+dedup'] / row['plain']:.2f}  "
                  f"(int8 cos >= {quality:.4f})", flush=True)  # fmt: skip
    result = {"threads": args.threads, "rows": results, "int8_cosine": cosines}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    if args.card:
        write_card(result, args.card)


if __name__ == "__main__":
    main()
