"""`floodgate model finetune`: the encoder's top layers fine-tuned for moderation, on a CPU.

The frozen e5 embedding is dominated by topic: it puts "immigrants built this city" next to
"immigrants are vermin". Fine-tuning the encoder itself fixes much of that (models/README.md
compares both on the same evaluation). The whole encoder is out of reach without a GPU; its
top `layers` transformer layers are not:

1. every training text runs once through the frozen lower layers in bfloat16; their
   outputs are kept in memory, so an epoch runs only the top layers forward and backward;
2. the top layers train together with a throw-away head of the served shape, with the
   served recipe's masked, class-weighted BCE (`train.py`), in bf16 autocast, seeds fixed,
   batches of similar length in random order, one-cycle learning rate;
3. the top layers' weights are written (bf16) to `models/encoder/top.safetensors` with a
   manifest. `Encoder(..., tuned_dir=...)` lays them over the converted base model; the
   encoder's version then names both (`<base>ft<tuned hash>`).

`floodgate model train` then fits the served heads, calibrated, on the tuned encoder's
embeddings, exactly as on the base encoder. Only the train split is used here.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from service.classifier.datasets import Example
from service.classifier.train import TrainSettings, _head, targets
from service.config import REPO_ROOT

TUNED_DIR = REPO_ROOT / "models" / "encoder"
WEIGHTS = "top.safetensors"
MANIFEST = "tuned.json"


@dataclass(frozen=True)
class FinetuneSettings:
    layers: int = 4
    epochs: int = 2
    learning_rate: float = 3e-5  # the encoder layers; the head uses TrainSettings' rate
    batch_size: int = 32
    weight_decay: float = 0.01
    warmup: float = 0.1
    seed: int = 13


def tuned_version(directory: Path) -> str | None:
    """The tuned layers' short hash, or None when there are none."""
    manifest = Path(directory) / MANIFEST
    if not manifest.exists():
        return None
    return json.loads(manifest.read_text("utf-8"))["version"]


def load_tuned(model, directory: Path) -> dict:
    """Lay the tuned top layers over `model` (in place); returns the manifest."""
    from safetensors.torch import load_file

    manifest = json.loads((Path(directory) / MANIFEST).read_text("utf-8"))
    weights = load_file(str(Path(directory) / WEIGHTS))
    own = model.state_dict()
    unknown = [k for k in weights if k not in own]
    if unknown:
        raise ValueError(f"{directory}: tuned weights do not fit this encoder ({unknown[:3]})")
    dtype = next(model.parameters()).dtype
    model.load_state_dict({k: v.to(dtype) for k, v in weights.items()}, strict=False)
    return manifest


def lower_states(enc, texts: list[str], cut: int, sub_batch: int = 64, log=print) -> list:
    """Output of the first `cut` layers for every text ("query: " prefix, unpadded, bf16)."""
    import torch

    model, layers = enc.model, enc.model.encoder.layer
    out: list = [None] * len(texts)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    model.encoder.layer = layers[:cut]
    try:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            for start in range(0, len(texts), sub_batch):
                idx = order[start : start + sub_batch]
                t = enc.tokenizer(["query: " + texts[i] for i in idx], padding=True,
                                  truncation=True, max_length=enc.max_length, return_tensors="pt")  # fmt: skip
                hidden = model(
                    input_ids=t["input_ids"], attention_mask=t["attention_mask"]
                ).last_hidden_state
                for row, i in enumerate(idx):
                    n = int(t["attention_mask"][row].sum())
                    out[i] = hidden[row, :n].to(torch.bfloat16).clone()
                if start % (sub_batch * 50) == 0:
                    log(f"  lower layers: {start}/{len(texts)}")
    finally:
        model.encoder.layer = layers
    return out


def run_top(model, top, states: list):
    """Top layers + mean pooling + L2 norm on a batch of unpadded lower-layer outputs."""
    import torch
    from transformers.masking_utils import create_bidirectional_mask

    n = max(s.shape[0] for s in states)
    hidden = torch.zeros(len(states), n, states[0].shape[1], dtype=torch.float32)
    mask = torch.zeros(len(states), n, dtype=torch.long)
    for i, s in enumerate(states):
        hidden[i, : s.shape[0]] = s.float()
        mask[i, : s.shape[0]] = 1
    # the public mask builder the model itself uses, for whatever attention implementation
    # the config names (sdpa, eager); None when nothing is padded
    ext = create_bidirectional_mask(config=model.config, inputs_embeds=hidden, attention_mask=mask)
    for layer in top:
        hidden = layer(hidden, attention_mask=ext)
        hidden = hidden[0] if isinstance(hidden, tuple) else hidden
    m = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
    return torch.nn.functional.normalize(pooled.float(), dim=-1)


def finetune(enc, examples: list[Example], out_dir: Path = TUNED_DIR,
             settings: FinetuneSettings | None = None, log=print) -> dict:  # fmt: skip
    """Fine-tune `enc`'s top layers on the train split of `examples`; write them to
    `out_dir`; returns the manifest. `enc` must be the base encoder (fp32 weights)."""
    import torch
    from safetensors.torch import save_file

    s, hs = settings or FinetuneSettings(), TrainSettings()
    torch.manual_seed(s.seed)
    rng = np.random.default_rng(s.seed)
    train = [e for e in examples if e.split == "train"]
    y, m = targets(train)
    w = np.array([hs.seed_weight if e.source.startswith("seeds/") else 1.0 for e in train])
    model = enc.model
    cut = model.config.num_hidden_layers - s.layers
    started = time.perf_counter()
    states = lower_states(enc, [e.text for e in train], cut, log=log)
    log(f"lower {cut} layers for {len(train)} texts: {time.perf_counter() - started:.0f} s")

    top = model.encoder.layer[cut:]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in top.parameters():
        p.requires_grad_(True)
    head = _head(enc.dim, hs)
    opt = torch.optim.AdamW([{"params": top.parameters(), "lr": s.learning_rate},
                             {"params": head.parameters(), "lr": hs.learning_rate}],
                            weight_decay=s.weight_decay)  # fmt: skip
    by_len = np.argsort([len(st) for st in states], kind="stable")
    chunks = [by_len[i : i + s.batch_size] for i in range(0, len(by_len), s.batch_size)]
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=[s.learning_rate, hs.learning_rate], total_steps=s.epochs * len(chunks),
        pct_start=s.warmup,
    )  # fmt: skip
    pos, neg = (y * m).sum(0), ((1 - y) * m).sum(0)
    loss_fn = torch.nn.BCEWithLogitsLoss(
        pos_weight=torch.tensor(np.clip(neg / np.maximum(pos, 1), 1.0, hs.max_pos_weight)),
        reduction="none",
    )
    Y, M, W = torch.from_numpy(y), torch.from_numpy(m), torch.from_numpy(w.astype(np.float32))
    model.train()
    losses = []
    for epoch in range(s.epochs):
        t0, total = time.perf_counter(), 0.0
        for k, c in enumerate(rng.permutation(len(chunks))):
            idx = torch.from_numpy(chunks[c])
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = head(run_top(model, top, [states[i] for i in idx]))
            loss = (loss_fn(logits.float(), Y[idx]) * M[idx] * W[idx, None]).sum() / M[
                idx
            ].sum().clamp(min=1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
            if k % 200 == 0:
                log(f"  epoch {epoch + 1} step {k}/{len(chunks)}: loss {float(loss.detach()):.4f}")
        losses.append(round(total / len(train), 4))
        log(f"epoch {epoch + 1}/{s.epochs}: loss {losses[-1]} ({time.perf_counter() - t0:.0f} s)")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)

    weights = {f"encoder.layer.{cut + i}.{k}": v.detach().to(torch.bfloat16).contiguous()
               for i, layer in enumerate(top) for k, v in layer.state_dict().items()}  # fmt: skip
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(out_dir / WEIGHTS))
    digest = hashlib.sha256((out_dir / WEIGHTS).read_bytes()).hexdigest()
    manifest = {
        "version": digest[:8],
        "weights_sha256": digest,
        "base_encoder": enc.version,
        "layers": list(range(cut, model.config.num_hidden_layers)),
        "settings": asdict(s),
        "train_examples": len(train),
        "epoch_losses": losses,
        "seconds": round(time.perf_counter() - started),
        "torch": torch.__version__,
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", "utf-8")
    log(f"wrote {out_dir} (version {manifest['version']})")
    return manifest
