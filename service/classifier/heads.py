"""Trained category heads at serving time: embeddings + languages -> calibrated probabilities.

Reads what `floodgate model train` wrote into models/heads/ (heads.safetensors and
heads.json). The head's shape (`head_module`) and the calibration (`apply_calibration`) are
defined here, where serving needs them; training (train.py, finetune.py) builds and fits
the same module. The heads belong to the encoder they were fitted on (base weights and tuned
layers, `encoder_version`); beside another one they are refused. Of the encoder's
arithmetic, fp32 and bf16 are accepted (`floodgate model eval` measures the heads on both:
within 0.003 AUPRC), int8 is refused (its embeddings cost up to 10 AUPRC points).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from service.classifier.encoder import split_version
from service.config import REPO_ROOT

HEADS_DIR = REPO_ROOT / "models" / "heads"
# encoder arithmetic the heads accept beside the fp32 they were trained on (see the card)
ACCEPTED_PRECISIONS = ("fp32", "bf16")


class HeadsMismatch(RuntimeError):
    pass


def head_module(dim: int, hidden: int, outputs: int, dropout: float):
    """The head: dim -> hidden GELU -> one logit per output (a torch module)."""
    import torch

    return torch.nn.Sequential(
        torch.nn.Linear(dim, hidden),
        torch.nn.GELU(),
        torch.nn.Dropout(dropout),
        torch.nn.Linear(hidden, outputs),
    )


def apply_calibration(
    logits: np.ndarray, calibration: dict, langs, outputs: tuple[str, ...] | list[str] | None = None
) -> np.ndarray:
    """sigmoid(a * logit + b) with (a, b) per output and language (all-language fallback);
    `outputs` name the logits' columns (default: the calibration's outputs, in its order)."""
    outputs = list(calibration) if outputs is None else outputs
    a = np.empty_like(logits)
    b = np.empty_like(logits)
    for j, name in enumerate(outputs):
        cal = calibration[name]
        for i, lang in enumerate(langs):
            a[i, j], b[i, j] = cal.get(lang, cal["all"])
    z = np.clip(a * logits + b, -60.0, 60.0)
    return 1.0 / (1.0 + np.exp(-z))


def read_manifest(directory: Path) -> dict:
    return json.loads((Path(directory) / "heads.json").read_text("utf-8"))


def served_heads_manifest() -> dict | None:
    """The manifest of the heads the service is configured with (None: none trained)."""
    from service.config import get_settings

    directory = get_settings().heads_dir
    if directory is None or not TrainedHeads.available(directory):
        return None
    return read_manifest(directory)


class TrainedHeads:
    def __init__(self, directory: Path = HEADS_DIR, encoder_version: str | None = None) -> None:
        import torch
        from safetensors.torch import load_file

        manifest = read_manifest(directory)
        if encoder_version:
            base, precision = split_version(encoder_version)
            if manifest["encoder_version"] != base:
                raise HeadsMismatch(
                    f"heads in {directory} were trained on encoder "
                    f"{manifest['encoder_version']}, not {base}: run `floodgate model train`"
                )
            if precision not in ACCEPTED_PRECISIONS:
                raise HeadsMismatch(
                    f"heads in {directory} do not accept {precision} embeddings (they lose "
                    f"quality, see models/README.md); use precision "
                    f"{' or '.join(ACCEPTED_PRECISIONS)}"
                )
        shape, dropout = manifest["architecture"], manifest["settings"]["dropout"]
        self.head = head_module(shape["input"], shape["hidden"], len(manifest["outputs"]), dropout)
        self.head.load_state_dict(load_file(str(Path(directory) / "heads.safetensors")))
        self.head.eval()
        self._torch = torch
        self.outputs: list[str] = manifest["outputs"]
        self.version: str = manifest["version"]
        self.thresholds: dict[str, float] = manifest["thresholds"]
        self.calibration: dict[str, dict[str, list[float]]] = manifest["calibration"]
        self.manifest = manifest

    @staticmethod
    def available(directory: Path = HEADS_DIR) -> bool:
        return (Path(directory) / "heads.json").exists()

    def probabilities(self, embeddings: np.ndarray, languages: list[str]) -> np.ndarray:
        """(n, outputs) calibrated probabilities; calibration per language where fitted."""
        with self._torch.inference_mode():
            logits = self.head(
                self._torch.from_numpy(np.ascontiguousarray(embeddings, np.float32))
            ).numpy()
        return apply_calibration(logits, self.calibration, languages, self.outputs)
