"""Posts/s of the model path at batch 1, 8, 32, 128 on short (<= 32 tokens), long
(>= 256 tokens) and mixed (80 % short, 20 % long) posts, with the thread count fixed, against
the plain fp32 forward pass measured in the same run (machines here are shared and noisy:
compare ratios, not runs).

    python bench/model_speed.py --threads 2 --json var/bench/model_speed.json --card models/README.md

Variants (each adds one thing to the one before, except int8):
  plain          fp32, the whole batch padded to its longest post, max_length 512
  bucketed       fp32, sorted by length into sub-batches (what Encoder.embed does), 512
  bf16           bucketed, bfloat16 weights and activations (AMX / AVX512-BF16), 512
  bf16+trunc256  bf16, posts truncated at 256 tokens: what the worker serves
  served+dedup   the served path on a spam-flood feed (30 % exact repeats), duplicate cache on
  int8+trunc256  dynamic int8 instead of bf16 (not served: the heads lose up to 10 AUPRC
                 points on int8 embeddings, see models/README.md)
Quality of bf16 and int8 is reported as the minimum cosine to fp32 embeddings of the same
posts at the same max_length; what truncation and bf16 do to the heads' AUPRC is measured by
`floodgate model eval` (the card's "Serving variants" table).
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
    def long(i: int) -> str:  # 280-400 tokens
        return (LONG_EN * 8 if rng.random() < 0.5 else LONG_ZH * 16) + str(i)

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


VARIANTS = ("plain", "bucketed", "bf16", "bf16+trunc256", "served+dedup", "int8+trunc256")


def markdown(result: dict) -> str:
    cos = result["min_cosine"]
    lines = [
        f"Posts/s with torch threads = {result['threads']}; ratios against `plain` (fp32, the "
        "batch padded to its longest post, 512 tokens) measured in the same run. Min cosine to "
        "fp32 at the same length: bf16 "
        + ", ".join(f"{k} {v['bf16']:.4f}" for k, v in cos.items())
        + "; int8 " + ", ".join(f"{k} {v['int8']:.4f}" for k, v in cos.items()) + ".",
        "",
        "| posts | tokens (min-median) | batch | plain posts/s | "
        + " | ".join(f"{c} x" for c in VARIANTS[1:]) + " |",
        "| --- | --- | --- | --- | " + " | ".join("---" for _ in VARIANTS[1:]) + " |",
    ]  # fmt: skip
    for r in result["rows"]:
        ratios = " | ".join(f"{r[c] / r['plain']:.2f}" for c in VARIANTS[1:])
        lines.append(f"| {r['posts']} | {r['min_tokens']}-{r['median_tokens']} | {r['batch']} | "
                     f"{r['plain']:.1f} | {ratios} |")  # fmt: skip
    return "\n".join(lines) + "\n"


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

    def encoder(precision: str, max_length: int) -> Encoder:
        return Encoder(model_dir, max_length=max_length, threads=args.threads, precision=precision)

    fp32, bf16, served = encoder("fp32", 512), encoder("bf16", 512), encoder("bf16", 256)
    int8, int8_512 = encoder("int8", 256), encoder("int8", 512)
    rng = random.Random(3)
    results, cosines = [], {}
    for kind in ("short", "long", "mixed"):
        texts = posts(kind, 256, rng)
        tokens = fp32.token_lengths(texts, prefix="query: ")
        if kind == "long":
            assert min(tokens) >= 256, f"long posts must be >= 256 tokens, shortest {min(tokens)}"
        reference = fp32.embed(texts[:64])
        cosines[kind] = {
            name: round(float(np.min(np.sum(reference * enc.embed(texts[:64]), axis=1))), 4)
            for name, enc in (("bf16", bf16), ("int8", int8_512))
        }
        # a spam flood: 30 % of posts repeat an earlier one exactly
        dupes = [rng.choice(texts[: max(i, 1)]) if rng.random() < 0.3 else t for i, t in enumerate(texts)]
        runs = {
            "plain": (lambda t: plain_forward(fp32, t), texts, None),
            "bucketed": (fp32.embed, texts, None),
            "bf16": (bf16.embed, texts, None),
            "bf16+trunc256": (served.embed, texts, None),
            "served+dedup": (lambda t: served.embed(t, use_cache=True), dupes, served.clear_cache),
            "int8+trunc256": (int8.embed, texts, None),
        }
        for b in (int(x) for x in args.batches.split(",")):
            row = {"posts": kind, "min_tokens": min(tokens), "median_tokens": int(np.median(tokens)),
                   "batch": b}  # fmt: skip
            for name, (fn, feed, reset) in runs.items():
                row[name] = rate(fn, feed, b, args.min_seconds, before_pass=reset)
            results.append(row)
            print(f"{kind:5s} b={b:<4d} plain {row['plain']:7.1f}/s  "
                  + "  ".join(f"{v} x{row[v] / row['plain']:.2f}" for v in VARIANTS[1:]),
                  flush=True)  # fmt: skip
    result = {"threads": args.threads, "rows": results, "min_cosine": cosines}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    if args.card:
        write_card(result, args.card)


if __name__ == "__main__":
    main()
