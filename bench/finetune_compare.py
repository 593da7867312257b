"""Fine-tuned encoder vs frozen encoder, on the same evaluation (models/README.md).

Both arms go through the served code: `train()` fits, calibrates and thresholds heads on
the encoder's embeddings, `evaluate()` runs the held-out split, HateCheck, MHC and XSTest.
The frozen arm uses the converted base encoder; the tuned arm first fine-tunes its top
`--layers` layers with `service.classifier.finetune` (skipped when --out already holds
them). Everything is written under --out (var/ is not committed); the table is printed and
saved as compare-top<layers>.md.

    python bench/finetune_compare.py --layers 4 --epochs 2 --out var/finetune
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from service.classifier.cache import EmbeddingCache
from service.classifier.datasets import load_examples
from service.classifier.encoder import Encoder
from service.classifier.evaluate import evaluate
from service.classifier.finetune import FinetuneSettings, finetune
from service.classifier.train import TrainSettings, train
from service.classifier.tuned import tuned_version
from service.config import get_settings


def row(name: str, r: dict) -> str:
    auprc = {c: v["all"]["auprc"] for c, v in r["held_out"].items()}
    return (f"| {name} | {r['hatecheck']['floodgate']['accuracy']:.3f} | "
            f"{r['mhc_mandarin']['accuracy']:.3f} | {r['xstest']['false_flag_rate']:.1%} | "
            + " | ".join(f"{auprc[c]:.3f}" for c in auprc) + " |")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=4, help="top layers to fine-tune")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("var/finetune"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    settings = get_settings()
    model_dir = settings.resolved_model_dir
    examples = load_examples(cap_per_label=TrainSettings().cap_per_label)
    tuned_dir = args.out / f"encoder-top{args.layers}"
    if tuned_version(tuned_dir) is None:
        base = Encoder(model_dir, max_length=settings.max_length_tokens, threads=args.threads)
        finetune(base, examples, tuned_dir, FinetuneSettings(layers=args.layers, epochs=args.epochs))
    results = {}
    for name, tuned in (("frozen", None), (f"top {args.layers} layers fine-tuned", tuned_dir)):
        cache = EmbeddingCache(settings.data_dir / "cache" / "embeddings", model_dir,
                               max_length=settings.max_length_tokens, threads=args.threads,
                               precision=settings.precision, tuned_dir=tuned)  # fmt: skip
        heads_dir = args.out / f"heads-{'frozen' if tuned is None else f'top{args.layers}'}"
        train(cache, heads_dir, TrainSettings(), examples)
        results[name] = evaluate(cache, heads_dir, write_card=False, variants=False)
    cats = list(next(iter(results.values()))["held_out"])
    table = "\n".join([
        "| encoder | HateCheck | MHC | XSTest false flags | " + " | ".join(f"{c} AUPRC" for c in cats) + " |",
        "| --- | --- | --- | --- | " + " | ".join("---" for _ in cats) + " |",
        *(row(name, r) for name, r in results.items()),
    ])  # fmt: skip
    print(table)
    (args.out / f"compare-top{args.layers}.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
