"""Fine-tuning the encoder's top layers: runs on the CPU, is repeatable, loads offline."""

from __future__ import annotations

import numpy as np

from service.classifier.datasets import Example
from service.classifier.encoder import Encoder
from service.classifier.finetune import FinetuneSettings, finetune, tuned_version

HATEFUL = ["those {} are vermin and should be thrown out", "I hate all {}, they ruin everything"]
BENIGN = ["my {} friends cooked dinner for us tonight", "we visited the {} museum this weekend"]
GROUPS = ["immigrants", "foreigners", "Americans", "students", "neighbours", "tourists"]


def _examples() -> list[Example]:
    out = []
    for group in GROUPS:
        for t in HATEFUL:
            out.append(Example(t.format(group), frozenset({"hate"}), "en", "t", frozenset({"hate"})))
        for t in BENIGN:
            out.append(Example(t.format(group), frozenset(), "en", "t", frozenset({"hate"})))
    return out


def test_finetune_is_repeatable_and_its_layers_load(model_dir, tmp_path):
    examples = _examples()
    assert sum(e.split == "train" for e in examples) >= 10
    settings = FinetuneSettings(layers=1, epochs=1, batch_size=4)
    quiet = lambda *_: None  # noqa: E731
    first = finetune(Encoder(model_dir), examples, tmp_path / "a", settings, log=quiet)
    second = finetune(Encoder(model_dir), examples, tmp_path / "b", settings, log=quiet)
    assert first["weights_sha256"] == second["weights_sha256"]
    assert first["layers"] == [11] and first["train_examples"] == sum(e.split == "train" for e in examples)
    assert tuned_version(tmp_path / "a") == first["version"]

    base, tuned = Encoder(model_dir), Encoder(model_dir, tuned_dir=tmp_path / "a")
    assert tuned.version == f"{base.version}ft{first['version']}"
    texts = [e.text for e in examples[:4]]
    cos = np.sum(base.embed(texts) * tuned.embed(texts), axis=1)
    assert cos.max() < 0.99999  # training moved the top layer
