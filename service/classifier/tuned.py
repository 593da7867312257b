"""Fine-tuned encoder layers at serving time: the manifest's version and the overlay.

`floodgate model finetune` (finetune.py) writes the trained top layers to
``models/encoder/top.safetensors`` (bf16) with a manifest, ``tuned.json`` (version, base
encoder, layers, settings). `Encoder(..., tuned_dir=...)` lays them over the converted base
model with `load_tuned`; this module is all the encoder needs of them, so that serving never
imports the training code.
"""

from __future__ import annotations

import json
from pathlib import Path

from service.config import REPO_ROOT

TUNED_DIR = REPO_ROOT / "models" / "encoder"
WEIGHTS = "top.safetensors"
MANIFEST = "tuned.json"


def tuned_manifest(directory: Path) -> dict | None:
    """The tuned layers' manifest, or None when there are none."""
    manifest = Path(directory) / MANIFEST
    if not manifest.exists():
        return None
    return json.loads(manifest.read_text("utf-8"))


def tuned_version(directory: Path) -> str | None:
    """The tuned layers' short hash, or None when there are none."""
    manifest = tuned_manifest(directory)
    return None if manifest is None else manifest["version"]


def load_tuned(model, directory: Path) -> dict:
    """Lay the tuned layers over `model` (in place); returns the manifest."""
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
