"""Long posts: does scoring them in windows beat reading their first 256 tokens?

The served path reads a post's first 256 tokens (after e5's prefix). This measures the
alternative on the heads' test split: a post longer than that is cut into windows of
``--window`` tokens every ``--stride`` tokens (character spans from the tokenizer's offsets),
each window is embedded and scored, and the post takes, per category, the highest window
score ("max") or the score of the windows' mean embedding ("mean"). Printed: how many test
rows are long and from which sources, AUPRC on the long rows alone, and AUPRC per category x
language (>= 20 positives) with the long rows scored each way.

    python bench/long_posts.py [--window 240 --stride 180] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np

from service.classifier.embedder import QUERY, read
from service.classifier.evaluate import _test_split
from service.classifier.heads import HEADS_DIR, TrainedHeads
from service.classifier.loader import open_embedding_cache
from service.classifier.train import OUTPUTS, average_precision, targets
from service.config import get_settings


def windows(tokenizer, text: str, window: int, stride: int) -> list[str]:
    """``text`` itself when it fits in ``window`` tokens, else overlapping spans of it."""
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    if len(offsets) <= window:
        return [text]
    out, start = [], 0
    while True:
        end = min(start + window, len(offsets))
        out.append(text[offsets[start][0] : offsets[end - 1][1]])
        if end == len(offsets):
            return out
        start += stride


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--heads", type=Path, default=HEADS_DIR)
    ap.add_argument("--window", type=int, default=240, help="tokens per window")
    ap.add_argument("--stride", type=int, default=180, help="tokens between window starts")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    from transformers import AutoTokenizer

    cache = open_embedding_cache(get_settings())
    heads = TrainedHeads(args.heads, encoder_version=cache.version)
    tokenizer = AutoTokenizer.from_pretrained(cache.model_dir, local_files_only=True)
    rows = _test_split(heads)
    viewed = [QUERY + read(cache.view, e.text) for e in rows]
    lengths = [len(ids) for ids in tokenizer(viewed, add_special_tokens=True)["input_ids"]]
    long_rows = [i for i, n in enumerate(lengths) if n > cache.max_length]
    languages = [e.language for e in rows]
    served = heads.probabilities(cache.embed([e.text for e in rows], prefix=QUERY), languages)

    spans = [windows(tokenizer, rows[i].text, args.window, args.stride) for i in long_rows]
    variants = {"first 256 tokens (served)": served[long_rows]}
    maxed, meaned = [], []
    for i, parts in zip(long_rows, spans, strict=True):
        emb = cache.embed(parts, prefix=QUERY)
        maxed.append(heads.probabilities(emb, [languages[i]] * len(parts)).max(0))
        mean = emb.mean(0, keepdims=True)
        meaned.append(heads.probabilities(mean / np.linalg.norm(mean), [languages[i]])[0])
    variants["max over windows"] = np.stack(maxed) if maxed else np.zeros((0, len(OUTPUTS)))
    variants["mean of windows"] = np.stack(meaned) if meaned else np.zeros((0, len(OUTPUTS)))

    y_all, mask = targets(rows)  # the rows each cell counts, as in `floodgate model eval`
    result: dict = {"rows": len(rows), "long_rows": len(long_rows),
                    "windows": sum(map(len, spans)),
                    "sources": dict(Counter(rows[i].source for i in long_rows).most_common()),
                    "long_only": {}, "cells": {}}  # fmt: skip
    for name, probs in variants.items():
        for c in ("hate", "harassment", "violence", "self_harm", "scam_spam"):
            j = OUTPUTS.index(c)
            covered = [k for k, i in enumerate(long_rows) if mask[i, j]]
            y = y_all[[long_rows[k] for k in covered], j].astype(bool)
            if y.sum() >= 5:
                result["long_only"].setdefault(c, {})[name] = round(
                    float(average_precision(probs[covered, j], y)), 3)  # fmt: skip
        full = served.copy()
        full[long_rows] = probs
        for c in OUTPUTS:
            if c == "benign":
                continue
            j = OUTPUTS.index(c)
            for lang in ("en", "zh"):
                idx = [k for k, e in enumerate(rows) if e.language == lang and mask[k, j]]
                y = y_all[idx, j].astype(bool)
                if y.sum() >= 20:
                    result["cells"].setdefault(f"{c} {lang}", {})[name] = round(
                        float(average_precision(full[idx, j], y)), 3)  # fmt: skip

    print(f"{len(long_rows)} of {len(rows)} test rows are over {cache.max_length} tokens "
          f"({result['windows']} windows): {result['sources']}")  # fmt: skip
    names = list(variants)
    print("\nAUPRC on the long rows alone (categories with >= 5 long positives)")
    print("| category | " + " | ".join(names) + " |\n| --- |" + " --- |" * len(names))
    for c, r in result["long_only"].items():
        print(f"| {c} | " + " | ".join(f"{r[n]:.3f}" for n in names) + " |")
    print("\nAUPRC per category x language, the long rows scored each way")
    print("| cell | " + " | ".join(names) + " |\n| --- |" + " --- |" * len(names))
    for cell, r in result["cells"].items():
        print(f"| {cell} | " + " | ".join(f"{r[n]:.3f}" for n in names) + " |")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
