"""Trained category heads at serving time: embeddings + languages -> calibrated probabilities.

Reads what `floodgate model train` wrote into models/heads/ (heads.safetensors and
heads.json). The heads were trained on one encoder; loading them beside another is refused.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from service.classifier.train import apply_calibration
from service.config import REPO_ROOT

HEADS_DIR = REPO_ROOT / "models" / "heads"


class HeadsMismatch(RuntimeError):
    pass


class TrainedHeads:
    def __init__(self, directory: Path = HEADS_DIR, encoder_version: str | None = None) -> None:
        import torch
        from safetensors.torch import load_file

        from service.classifier.train import TrainSettings, _head

        manifest = json.loads((Path(directory) / "heads.json").read_text("utf-8"))
        if encoder_version and manifest["encoder_version"] != encoder_version:
            raise HeadsMismatch(
                f"heads in {directory} were trained on encoder {manifest['encoder_version']}, "
                f"not {encoder_version}: run `floodgate model train`"
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
