"""The data sources: evaluation-only (NON-COMMERCIAL) ones never reach a trainer; the new
sources' mappings (rows that are "not X" but not benign, ConvAbuse's annotator votes)."""

from __future__ import annotations

import csv
from collections import Counter

import numpy as np
import pytest

from service.classifier.datasets import (
    EVAL_ONLY,
    FOLDERS,
    SHARED_TRAIN,
    SOURCES,
    EvalOnlyData,
    Example,
    load_eval_only,
    load_examples,
)
from service.classifier.train import OUTPUTS, TrainSettings, targets

pytestmark = pytest.mark.skipif(not SHARED_TRAIN.exists(), reason="../shared/data/train is not here")
NON_COMMERCIAL = {"dynahate", "chnci", "zh_telecom_fraud"}


def _non_commercial(folder: str) -> bool:
    return (SHARED_TRAIN / folder / "SOURCE.txt").read_text("utf-8").startswith("NON-COMMERCIAL")


def test_eval_only_is_exactly_what_source_txt_flags_non_commercial():
    assert EVAL_ONLY == NON_COMMERCIAL
    assert set(FOLDERS) == {s.name for s in SOURCES}
    for src in SOURCES:
        folder = SHARED_TRAIN / FOLDERS[src.name]
        assert folder.is_dir(), folder
        if (folder / "SOURCE.txt").exists():
            assert src.eval_only == _non_commercial(FOLDERS[src.name]), src.name
    # and no NON-COMMERCIAL folder is read by a trainable source
    flagged = {d.name for d in SHARED_TRAIN.iterdir() if (d / "SOURCE.txt").exists() and _non_commercial(d.name)}
    assert flagged == {FOLDERS[n] for n in NON_COMMERCIAL}


def test_training_examples_never_come_from_eval_only_sources():
    examples = load_examples(cap_per_label=None)
    sources = Counter(e.source.split("/")[0] for e in examples)
    assert not set(sources) & EVAL_ONLY, sources
    # the trainable new sources are there, in full (nothing capped here)
    assert sources["hatemoji"] > 5000 and sources["threatgram"] > 14000 and sources["convabuse"] > 2000
    for name in NON_COMMERCIAL:
        with pytest.raises(EvalOnlyData):
            load_examples(sources=(name,), seeds=None)
        with pytest.raises(EvalOnlyData):
            load_examples(sources=("cold", name), seeds=None)


def test_trainers_refuse_eval_only_examples(tmp_path, model_dir):
    from service.classifier.cache import EmbeddingCache
    from service.classifier.encoder import Encoder
    from service.classifier.finetune import FinetuneSettings, finetune
    from service.classifier.train import train

    rows = load_eval_only(cap_per_tag=3, sources=("chnci",))
    ok = load_examples(cap_per_label=5, seeds=None, sources=("toxigen",))
    cache = EmbeddingCache(tmp_path / "cache", model_dir, progress=False)
    with pytest.raises(EvalOnlyData):
        train(cache, tmp_path / "heads", TrainSettings(epochs=1), ok + rows, log=lambda *_: None)
    assert cache.computed == 0 and not (tmp_path / "heads").exists()
    with pytest.raises(EvalOnlyData):
        finetune(Encoder(model_dir), ok + rows, tmp_path / "enc", FinetuneSettings(layers=1, epochs=1),
                 checkpoint_dir=tmp_path / "ckpt", log=lambda *_: None)  # fmt: skip
    assert not (tmp_path / "enc").exists() and not (tmp_path / "ckpt").exists()


def test_eval_only_rows_are_sampled_per_dataset_label():
    a = load_eval_only(cap_per_tag=50)
    b = load_eval_only(cap_per_tag=50)
    assert [e.text for e in a] == [e.text for e in b]
    per = Counter((e.source, e.tag) for e in a)
    assert {s for s, _ in per} == NON_COMMERCIAL
    assert set(per.values()) == {50}
    tags = {t for s, t in per if s == "zh_telecom_fraud"}
    assert len(tags) == 5 and "normal SMS" in tags  # four fraud scripts + commercial SMS
    for e in a:
        assert bool(e.labels) == (e.tag not in ("nothate", "not", "normal SMS")), (e.source, e.tag)
        assert e.benign in (False, None)  # none of them has a benign row


def test_not_hate_rows_are_not_benign():
    """A DynaHate/Hatemoji 'not hate' or a ThreatGram 'no threat' row is a negative for the
    covered category only: its benign cell and the other categories are masked."""
    by_source = {s.name: s for s in SOURCES}
    rows = {}
    for name in ("hatemoji", "threatgram"):
        for text, labels, tag in by_source[name].rows(SHARED_TRAIN):
            if not labels:
                src = by_source[name]
                rows[name] = Example(text, labels, src.language, name, src.covers, src.unlabelled_is_benign, tag)
                break
    benign_row = Example("nice weather today", frozenset(), "en", "cad", frozenset({"hate"}))
    y, m = targets([rows["hatemoji"], rows["threatgram"], benign_row])
    col = {o: j for j, o in enumerate(OUTPUTS)}
    assert (m[0, col["hate"]], y[0, col["hate"]]) == (1, 0)
    assert m[0, col["benign"]] == 0 and m[0, col["harassment"]] == 0
    assert (m[1, col["violence"]], y[1, col["violence"]]) == (1, 0)
    assert m[1, col["benign"]] == 0 and m[1, col["hate"]] == 0
    assert m[2].all() and y[2, col["benign"]] == 1  # an ordinary benign row: known everywhere


def _convabuse_fixture(tmp_path):
    """Three annotators' columns, as in the real files (one column per annotator x answer)."""
    kinds = ["is_abuse.1", "is_abuse.0", "is_abuse.-1", "is_abuse.-2", "is_abuse.-3", "sexist",
             "sex_harassment", "intellectual"]  # fmt: skip
    cols = ["example_id", "user"] + [f"Annotator{a}_{k}" for a in (1, 2, 3) for k in kinds]

    def row(text, **marks):
        r = dict.fromkeys(cols, "")
        r.update(example_id="1", user=text)
        for who, what in marks.items():
            for k in what:
                r[f"Annotator{who[1:]}_{k}"] = "1"
        return r

    rows = [
        # two of three abusive, both naming sexual harassment (one cell repeated: "1, 1")
        row("sexual one", a1=["is_abuse.-2", "sex_harassment"], a2=["is_abuse.-1", "sex_harassment"],
            a3=["is_abuse.1"]),
        # three abusive, only one of them names sexism: harassment, not hate
        row("insult one", a1=["is_abuse.-3", "sexist"], a2=["is_abuse.-1", "intellectual"],
            a3=["is_abuse.-2"]),
        # majority not abusive: benign
        row("chat one", a1=["is_abuse.1"], a2=["is_abuse.1"], a3=["is_abuse.-1"]),
        # split vote (abusive, ambiguous): left out
        row("unclear one", a1=["is_abuse.-1"], a2=["is_abuse.0"]),
    ]  # fmt: skip
    rows[0]["Annotator1_is_abuse.-2"] = "1, 1"
    folder = tmp_path / "convabuse"
    folder.mkdir()
    for split in ("train", "valid", "test"):
        with (folder / f"2_splits_ConvAbuseEMNLP{split}.csv").open("w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, cols)
            w.writeheader()
            w.writerows(rows if split == "train" else [])
    return tmp_path


def test_convabuse_majority_vote_and_types(tmp_path):
    src = next(s for s in SOURCES if s.name == "convabuse")
    got = {text: (labels, tag) for text, labels, tag in src.rows(_convabuse_fixture(tmp_path))}
    assert got == {
        "sexual one": (frozenset({"harassment", "sexual"}), "sex_harassment"),
        "insult one": (frozenset({"harassment"}), "abuse"),
        "chat one": (frozenset(), "not abusive"),
    }


def test_sources_each_read_and_label_with_reasons():
    for src in SOURCES:
        assert src.why and src.licence, src.name
        if src.name in ("hatemoji", "dynahate", "threatgram", "chnci", "zh_telecom_fraud", "convabuse"):
            assert len(src.why) > 200, src.name  # the new sources' mappings say why, at length
        if src.eval_only:
            assert "NON-COMMERCIAL" in src.why or "NON-COMMERCIAL" in src.licence
    # the full new sources, as documented in ../shared/data/README.md
    counts = {s.name: Counter(tag for _, _, tag in s.rows(SHARED_TRAIN)) for s in SOURCES
              if s.name in ("threatgram", "zh_telecom_fraud", "dynahate")}  # fmt: skip
    assert counts["threatgram"] == {"violent threat": 5393, "non-violent threat": 4658, "no threat": 5025}
    assert sum(counts["dynahate"].values()) == 36537
    assert counts["zh_telecom_fraud"]["normal SMS"] == 7773
    assert np.isclose(sum(counts["zh_telecom_fraud"].values()), 11773)


def test_trained_examples_follow_the_heads_manifest():
    from service.classifier.datasets import summary, trained_examples

    # heads trained on toxigen and the seeds, candidates included, at 30 rows per label set
    trained = load_examples(cap_per_label=30, sources=("toxigen", "seeds"), candidates=True)
    manifest = {"settings": {"cap_per_label": 30, "candidates": True}, "data": summary(trained)}
    assert [e.text for e in trained_examples(manifest)] == [e.text for e in trained]
    assert any(e.source.startswith("seeds/candidates/") for e in trained)
    # heads from before the candidates (or before a seed file was written) never see them
    manifest["settings"]["candidates"] = False
    again = trained_examples(manifest)
    assert again and not any(e.source.startswith("seeds/candidates/") for e in again)
    manifest["data"].pop("seeds/benign.en")
    assert "seeds/benign.en" not in {e.source for e in trained_examples(manifest)}
