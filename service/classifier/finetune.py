"""`floodgate model finetune`: the encoder fine-tuned for moderation, on a CPU; resumable.

The frozen e5 embedding is dominated by topic: it puts "immigrants built this city" next to
"immigrants are vermin". Fine-tuning the encoder itself fixes much of that (models/README.md
compares both on the same evaluation). Two modes, one recipe:

* top layers (`layers` < 12): every training text runs once through the frozen lower layers
  in bfloat16; their outputs are kept in memory, so a step runs only the top layers;
* the whole encoder (`layers` = 12): all 12 transformer layers train; the token embeddings
  (250k x 384, most of the model's weights) stay frozen, so a step looks them up and runs
  every layer forward and backward. Gradient checkpointing (`checkpointing`) recomputes each
  layer's activations in the backward pass instead of keeping them, when memory is short.

Both: the trained layers learn together with a throw-away head of the served shape, with
the served recipe's masked, class-weighted BCE and sample weights (`train.py`), in bf16
autocast where the CPU runs it fast (bf16 units, or AVX-512, on which oneDNN emulates bf16
faster than it runs fp32) and in fp32 elsewhere (`precision`: an AVX2-only CPU emulates bf16
about 20x slower than it runs fp32), seeds fixed, batches of similar length (length buckets)
in random order, one-cycle learning rate. With `samples_per_epoch` an epoch draws that many examples with
probability proportional to their sample weight (category x language balance) instead of
weighting the loss; that also bounds an epoch's time whatever the data size.

Resumable: every `checkpoint_every_s` seconds, at the end of every epoch, and when asked to
stop (SIGINT / SIGTERM, or the `stop` callback), the trained weights, the optimizer, the
schedule, torch's RNG state and the position (epoch, step) are written atomically to
`checkpoint_dir` (under var/). `resume=True` continues from there and ends with the same
weights, bit for bit, as a run that was never interrupted (a fingerprint of the data and
settings guards against resuming a different run). Epoch plans come from a generator seeded
by (seed, epoch), so they need no saved state.

The trained layers' weights are written (bf16) to `models/encoder/top.safetensors` with a
manifest; `Encoder(..., tuned_dir=...)` lays them over the converted base model (tuned.py,
the serving side), and the encoder's version then names both (`<base>ft<tuned hash>`).
`floodgate model train` then fits the served heads on the tuned encoder's embeddings. Only
the train split is used here.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from service.classifier.datasets import Example, check_trainable
from service.classifier.embedder import read
from service.classifier.encoder import cpu_flags, cpu_has_bf16
from service.classifier.train import TrainSettings, _head, sample_weights, targets
from service.classifier.tuned import MANIFEST, TUNED_DIR, WEIGHTS
from service.config import REPO_ROOT
from service.progress import on_terminal, progress_bar

CHECKPOINT_DIR = REPO_ROOT / "var" / "finetune"
CHECKPOINT = "checkpoint.pt"


@dataclass(frozen=True)
class FinetuneSettings:
    layers: int = 4  # top transformer layers trained; 12 = the whole encoder
    epochs: int = 2
    learning_rate: float = 3e-5  # the encoder layers; the head uses TrainSettings' rate
    batch_size: int = 32
    weight_decay: float = 0.01
    warmup: float = 0.1
    seed: int = 13
    # 0: every train example once per epoch, the loss weighted by its sample weight; N > 0:
    # N draws per epoch, with probability proportional to the sample weight
    samples_per_epoch: int = 0
    checkpointing: bool = False  # gradient checkpointing: recompute activations in backward
    # "auto": bf16 autocast where it is fast (`training_precision`), else fp32; resolved
    # before the run, so the fingerprint and the manifest name what was used
    precision: str = "auto"


def training_precision(precision: str = "auto") -> str:
    """"auto" -> bf16 where the CPU trains faster in bf16 autocast than in fp32: it has bf16
    units, or AVX-512 (oneDNN emulates bf16 there; measured ~2x faster than fp32 on such a
    VM); else fp32 (on an AVX2-only EPYC, emulated bf16 steps took ~20 s against ~1.1 s)."""
    if precision == "auto":
        return "bf16" if cpu_has_bf16() or "avx512bw" in cpu_flags() else "fp32"
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be auto, fp32 or bf16, not {precision!r}")
    return precision


def _autocast(torch, precision: str):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")


class FinetuneInterrupted(Exception):
    """The run stopped at a step boundary and saved a checkpoint; `resume=True` continues."""

    def __init__(self, checkpoint: Path, step: int, total: int) -> None:
        super().__init__(f"stopped after step {step}/{total}; checkpoint {checkpoint}")
        self.checkpoint, self.step, self.total = checkpoint, step, total


def read_texts(enc, texts: list[str]) -> list[str]:
    """What the served encoder reads of each text: its view (`Encoder(view=...)`), if any."""
    return [read(enc.view, t) for t in texts]


def lower_states(enc, texts: list[str], cut: int, sub_batch: int = 64, log=print,
                 precision: str = "bf16") -> list:  # fmt: skip
    """Output of the first `cut` layers for every text ("query: " prefix, unpadded, stored in
    bf16 whatever `precision` computed them)."""
    import torch

    texts = read_texts(enc, texts)

    model, layers = enc.model, enc.model.encoder.layer
    out: list = [None] * len(texts)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    model.encoder.layer = layers[:cut]
    try:
        with torch.inference_mode(), _autocast(torch, precision):
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


def token_ids(enc, texts: list[str]) -> list:
    """Token ids per text ("query: " prefix, viewed and truncated as served), unpadded int64
    tensors."""
    import torch

    texts = read_texts(enc, texts)
    out = []
    for start in range(0, len(texts), 1024):
        t = enc.tokenizer(["query: " + x for x in texts[start : start + 1024]], truncation=True,
                          max_length=enc.max_length)  # fmt: skip
        out += [torch.tensor(ids, dtype=torch.long) for ids in t["input_ids"]]
    return out


def run_layers(model, layers, hidden, mask, checkpointing: bool = False):
    """`layers` + mean pooling + L2 norm on a padded batch (hidden: n x len x dim)."""
    import torch
    from transformers.masking_utils import create_bidirectional_mask

    # the public mask builder the model itself uses, for whatever attention implementation
    # the config names (sdpa, eager); None when nothing is padded
    ext = create_bidirectional_mask(config=model.config, inputs_embeds=hidden, attention_mask=mask)
    for layer in layers:
        if checkpointing and torch.is_grad_enabled():
            # keeps only the layer's input; the RNG state is stashed, so dropout recomputes
            # the same mask and the result equals the plain pass
            hidden = torch.utils.checkpoint.checkpoint(
                layer, hidden, attention_mask=ext, use_reentrant=False
            )
        else:
            hidden = layer(hidden, attention_mask=ext)
        hidden = hidden[0] if isinstance(hidden, tuple) else hidden
    m = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
    return torch.nn.functional.normalize(pooled.float(), dim=-1)


def _pad(seqs: list, fill=0):
    import torch

    n = max(s.shape[0] for s in seqs)
    out = torch.full((len(seqs), n, *seqs[0].shape[1:]), fill, dtype=seqs[0].dtype)
    mask = torch.zeros(len(seqs), n, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : s.shape[0]] = s
        mask[i, : s.shape[0]] = 1
    return out, mask


def run_top(model, top, states: list, checkpointing: bool = False):
    """Top layers + mean pooling + L2 norm on a batch of unpadded lower-layer outputs."""
    hidden, mask = _pad([s.float() for s in states])
    return run_layers(model, top, hidden, mask, checkpointing)


def run_whole(model, ids: list, checkpointing: bool = False):
    """The whole encoder on a batch of unpadded token ids: frozen embeddings (no dropout,
    no gradient), then every layer."""
    import torch

    input_ids, mask = _pad(ids, fill=model.config.pad_token_id or 0)
    with torch.no_grad():
        hidden = model.embeddings(input_ids=input_ids).float()
    return run_layers(model, model.encoder.layer, hidden, mask, checkpointing)


# --------------------------------------------------------------------------- the run


def _epoch_plan(epoch: int, lengths: np.ndarray, weights: np.ndarray, s: FinetuneSettings) -> list:
    """The batches of one epoch (arrays of example indices): similar lengths together, in a
    random order; drawn by sample weight when `samples_per_epoch` is set."""
    rng = np.random.default_rng([s.seed, epoch])
    if s.samples_per_epoch:
        pool = rng.choice(len(lengths), size=s.samples_per_epoch, p=weights / weights.sum())
    else:
        pool = np.arange(len(lengths))
    pool = pool[np.lexsort((rng.random(len(pool)), lengths[pool]))]  # by length, ties at random
    chunks = [pool[i : i + s.batch_size] for i in range(0, len(pool), s.batch_size)]
    return [chunks[c] for c in rng.permutation(len(chunks))]


def _steps_per_epoch(n: int, s: FinetuneSettings) -> int:
    return -(-(s.samples_per_epoch or n) // s.batch_size)


def _fingerprint(enc, train: list[Example], w: np.ndarray, s: FinetuneSettings) -> str:
    h = hashlib.sha256(
        json.dumps([asdict(s), enc.version, enc.max_length, enc.view is not None]).encode()
    )
    for e, wi in zip(train, w, strict=True):
        row = f"{e.text}\x1f{sorted(e.labels)}\x1f{sorted(e.covers)}\x1f{e.benign}\x1f{wi:.6g}"
        h.update(row.encode() + b"\n")
    return h.hexdigest()


class _StopFlag:
    """Set by SIGINT / SIGTERM while a run is in progress (the run stops at the next step
    boundary, after saving); the previous handlers come back afterwards."""

    def __init__(self) -> None:
        self.raised = False
        self._old: dict = {}

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._set)
        return self

    def _set(self, *_: object) -> None:
        self.raised = True

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def _progress(total: int, done: int, enabled: bool | None):
    """A progress bar with the loss and an ETA on stderr (a terminal only, unless forced)."""
    return progress_bar(total, "fine-tuning", enabled=on_terminal() if enabled is None else enabled,
                        completed=done, fields={"loss": "-"}, extra=["loss {task.fields[loss]}"])


def _eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class _Run:
    """One run's moving parts: the trained layers and the throw-away head, the optimiser and
    its one-cycle schedule, the weighted loss, and how far the run is (what a checkpoint
    holds, so that a resumed run continues bit for bit)."""

    def __init__(self, enc, train: list[Example], w: np.ndarray, s: FinetuneSettings, cut: int,
                 checkpoint: Path) -> None:  # fmt: skip
        import torch

        hs = TrainSettings()
        self.torch, self.model, self.s, self.cut, self.n = torch, enc.model, s, cut, len(train)
        self.checkpoint = checkpoint
        self.trained = self.model.encoder.layer[cut:]
        for p in self.model.parameters():
            p.requires_grad_(False)
        for p in self.trained.parameters():
            p.requires_grad_(True)
        self.head = _head(enc.dim, hs)
        self.opt = torch.optim.AdamW([{"params": self.trained.parameters(), "lr": s.learning_rate},
                                      {"params": self.head.parameters(), "lr": hs.learning_rate}],
                                     weight_decay=s.weight_decay)  # fmt: skip
        self.per_epoch = _steps_per_epoch(len(train), s)
        self.total = total = s.epochs * self.per_epoch
        # torch's one-cycle divides by the warm-up's length in steps minus one: keep it >= 2
        # steps (a real run has thousands; only tiny test runs need this)
        warmup = s.warmup if s.warmup * total >= 2 or total < 4 else min(2 / total, 0.5)
        self.sched = torch.optim.lr_scheduler.OneCycleLR(
            self.opt, max_lr=[s.learning_rate, hs.learning_rate], total_steps=total,
            pct_start=warmup,
        )  # fmt: skip
        y, m = targets(train)
        pos, neg = (y * m).sum(0), ((1 - y) * m).sum(0)
        self.loss_fn = torch.nn.BCEWithLogitsLoss(
            pos_weight=torch.tensor(np.clip(neg / np.maximum(pos, 1), 1.0, hs.max_pos_weight)),
            reduction="none",
        )
        self.Y, self.M = torch.from_numpy(y), torch.from_numpy(m)
        # drawn by weight: each draw counts 1; a full pass: each example counts its weight
        self.W = torch.ones(len(train)) if s.samples_per_epoch else torch.from_numpy(w)
        self.done, self.losses, self.epoch_total, self.prior_s, self.resumed = 0, [], 0.0, 0.0, 0

    def restore(self, state: dict) -> None:
        self.trained.load_state_dict(state["layers"])
        self.head.load_state_dict(state["head"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.torch.set_rng_state(state["torch_rng"])
        self.done, self.losses = state["step"], state["losses"]
        self.epoch_total = state["epoch_total"]
        self.prior_s, self.resumed = state["seconds"], state["resumed"] + 1

    def save(self, fingerprint: str, started: float) -> None:
        path = self.checkpoint
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        self.torch.save({
            "fingerprint": fingerprint, "step": self.done, "losses": self.losses,
            "epoch_total": self.epoch_total,
            "seconds": self.prior_s + time.perf_counter() - started,
            "resumed": self.resumed, "layers": self.model.encoder.layer[self.cut:].state_dict(),
            "head": self.head.state_dict(), "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(), "torch_rng": self.torch.get_rng_state(),
        }, tmp)  # fmt: skip
        os.replace(tmp, path)  # a kill mid-write leaves the previous checkpoint whole

    def step(self, batch: np.ndarray, inputs: list) -> float:
        """One optimiser step on a batch of example indices; returns its loss."""
        torch = self.torch
        idx = torch.from_numpy(batch)
        with _autocast(torch, self.s.precision):
            if self.cut:
                pooled = run_top(self.model, self.trained, [inputs[i] for i in batch],
                                 self.s.checkpointing)  # fmt: skip
            else:
                pooled = run_whole(self.model, [inputs[i] for i in batch], self.s.checkpointing)
            logits = self.head(pooled)
        weighted = self.loss_fn(logits.float(), self.Y[idx]) * self.M[idx] * self.W[idx, None]
        loss = weighted.sum() / self.M[idx].sum().clamp(min=1)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        self.sched.step()
        self.done += 1
        self.epoch_total += float(loss.detach()) * len(batch)
        return float(loss.detach())

    def weights(self) -> dict:
        """The trained layers under the base model's names, in bf16."""
        bf16 = self.torch.bfloat16
        return {f"encoder.layer.{self.cut + i}.{k}": v.detach().to(bf16).contiguous()
                for i, layer in enumerate(self.trained)
                for k, v in layer.state_dict().items()}  # fmt: skip


def _train(run: _Run, inputs: list, lengths: np.ndarray, w: np.ndarray, save: Callable[[], None],
           stop: Callable[[int], bool] | None, checkpoint_every_s: float, log,
           progress: bool | None) -> None:  # fmt: skip
    """Step until done; save every `checkpoint_every_s`, at each epoch's end and when asked
    to stop (then raise `FinetuneInterrupted`)."""
    s, total, per_epoch = run.s, run.total, run.per_epoch
    run.model.train()
    if not run.cut:
        run.model.embeddings.eval()  # frozen: no dropout on the looked-up embeddings
    bar = _progress(total, run.done, progress)
    run_started, run_steps, last_save = time.perf_counter(), 0, time.perf_counter()
    plan: tuple[int, list] = (-1, [])
    try:
        with _StopFlag() as flag:
            while run.done < total:
                epoch, k = divmod(run.done, per_epoch)
                if plan[0] != epoch:
                    plan = (epoch, _epoch_plan(epoch, lengths, w, s))
                loss = run.step(plan[1][k], inputs)
                done, run_steps = run.done, run_steps + 1
                if done % per_epoch == 0:  # an epoch ends
                    run.losses.append(round(run.epoch_total / (s.samples_per_epoch or run.n), 4))
                    run.epoch_total = 0.0
                    log(f"epoch {epoch + 1}/{s.epochs}: loss {run.losses[-1]}")
                eta = (time.perf_counter() - run_started) / run_steps * (total - done)
                if bar is not None:
                    bar.update(bar.task_ids[0], completed=done, loss=f"{loss:.4f}")
                elif done % 100 == 0 or done == total:
                    log(f"  step {done}/{total}: loss {loss:.4f}, ETA {_eta(eta)}")
                if done == total:
                    break
                stopping = flag.raised or (stop is not None and stop(done))
                due = time.perf_counter() - last_save >= checkpoint_every_s
                if stopping or due or done % per_epoch == 0:
                    save()
                    last_save = time.perf_counter()
                if stopping:
                    raise FinetuneInterrupted(run.checkpoint, done, total)
    finally:
        if bar is not None:
            bar.stop()
        run.model.eval()
        for p in run.model.parameters():
            p.requires_grad_(False)


def finetune(
    enc,
    examples: list[Example],
    out_dir: Path = TUNED_DIR,
    settings: FinetuneSettings | None = None,
    log=print,
    *,
    checkpoint_dir: Path = CHECKPOINT_DIR,
    checkpoint_every_s: float = 300.0,
    resume: bool = False,
    stop: Callable[[int], bool] | None = None,
    progress: bool | None = None,
) -> dict:
    """Fine-tune `enc`'s top `settings.layers` layers (12: all of them) on the train split of
    `examples`; write them to `out_dir`; returns the manifest. `enc` must be the base encoder
    (fp32 weights). Checkpoints go to `checkpoint_dir`; `resume` continues from one; `stop`
    (called with the number of steps done) ends the run early, saved, with
    `FinetuneInterrupted`, as SIGINT / SIGTERM do."""
    import torch
    from safetensors.torch import save_file

    check_trainable(examples)
    s = settings or FinetuneSettings()
    s = replace(s, precision=training_precision(s.precision))
    n_layers = enc.model.config.num_hidden_layers
    if not 1 <= s.layers <= n_layers:
        raise ValueError(f"layers must be 1..{n_layers}, not {s.layers}")
    cut = n_layers - s.layers
    torch.manual_seed(s.seed)
    train = [e for e in examples if e.split == "train"]
    w = sample_weights(train, TrainSettings())
    fingerprint = _fingerprint(enc, train, w, s)
    ckpt_path = Path(checkpoint_dir) / CHECKPOINT
    state = None
    if resume and ckpt_path.exists():
        state = torch.load(ckpt_path, weights_only=False)  # our own file, under var/
        if state["fingerprint"] != fingerprint:
            raise ValueError(f"{ckpt_path} belongs to another run (other data, settings or "
                             "encoder): delete it or start without --resume")  # fmt: skip
    elif resume:
        log(f"no checkpoint in {checkpoint_dir}: starting from the beginning")
    started = time.perf_counter()
    if cut:
        inputs = lower_states(enc, [e.text for e in train], cut, log=log, precision=s.precision)
        log(f"lower {cut} layers for {len(train)} texts: {time.perf_counter() - started:.0f} s")
    else:
        inputs = token_ids(enc, [e.text for e in train])
    lengths = np.array([x.shape[0] for x in inputs])
    run = _Run(enc, train, w, s, cut, ckpt_path)
    if state is not None:
        run.restore(state)
        log(f"resumed at step {run.done}/{run.total} from {ckpt_path}")
    _train(run, inputs, lengths, w, lambda: run.save(fingerprint, started), stop,
           checkpoint_every_s, log, progress)  # fmt: skip
    elapsed = run.prior_s + time.perf_counter() - started

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(run.weights(), str(out_dir / WEIGHTS))
    digest = hashlib.sha256((out_dir / WEIGHTS).read_bytes()).hexdigest()
    manifest = {
        "version": digest[:8],
        "weights_sha256": digest,
        "base_encoder": enc.version,
        "layers": list(range(cut, n_layers)),
        "settings": asdict(s),
        "train_examples": len(train),
        "sources": sorted({e.source for e in train}),  # data sources and seed files
        "input_view": enc.view is not None,  # read the texts' model view, as served by default
        "steps": run.total,
        "epoch_losses": run.losses,
        "seconds": round(elapsed),
        "resumed": run.resumed,
        "torch": torch.__version__,
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", "utf-8")
    ckpt_path.unlink(missing_ok=True)  # finished: nothing left to resume
    log(f"wrote {out_dir} (version {manifest['version']})")
    return manifest
