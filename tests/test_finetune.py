"""Fine-tuning the encoder's top layers: runs on the CPU, is repeatable, loads offline."""

from __future__ import annotations

import numpy as np

from service.classifier.datasets import Example
from service.classifier.encoder import Encoder
from service.classifier.finetune import FinetuneSettings, finetune
from service.classifier.tuned import tuned_version

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
    first = finetune(Encoder(model_dir), examples, tmp_path / "a", settings, log=quiet,
                     checkpoint_dir=tmp_path / "ck")
    second = finetune(Encoder(model_dir), examples, tmp_path / "b", settings, log=quiet,
                      checkpoint_dir=tmp_path / "ck")
    assert first["weights_sha256"] == second["weights_sha256"]
    assert first["layers"] == [11] and first["train_examples"] == sum(e.split == "train" for e in examples)
    assert tuned_version(tmp_path / "a") == first["version"]

    base, tuned = Encoder(model_dir), Encoder(model_dir, tuned_dir=tmp_path / "a")
    assert tuned.version == f"{base.version}ft{first['version']}"
    texts = [e.text for e in examples[:4]]
    cos = np.sum(base.embed(texts) * tuned.embed(texts), axis=1)
    assert cos.max() < 0.99999  # training moved the top layer


def test_precision_is_resolved_recorded_and_used(model_dir, tmp_path):
    """"auto" becomes bf16 autocast only where it is fast (bf16 units or AVX-512; emulated bf16
    is ~20x slower than fp32 on an AVX2-only CPU); the manifest names what ran, the two
    precisions give other weights, and int8 (a serving option) is refused."""
    import pytest

    from service.classifier.finetune import training_precision

    examples = _examples()
    quiet = lambda *_: None  # noqa: E731

    def run(name: str, precision: str) -> dict:
        return finetune(Encoder(model_dir), examples, tmp_path / name,
                        FinetuneSettings(layers=1, epochs=1, batch_size=4, precision=precision),
                        log=quiet, checkpoint_dir=tmp_path / f"ck-{name}")  # fmt: skip

    auto, fp32, bf16 = run("auto", "auto"), run("fp32", "fp32"), run("bf16", "bf16")
    assert auto["settings"]["precision"] == training_precision() in ("fp32", "bf16")
    assert fp32["settings"]["precision"] == "fp32" and bf16["settings"]["precision"] == "bf16"
    assert fp32["weights_sha256"] != bf16["weights_sha256"]
    assert auto["weights_sha256"] == {"fp32": fp32, "bf16": bf16}[training_precision()]["weights_sha256"]
    with pytest.raises(ValueError, match="precision"):
        run("int8", "int8")


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


def _train_count(examples) -> int:
    return sum(e.split == "train" for e in examples)


def test_whole_encoder_interrupted_and_resumed_equals_an_uninterrupted_run(model_dir, tmp_path):
    """All 12 layers, gradient checkpointing, two interruptions (mid first and mid second
    epoch, each saved at the step boundary), two resumes: the same weights, bit for bit, and
    the same epoch losses as one run straight through."""
    import pytest

    from service.classifier.finetune import CHECKPOINT, FinetuneInterrupted

    examples = _examples()
    settings = FinetuneSettings(layers=12, epochs=2, batch_size=4, checkpointing=True)
    quiet = lambda *_: None  # noqa: E731
    steps_per_epoch = -(-_train_count(examples) // 4)
    whole = finetune(Encoder(model_dir), examples, tmp_path / "whole", settings,
                     checkpoint_dir=tmp_path / "ck-whole", log=quiet)  # fmt: skip
    assert whole["layers"] == list(range(12)) and whole["steps"] == 2 * steps_per_epoch
    assert whole["resumed"] == 0 and not (tmp_path / "ck-whole" / CHECKPOINT).exists()

    ck, out = tmp_path / "ck", tmp_path / "resumed"
    for stop_at in (3, steps_per_epoch + 2):
        with pytest.raises(FinetuneInterrupted) as stopped:
            finetune(Encoder(model_dir), examples, out, settings, checkpoint_dir=ck, log=quiet,
                     resume=stop_at != 3, stop=lambda step, n=stop_at: step == n)  # fmt: skip
        assert stopped.value.step == stop_at and (ck / CHECKPOINT).exists()
        assert not out.exists()  # nothing is written before the run ends
    resumed = finetune(Encoder(model_dir), examples, out, settings, checkpoint_dir=ck, log=quiet,
                       resume=True)  # fmt: skip
    assert resumed["resumed"] == 2
    assert resumed["weights_sha256"] == whole["weights_sha256"]
    assert resumed["epoch_losses"] == whole["epoch_losses"]
    assert not (ck / CHECKPOINT).exists()  # finished: nothing left to resume

    # every layer moved, not only the top ones
    from safetensors.torch import load_file

    tuned = load_file(str(out / "top.safetensors"))
    base = Encoder(model_dir).model.state_dict()
    for layer in (0, 5, 11):
        key = f"encoder.layer.{layer}.attention.self.query.weight"
        assert not np.allclose(tuned[key].float().numpy(), base[key].bfloat16().float().numpy())
    embedded = Encoder(model_dir, tuned_dir=out).embed(["hello", "你好"])
    assert np.isfinite(embedded).all()


def test_resume_refuses_a_checkpoint_of_another_run(model_dir, tmp_path):
    import pytest

    from service.classifier.finetune import FinetuneInterrupted

    examples = _examples()
    quiet = lambda *_: None  # noqa: E731
    with pytest.raises(FinetuneInterrupted):
        finetune(Encoder(model_dir), examples, tmp_path / "a", FinetuneSettings(layers=1, epochs=1, batch_size=4),
                 checkpoint_dir=tmp_path / "ck", log=quiet, stop=lambda step: step == 1)  # fmt: skip
    with pytest.raises(ValueError, match="another run"):
        finetune(Encoder(model_dir), examples, tmp_path / "a", FinetuneSettings(layers=2, epochs=1, batch_size=4),
                 checkpoint_dir=tmp_path / "ck", log=quiet, resume=True)  # fmt: skip


def test_weighted_draws_make_epochs_of_a_fixed_size(model_dir, tmp_path):
    """samples_per_epoch: each epoch draws that many examples (by sample weight), so an
    epoch's length no longer depends on the data size."""
    examples = _examples()
    settings = FinetuneSettings(layers=1, epochs=2, batch_size=4, samples_per_epoch=10)
    out = finetune(Encoder(model_dir), examples, tmp_path / "a", settings,
                   checkpoint_dir=tmp_path / "ck", log=lambda *_: None)  # fmt: skip
    assert out["steps"] == 2 * 3 and len(out["epoch_losses"]) == 2


def test_gradient_checkpointing_changes_memory_not_the_result(model_dir, tmp_path):
    """Recomputing activations in the backward pass (dropout masks included) gives the same
    weights as keeping them."""
    examples = _examples()
    quiet = lambda *_: None  # noqa: E731
    runs = [finetune(Encoder(model_dir), examples, tmp_path / str(ck),
                     FinetuneSettings(layers=2, epochs=1, batch_size=4, checkpointing=ck),
                     checkpoint_dir=tmp_path / f"ck{ck}", log=quiet) for ck in (False, True)]  # fmt: skip
    assert runs[0]["weights_sha256"] == runs[1]["weights_sha256"]


def test_finetune_reads_the_served_view_of_each_text(model_dir, tmp_path):
    """With the input view on (the served default), the encoder is tuned on what it will read:
    the evasion-folded text; the manifest says so, and a checkpoint of a run on the raw texts
    is not resumed by a run on the views (they are different data)."""
    import pytest

    from service.classifier.finetune import FinetuneInterrupted, read_texts, token_ids
    from service.policy.text import model_view

    viewed, raw = Encoder(model_dir, view=model_view), Encoder(model_dir)
    evasive = ["加🔥V🔥信 日结", "ｆｒｅｅ ｍｏｎｅｙ", "垃圾"]
    assert read_texts(viewed, evasive) == [model_view(t) for t in evasive] != evasive
    assert read_texts(raw, evasive) == evasive
    assert [t.tolist() for t in token_ids(viewed, evasive)] != [t.tolist() for t in token_ids(raw, evasive)]

    examples, quiet = _examples(), (lambda *_: None)
    settings = FinetuneSettings(layers=1, epochs=1, batch_size=4)
    with pytest.raises(FinetuneInterrupted):
        finetune(raw, examples, tmp_path / "a", settings, checkpoint_dir=tmp_path / "ck",
                 log=quiet, stop=lambda step: step == 1)  # fmt: skip
    with pytest.raises(ValueError, match="another run"):
        finetune(viewed, examples, tmp_path / "a", settings, checkpoint_dir=tmp_path / "ck",
                 log=quiet, resume=True)  # fmt: skip
    manifest = finetune(viewed, examples, tmp_path / "b", settings, log=quiet,
                        checkpoint_dir=tmp_path / "ck2")  # fmt: skip
    assert manifest["input_view"] is True
