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


def test_top_layers_on_cached_lower_states_equal_the_whole_encoder(model_dir):
    """run_top (training) must compute what the served encoder computes: padding and the
    attention mask included, on texts of different lengths in one batch."""
    import torch

    from service.classifier.finetune import lower_states, run_top

    enc = Encoder(model_dir)
    texts = ["hi", "今天天气很好，我们去公园散步吧，顺便买点水果回家", *(e.text for e in _examples()[:3])]
    cut = enc.model.config.num_hidden_layers - 2
    states = lower_states(enc, texts, cut, log=lambda *_: None)
    assert [s.shape[0] for s in states] == enc.token_lengths(texts, prefix="query: ")
    with torch.inference_mode():
        top = run_top(enc.model, enc.model.encoder.layer[cut:], states).numpy()
    whole = enc.embed(texts, prefix="query: ")
    cos = np.sum(top * whole, axis=1)
    # the lower states are kept in bf16, so equality holds to bf16 precision, not bit for bit
    assert cos.min() > 0.999, cos
    # and the padded short text is not polluted by its padding
    alone = run_top(enc.model, enc.model.encoder.layer[cut:], states[:1]).detach().numpy()
    assert float(np.sum(alone[0] * top[0])) > 0.99999
