"""How each public dataset is read: its files under ../shared/data/train, and each row's own
labels turned into Floodgate's categories. A reader yields (text, labels) or (text, labels,
tag), the tag being the dataset's own label for the row; ``datasets.SOURCES`` names the
categories each source covers and says why the mapping is what it is.
"""

from __future__ import annotations

import ast
import csv
import json
from collections.abc import Iterator
from pathlib import Path

csv.field_size_limit(10_000_000)


def _rows(path: Path, delimiter: str = ",") -> Iterator[dict[str, str]]:
    with path.open(encoding="utf-8-sig", newline="", errors="replace") as fh:
        yield from csv.DictReader(fh, delimiter=delimiter)


def _labels(*pairs: tuple[bool, str]) -> frozenset[str]:
    return frozenset(cat for on, cat in pairs if on)


def cold(root: Path):
    for name in ("train.csv", "dev.csv"):
        for r in _rows(root / "cold" / name):
            yield r["TEXT"], _labels((r["label"] == "1", "hate"))


def swsr(root: Path):
    for r in _rows(root / "swsr" / "SexComment.csv"):
        sexist = r["label"] == "1"
        # target G(roup) is sexism against women as a group (hate); I(ndividual) is an
        # attack on one person (harassment), which is also gender-based hate
        individual = r.get("target", "") == "I"
        yield r["comment_text"], _labels((sexist, "hate"), (sexist and individual, "harassment"))


_JADE = {
    "贩卖毒品": {"drugs"},
    "赌博或开设赌场": {"gambling"},
    "诈骗": {"scam_spam"},
    "网络欺诈与犯罪": {"scam_spam"},
    "宣扬暴力、淫秽色情": {"violence", "sexual"},
    "故意伤害他人": {"violence"},
    "宣扬恐怖主义、极端主义": {"violence"},
    "抢劫": {"violence"},
    "性别歧视内容": {"hate"},
    "国别歧视内容": {"hate"},
    "地域歧视内容": {"hate"},
    "民族歧视内容": {"hate"},
    "肤色歧视内容": {"hate"},
    "其他方面歧视内容": {"hate"},
}


def jade(root: Path):
    for f in sorted((root / "zh_en_jade_db").glob("*_zh.csv")):
        for r in _rows(f):
            cats = _JADE.get(r["违规子类"].strip())
            if cats:  # the other sub-types (privacy, forgery...) are harmful but not ours: skipped
                yield r["问题"], frozenset(cats)


_CAD = {
    "IdentityDirectedAbuse": "hate",
    "PersonDirectedAbuse": "harassment",
    "AffiliationDirectedAbuse": "harassment",
}


def cad(root: Path):
    for split in ("train", "dev", "test"):
        f = root / "cad_contextual_abuse" / f"data_reddit-abusive-comments_cad_v1_1_{split}.tsv"
        for r in _rows(f, "\t"):
            text = (r.get("text") or "").strip()
            if text and text not in ("[deleted]", "[removed]"):
                yield text, frozenset(_CAD[x] for x in r["labels"].split(",") if x in _CAD)


def gab(root: Path):
    for split in ("train", "test"):
        for r in _rows(root / "gab_hate_corpus" / f"GabHateCorpus_Data_ghc_{split}.tsv", "\t"):
            yield r["text"], _labels((r["hd"] == "1", "hate"), (r["cv"] == "1", "violence"),
                                     (r["vo"] == "1", "harassment"))  # fmt: skip


def implicit(root: Path):
    base = root / "implicit_hate_corpus"
    violent = {
        r["post"] for r in _rows(base / "implicit-hate-corpus_implicit_hate_v1_stg2_posts.tsv", "\t")
        if {r["implicit_class"], r.get("extra_implicit_class", "")} & {"threatening", "incitement"}
    }  # fmt: skip
    for r in _rows(base / "implicit-hate-corpus_implicit_hate_v1_stg1_posts.tsv", "\t"):
        hate = r["class"] in ("implicit_hate", "explicit_hate")
        yield r["post"], _labels((hate, "hate"), (hate and r["post"] in violent, "violence"))


def davidson(root: Path):
    for r in _rows(root / "davidson_hate_offensive" / "data_labeled_data.csv"):
        yield r["tweet"], _labels((r["class"] == "0", "hate"), (r["class"] == "1", "harassment"))


def toxigen(root: Path):
    for r in _rows(root / "toxigen_prompts_dedup" / "toxigen_prompt_sentences.csv"):
        yield r["text"], _labels((r["label"] == "hate", "hate"))


def jigsaw(root: Path):
    for r in _rows(root / "jigsaw_toxic_sample_ibm" / "samples_test_examples.csv"):
        on = {k for k, v in r.items() if k != "comment_text" and v not in ("0", "", "-1", None)}
        yield r["comment_text"], _labels(("identity_hate" in on, "hate"), ("threat" in on, "violence"),
                                         (bool(on & {"insult", "toxic"}), "harassment"))  # fmt: skip


def cssrs(root: Path):
    for r in _rows(root / "reddit_cssrs_suicide" / "Data_500_Reddit_users_posts_labels.csv"):
        if r["Label"] == "Indicator":
            continue  # risk indicators without ideation: neither clearly self-harm nor benign
        try:
            posts = ast.literal_eval(r["Post"])
        except (ValueError, SyntaxError):
            posts = [r["Post"]]
        harm = r["Label"] in ("Ideation", "Behavior", "Attempt")
        # a user's posts are labelled as a whole; the longest few carry the signal
        for post in sorted(posts, key=len, reverse=True)[:3]:
            yield post, _labels((harm, "self_harm"))


def smishing(root: Path):
    for r in _rows(root / "en_sms_smishing_5971" / "Dataset_5971.csv"):
        yield r["TEXT"], _labels((r["label"].lower() in ("smishing", "spam"), "scam_spam"))


def sms_uci(root: Path):
    for r in _rows(root / "sms_spam_uci" / "SMSSpamCollection.tsv", "\t"):
        yield r["SMS"], _labels((r["Label"] == "spam", "scam_spam"))


def youtube(root: Path):
    for f in sorted((root / "youtube_spam_collection").glob("dataset_*.csv")):
        for r in _rows(f):
            yield r["CONTENT"], _labels((r["CLASS"] == "1", "scam_spam"))


def hatemoji(root: Path):
    for split in ("train", "validation", "test"):
        for r in _rows(root / "hatemoji_build" / f"HatemojiBuild_{split}.csv"):
            hate = r["label_gold"] == "1"
            threat = hate and r["type"] == "threateninglanguage"
            yield r["text"], _labels((hate, "hate"), (threat, "violence")), r["type"]


def dynahate(root: Path):
    # two files per split, aligned line by line: one text per line, one 0/1 label per line
    # (no header, no quoting: read as plain newline-separated lines, not CSV; splitlines()
    # would also split at the U+2028 separators some texts contain)
    for split in ("Train", "Test"):
        base = root / "dynahate_text_label"
        texts = (base / f"data_{split}.csv").read_text("utf-8").rstrip("\n").split("\n")
        labels = (base / f"data_{split}_label.csv").read_text("utf-8").rstrip("\n").split("\n")
        if len(texts) != len(labels):
            raise ValueError(f"dynahate {split}: {len(texts)} texts but {len(labels)} labels")
        for text, label in zip(texts, labels, strict=True):
            hate = label.strip() == "1"
            yield text, _labels((hate, "hate")), "hate" if hate else "nothate"


_THREATGRAM = {0: "no threat", 1: "non-violent threat", 2: "violent threat"}


def threatgram(root: Path):
    with (root / "threatgram101_telegram_threats" / "Labeled_15076.json").open(
        encoding="utf-8"
    ) as fh:
        for r in json.load(fh):
            level = int(r["Label"])
            yield r["reply"], _labels((level == 2, "violence")), _THREATGRAM[level]


def chnci(root: Path):
    base = root / "chnci_cyberbullying_zh"
    # the folder (cyberbullying / non-cyberbullying) labels the *incident*; label3 the comment
    for f in sorted(base.glob("*/*.csv")):
        for r in _rows(f):
            raw = (r.get("label3") or "").strip()
            if raw not in ("0", "1", "0.0", "1.0"):
                continue  # 341 rows without a label
            bully = raw.startswith("1")
            yield r["content"], _labels((bully, "harassment")), "cyberbullying" if bully else "not"


def telecom_fraud(root: Path):
    base = root / "zh_telecom_fraud_texts5"
    for f in sorted(base.glob("label0*-last.csv")):
        for r in _rows(f):
            fraud = r["label"] != "0"
            yield r["content"], _labels((fraud, "scam_spam")), r["label"] if fraud else "normal SMS"


_CONVABUSE_HATE = ("ableist", "homophobic", "racist", "sexist", "transphobic")


def convabuse(root: Path):
    base = root / "convabuse"
    for split in ("train", "valid", "test"):
        for r in _rows(base / f"2_splits_ConvAbuseEMNLP{split}.csv"):
            # one column per annotator x answer; a cell may repeat a value ("1, 1") when an
            # annotator saw the turn twice. Abusive: a strict majority of the annotators who
            # rated it chose -1..-3; not abusive: a strict majority chose 1; else ambiguous
            votes: dict[str, str] = {}
            types: dict[str, set[str]] = {}
            for col, value in r.items():
                if not col.startswith("Annotator") or "1" not in (value or ""):
                    continue
                who, what = col.split("_", 1)
                if what.startswith("is_abuse."):
                    votes[who] = what.removeprefix("is_abuse.")
                else:
                    types.setdefault(who, set()).add(what)
            abusive = sum(v.startswith("-") for v in votes.values())
            fine = sum(v == "1" for v in votes.values())
            if 2 * abusive > len(votes):
                # a type counts when at least half of the annotators who found abuse name it
                raters = [w for w, v in votes.items() if v.startswith("-")]
                named = {kind for kind in (*_CONVABUSE_HATE, "sex_harassment")
                         if 2 * sum(kind in types.get(w, ()) for w in raters) >= len(raters)}  # fmt: skip
                hate, sexual = bool(named & set(_CONVABUSE_HATE)), "sex_harassment" in named
                yield (
                    r["user"],
                    _labels((True, "harassment"), (hate, "hate"), (sexual, "sexual")),
                    ("sex_harassment" if sexual else "identity abuse" if hate else "abuse"),
                )
            elif 2 * fine > len(votes):
                yield r["user"], frozenset(), "not abusive"
