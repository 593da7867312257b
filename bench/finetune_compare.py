"""Fine-tuned encoder vs frozen encoder, on the same evaluation (issue: model, optional part).

No GPU here, so the whole 12-layer encoder is out of reach; this fine-tunes its top
`--layers` transformer layers together with a head, on the CPU in bfloat16 autocast:

1. every training text runs once through the frozen lower layers; their output is kept
   in memory (bf16), so an epoch only runs the top layers forward and backward;
2. top layers + a head (the served head's shape) train with the served recipe's masked,
   class-weighted BCE, seeds fixed;
3. the fine-tuned encoder (lower layers untouched, top layers replaced) then goes through
   the *served* pipeline unchanged: `train()` fits, calibrates and thresholds fresh heads
   on its embeddings, and `evaluate()` runs the held-out split, HateCheck, MHC and XSTest;
4. both results are printed side by side with the frozen heads' eval.json.

    python bench/finetune_compare.py --layers 4 --epochs 2 --out var/finetune

Nothing here is served: the comparison is what the model card reports. The top layers and
the heads are written under --out (var/ is not committed).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from service.classifier.cache import EmbeddingCache
from service.classifier.datasets import load_examples
from service.classifier.encoder import Encoder
from service.classifier.evaluate import evaluate
from service.classifier.heads import HEADS_DIR
from service.classifier.train import TrainSettings, _head, targets, train
from service.config import get_settings


def lower_states(enc: Encoder, texts: list[str], cut: int, batch: int = 64) -> list[torch.Tensor]:
    """Output of the first `cut` layers for every text (bf16, unpadded)."""
    model, layers = enc.model, enc.model.encoder.layer
    model.encoder.layer = layers[:cut]
    out: list[torch.Tensor] = [None] * len(texts)  # type: ignore[list-item]
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    try:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            for start in range(0, len(texts), batch):
                idx = order[start : start + batch]
                t = enc.tokenizer(["query: " + texts[i] for i in idx], padding=True,
                                  truncation=True, max_length=enc.max_length, return_tensors="pt")  # fmt: skip
                hidden = model(input_ids=t["input_ids"], attention_mask=t["attention_mask"]).last_hidden_state
                for row, i in enumerate(idx):
                    n = int(t["attention_mask"][row].sum())
                    out[i] = hidden[row, :n].to(torch.bfloat16).clone()
                if start % (batch * 40) == 0:
                    print(f"  lower layers: {start}/{len(texts)}", flush=True)
    finally:
        model.encoder.layer = layers
    return out


def run_top(model, top, states: list[torch.Tensor]) -> torch.Tensor:
    """Top layers + mean pooling + L2 norm on a batch of unpadded lower-layer states."""
    n = max(s.shape[0] for s in states)
    hidden = torch.zeros(len(states), n, states[0].shape[1], dtype=torch.float32)
    mask = torch.zeros(len(states), n, dtype=torch.long)
    for i, s in enumerate(states):
        hidden[i, : s.shape[0]] = s.float()
        mask[i, : s.shape[0]] = 1
    ext, _ = model._create_attention_masks(attention_mask=mask, encoder_attention_mask=None,
                                           embedding_output=hidden, encoder_hidden_states=None,
                                           past_key_values=None)  # fmt: skip
    for layer in top:
        hidden = layer(hidden, attention_mask=ext)
        hidden = hidden[0] if isinstance(hidden, tuple) else hidden
    m = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
    return torch.nn.functional.normalize(pooled.float(), dim=-1)


def finetune(enc: Encoder, examples, cut: int, epochs: int, lr: float, batch: int, seed: int):
    s = TrainSettings()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    tr = [i for i, e in enumerate(examples) if e.split == "train"]
    texts = [examples[i].text for i in tr]
    y, m = targets([examples[i] for i in tr])
    w = np.array([s.seed_weight if examples[i].source.startswith("seeds/") else 1.0 for i in tr])
    t0 = time.perf_counter()
    states = lower_states(enc, texts, cut)
    print(f"lower layers for {len(texts)} texts: {time.perf_counter() - t0:.0f} s", flush=True)

    model = enc.model
    top = model.encoder.layer[cut:]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in top.parameters():
        p.requires_grad_(True)
    head = _head(enc.dim, s)
    opt = torch.optim.AdamW([{"params": top.parameters(), "lr": lr},
                             {"params": head.parameters(), "lr": s.learning_rate}],
                            weight_decay=0.01)  # fmt: skip
    steps = epochs * ((len(texts) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[lr, s.learning_rate], total_steps=steps,
                                                pct_start=0.1)  # fmt: skip
    pos, neg = (y * m).sum(0), ((1 - y) * m).sum(0)
    loss_fn = torch.nn.BCEWithLogitsLoss(
        pos_weight=torch.tensor(np.clip(neg / np.maximum(pos, 1), 1.0, s.max_pos_weight)),
        reduction="none",
    )
    Y, M, W = torch.from_numpy(y), torch.from_numpy(m), torch.from_numpy(w.astype(np.float32))
    # batches of similar length (little padding), in random order
    by_len = np.argsort([len(st) for st in states], kind="stable")
    chunks = [by_len[i : i + batch] for i in range(0, len(by_len), batch)]
    model.train()
    for epoch in range(epochs):
        t0, total = time.perf_counter(), 0.0
        for k, c in enumerate(rng.permutation(len(chunks))):
            idx = torch.from_numpy(chunks[c])
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = head(run_top(model, top, [states[i] for i in idx]))
            loss = (loss_fn(logits.float(), Y[idx]) * M[idx] * W[idx, None]).sum() / M[idx].sum().clamp(min=1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss) * len(idx)
            if k % 100 == 0:
                print(f"  epoch {epoch + 1} step {k}/{len(chunks)} loss {float(loss):.4f} "
                      f"({time.perf_counter() - t0:.0f} s)", flush=True)  # fmt: skip
        print(f"epoch {epoch + 1}: loss {total / len(texts):.4f}, {time.perf_counter() - t0:.0f} s",
              flush=True)  # fmt: skip
    model.eval()
    return {f"encoder.layer.{cut + i}.{k}": v.detach().contiguous()
            for i, layer in enumerate(top) for k, v in layer.state_dict().items()}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=4, help="top layers to fine-tune")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--out", type=Path, default=Path("var/finetune"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    settings = get_settings()
    model_dir = settings.resolved_model_dir
    examples = load_examples(cap_per_label=TrainSettings().cap_per_label)
    enc = Encoder(model_dir, max_length=settings.max_length_tokens, threads=args.threads)
    cut = enc.model.config.num_hidden_layers - args.layers
    top_file = args.out / f"top{args.layers}.safetensors"
    if top_file.exists():
        weights = load_file(str(top_file))
    else:
        weights = finetune(enc, examples, cut, args.epochs, args.lr, args.batch, args.seed)
        args.out.mkdir(parents=True, exist_ok=True)
        save_file(weights, str(top_file))
    enc.model.load_state_dict(weights, strict=False)
    enc.model.eval()
    # the fine-tuned encoder in bf16, through the served training and evaluation code
    tuned = Encoder(model_dir, max_length=settings.max_length_tokens, threads=args.threads)
    tuned.model.load_state_dict(weights, strict=False)
    tuned.model = tuned.model.to(torch.bfloat16)
    tuned.version = f"{enc.version}ft{args.layers}-bf16"
    cache = EmbeddingCache(args.out / "cache", tuned)
    heads_dir = args.out / f"heads-top{args.layers}"
    train(cache, heads_dir, TrainSettings(), examples)
    tuned_eval = evaluate(cache, heads_dir, write_card=False, variants=False)
    frozen = json.loads((HEADS_DIR / "eval.json").read_text())

    def row(name: str, r: dict) -> str:
        auprc = {c: v["all"]["auprc"] for c, v in r["held_out"].items()}
        return (f"| {name} | {r['hatecheck']['floodgate']['accuracy']:.3f} | "
                f"{r['mhc_mandarin']['accuracy']:.3f} | {r['xstest']['false_flag_rate']:.1%} | "
                + " | ".join(f"{auprc[c]:.3f}" for c in auprc) + " |")  # fmt: skip

    cats = list(frozen["held_out"])
    table = "\n".join([
        "| encoder | HateCheck | MHC | XSTest false flags | " + " | ".join(f"{c} AUPRC" for c in cats) + " |",
        "| --- | --- | --- | --- | " + " | ".join("---" for _ in cats) + " |",
        row("frozen (served)", frozen), row(f"top {args.layers} layers fine-tuned", tuned_eval),
    ])  # fmt: skip
    print(table)
    (args.out / f"compare-top{args.layers}.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
