"""Trained category heads at serving time: embeddings + languages -> calibrated probabilities.

Reads what `floodgate model train` wrote into models/heads/ (heads.safetensors and
heads.json). The heads belong to the encoder they were fitted on (base weights and tuned
layers, `encoder_version`); beside another one they are refused. Of the encoder's
arithmetic, fp32 and bf16 are accepted (`floodgate model eval` measures the heads on both:
within 0.003 AUPRC), int8 is refused (its embeddings cost up to 10 AUPRC points).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from service.classifier.encoder import split_version
from service.classifier.train import apply_calibration
from service.config import REPO_ROOT

HEADS_DIR = REPO_ROOT / "models" / "heads"
# encoder arithmetic the heads accept beside the fp32 they were trained on (see the card)
ACCEPTED_PRECISIONS = ("fp32", "bf16")


class HeadsMismatch(RuntimeError):
    pass


class TrainedHeads:
    def __init__(self, directory: Path = HEADS_DIR, encoder_version: str | None = None) -> None:
        import torch
        from safetensors.torch import load_file

        from service.classifier.train import TrainSettings, _head

        manifest = json.loads((Path(directory) / "heads.json").read_text("utf-8"))
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
        settings = TrainSettings(**{**TrainSettings().__dict__, **manifest["settings"]})
        self.head = _head(manifest["architecture"]["input"], settings)
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
