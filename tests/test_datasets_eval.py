"""`floodgate model eval` on the evaluation-only datasets: accuracy and F1 per label, with
real (tiny) heads on the real encoder."""

from __future__ import annotations

import numpy as np
import pytest

from service.classifier.datasets import SHARED_TRAIN, load_eval_only, load_examples
from service.classifier.train import OUTPUTS, TrainSettings, train

pytestmark = pytest.mark.skipif(not SHARED_TRAIN.exists(), reason="../shared/data/train is not here")


def test_transfer_table_reports_accuracy_and_f1_per_label(tmp_path, model_dir):
    from service.classifier.cache import EmbeddingCache
    from service.classifier.card import tables
    from service.classifier.evaluate import transfer
    from service.classifier.heads import TrainedHeads

    cache = EmbeddingCache(tmp_path / "cache", model_dir, progress=False)
    examples = load_examples(cap_per_label=30, seeds=None, sources=("toxigen", "youtube_spam", "cold"))
    train(cache, tmp_path / "heads", TrainSettings(epochs=3, hidden=16), examples, log=lambda *_: None)
    heads = TrainedHeads(tmp_path / "heads", encoder_version=cache.version)

    rows = load_eval_only(cap_per_tag=4)
    result = transfer(cache, heads, rows)
    assert set(result) == {"dynahate", "chnci", "zh_telecom_fraud"}
    assert {r["category"] for r in result.values()} == {"hate", "harassment", "scam_spam"}

    # recompute one dataset's figures by hand from the same scores
    fraud = [e for e in rows if e.source == "zh_telecom_fraud"]
    probs = heads.probabilities(cache.embed([e.text for e in fraud]), ["zh"] * len(fraud))
    score = probs[:, heads.outputs.index("scam_spam")]
    pred = score >= heads.thresholds["scam_spam"]
    truth = np.array([bool(e.labels) for e in fraud])
    r = result["zh_telecom_fraud"]
    assert r["n"] == 20 and r["positives"] == 16 and len(r["by_label"]) == 5
    assert r["own"]["accuracy"] == pytest.approx(float((pred == truth).mean()))
    tp = float((pred & truth).sum())
    assert r["own"]["f1_positive"] == pytest.approx(2 * tp / (pred.sum() + truth.sum()))
    tn = float((~pred & ~truth).sum())
    assert r["own"]["f1_negative"] == pytest.approx(2 * tn / ((~pred).sum() + (~truth).sum()))
    normal = r["by_label"]["normal SMS"]
    assert normal["harmful"] is False and normal["n"] == 4
    assert normal["accuracy"] == pytest.approx(float((~pred[~truth]).mean()))
    assert normal["mean_score"] == pytest.approx(float(score[~truth].mean()), abs=1e-6)
    # "any harmful category" flags at least the rows the dataset's own category flags
    for r in result.values():
        for t in r["by_label"].values():
            if t["harmful"]:
                assert t["accuracy_any"] >= t["accuracy"]
            else:
                assert t["accuracy_any"] <= t["accuracy"]

    card = tables({"held_out": {}, "thresholds": {o: 0.5 for o in OUTPUTS},
                   "hatecheck": {"floodgate": {"accuracy": 0.5, "by_functionality": {}},
                                 "perspective": {"accuracy": 0.5, "by_functionality": {}}},
                   "mhc_mandarin": {"accuracy": 0.5, "by_functionality": {}},
                   "xstest": {"safe_prompts": 1, "false_flag_rate": 0.0, "unsafe_flag_rate": 0.0,
                              "false_flags_by_type": {}},
                   "transfer": result})  # fmt: skip
    assert "evaluation-only datasets" in card
    assert "| zh_telecom_fraud | normal SMS | no | 4 |" in card
    assert "| chnci | cyberbullying | yes | 4 |" in card

    # judged at other thresholds (the policy's, per language): a Chinese threshold of 1.0
    # flags nothing Chinese, and only there; every held-out row names its threshold
    from service.classifier.evaluate import Thresholds, held_out

    t = Thresholds(dict(heads.thresholds),
                   {"zh": {**heads.thresholds, "scam_spam": 1.0, "hate": 1.0}})  # fmt: skip
    moved = transfer(cache, heads, rows, t=t)["zh_telecom_fraud"]
    assert moved["own"]["accuracy"] == pytest.approx(float((~truth).mean()))
    assert transfer(cache, heads, rows, t=t)["dynahate"] == result["dynahate"]
    assert t.of("scam_spam", "zh") == 1.0 and t.of("scam_spam", "en") == heads.thresholds["scam_spam"]
    tests = [e for e in examples if e.split == "test"]
    hate = held_out(cache, heads, tests, t=t)["hate"]
    assert {"all", "en", "zh"} <= set(hate)
    for lang, row in hate.items():
        assert row["threshold"] == (1.0 if lang == "zh" else heads.thresholds["hate"])
    assert hate["zh"]["recall"] == 0.0 and hate["zh"]["precision"] is None
