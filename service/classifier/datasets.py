"""Training data: every dataset's labels mapped onto Floodgate's categories, in one place.

Categories: hate, harassment, sexual, violence, self_harm, drugs, gambling, scam_spam; a
post with none of them is benign. Each source says which categories it *covers*: for
those its rows are labelled positive or negative. For the others a benign row counts as
negative (a neutral Reddit comment is no drug ad either), and a harmful row is unknown
(a hateful post may also harass): the trainer masks those cells instead of guessing.

The public datasets are read from ../shared/data/train (never copied into the repo);
`seeds/labeled/` holds examples written for the project where public data is thin.
Every mapping below says why.
"""

from __future__ import annotations

import ast
import csv
import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from service.config import REPO_ROOT

CATEGORIES = (
    "hate",
    "harassment",
    "sexual",
    "violence",
    "self_harm",
    "drugs",
    "gambling",
    "scam_spam",
)
SHARED_TRAIN = REPO_ROOT.parent / "shared" / "data" / "train"
SEEDS_LABELED = REPO_ROOT / "seeds" / "labeled"

csv.field_size_limit(10_000_000)


@dataclass(frozen=True)
class Example:
    text: str
    labels: frozenset[str]
    language: str  # "en" | "zh" (the dataset's language; mixed seeds say "mixed")
    source: str
    covers: frozenset[str] = field(default=frozenset(CATEGORIES))

    @property
    def split(self) -> str:
        """Deterministic split by text: 80 % train, 10 % calibration, 10 % test."""
        bucket = int(hashlib.sha1(self.text.encode("utf-8")).hexdigest()[:8], 16) % 10
        return "calibration" if bucket == 0 else "test" if bucket == 1 else "train"


@dataclass(frozen=True)
class Source:
    name: str
    language: str
    covers: frozenset[str]
    read: Callable[[Path], Iterator[tuple[str, frozenset[str]]]]
    licence: str
    why: str


def _rows(path: Path, delimiter: str = ",") -> Iterator[dict[str, str]]:
    with path.open(encoding="utf-8-sig", newline="", errors="replace") as fh:
        yield from csv.DictReader(fh, delimiter=delimiter)


def _labels(*pairs: tuple[bool, str]) -> frozenset[str]:
    return frozenset(cat for on, cat in pairs if on)


# --------------------------------------------------------------------------- readers


def _cold(root: Path):
    for name in ("train.csv", "dev.csv"):
        for r in _rows(root / "cold" / name):
            yield r["TEXT"], _labels((r["label"] == "1", "hate"))


def _swsr(root: Path):
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


def _jade(root: Path):
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


def _cad(root: Path):
    for split in ("train", "dev", "test"):
        f = root / "cad_contextual_abuse" / f"data_reddit-abusive-comments_cad_v1_1_{split}.tsv"
        for r in _rows(f, "\t"):
            text = (r.get("text") or "").strip()
            if text and text not in ("[deleted]", "[removed]"):
                yield text, frozenset(_CAD[x] for x in r["labels"].split(",") if x in _CAD)


def _gab(root: Path):
    for split in ("train", "test"):
        for r in _rows(root / "gab_hate_corpus" / f"GabHateCorpus_Data_ghc_{split}.tsv", "\t"):
            yield r["text"], _labels((r["hd"] == "1", "hate"), (r["cv"] == "1", "violence"),
                                     (r["vo"] == "1", "harassment"))  # fmt: skip


def _implicit(root: Path):
    base = root / "implicit_hate_corpus"
    violent = {
        r["post"] for r in _rows(base / "implicit-hate-corpus_implicit_hate_v1_stg2_posts.tsv", "\t")
        if {r["implicit_class"], r.get("extra_implicit_class", "")} & {"threatening", "incitement"}
    }  # fmt: skip
    for r in _rows(base / "implicit-hate-corpus_implicit_hate_v1_stg1_posts.tsv", "\t"):
        hate = r["class"] in ("implicit_hate", "explicit_hate")
        yield r["post"], _labels((hate, "hate"), (hate and r["post"] in violent, "violence"))


def _davidson(root: Path):
    for r in _rows(root / "davidson_hate_offensive" / "data_labeled_data.csv"):
        yield r["tweet"], _labels((r["class"] == "0", "hate"), (r["class"] == "1", "harassment"))


def _toxigen(root: Path):
    for r in _rows(root / "toxigen_prompts_dedup" / "toxigen_prompt_sentences.csv"):
        yield r["text"], _labels((r["label"] == "hate", "hate"))


def _jigsaw(root: Path):
    for r in _rows(root / "jigsaw_toxic_sample_ibm" / "samples_test_examples.csv"):
        on = {k for k, v in r.items() if k != "comment_text" and v not in ("0", "", "-1", None)}
        yield r["comment_text"], _labels(("identity_hate" in on, "hate"), ("threat" in on, "violence"),
                                         (bool(on & {"insult", "toxic"}), "harassment"))  # fmt: skip


def _cssrs(root: Path):
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


def _smishing(root: Path):
    for r in _rows(root / "en_sms_smishing_5971" / "Dataset_5971.csv"):
        yield r["TEXT"], _labels((r["label"].lower() in ("smishing", "spam"), "scam_spam"))


def _sms_uci(root: Path):
    for r in _rows(root / "sms_spam_uci" / "SMSSpamCollection.tsv", "\t"):
        yield r["SMS"], _labels((r["Label"] == "spam", "scam_spam"))


def _youtube(root: Path):
    for f in sorted((root / "youtube_spam_collection").glob("dataset_*.csv")):
        for r in _rows(f):
            yield r["CONTENT"], _labels((r["CLASS"] == "1", "scam_spam"))


HATE_ONLY = frozenset({"hate"})
SOURCES: tuple[Source, ...] = (
    Source("cold", "zh", HATE_ONLY, _cold, "Apache-2.0",
           "COLD 'offensive' is about race, region and gender groups: identity-directed, i.e. hate"),
    Source("swsr", "zh", frozenset({"hate", "harassment"}), _swsr, "MIT",
           "sexism is hate against a gender; aimed at one person it is also harassment"),
    Source("jade", "zh", frozenset(), _jade, "MIT",
           "harmful questions with sub-types; only sub-types that name one of our categories are "
           "used; covers nothing (all rows are positive, none is a negative example)"),
    Source("cad", "en", frozenset({"hate", "harassment"}), _cad, "CC BY 4.0",
           "identity-directed abuse is hate; person- and affiliation-directed abuse is harassment "
           "(political affiliation is not a protected identity); neutral and counter-speech are benign"),
    Source("gab", "en", frozenset({"hate", "violence", "harassment"}), _gab, "CC BY 4.0",
           "hd (dehumanising, hate-based) is hate; cv (call for violence) is violence; vo "
           "(vulgar, offensive) is the closest we have to insult, i.e. harassment"),
    Source("implicit_hate", "en", frozenset({"hate"}), _implicit, "CC BY 4.0",
           "implicit and explicit hate are hate; stage-2 threatening / incitement posts are also violence"),
    Source("davidson", "en", frozenset({"hate", "harassment"}), _davidson, "MIT",
           "hate speech is hate; 'offensive' tweets are insults (harassment); neither is benign"),
    Source("toxigen", "en", HATE_ONLY, _toxigen, "MIT", "hate / neutral sentences about groups"),
    Source("jigsaw", "en", frozenset({"hate", "violence", "harassment"}), _jigsaw, "CC0",
           "identity_hate is hate, threat is violence, toxic and insult are harassment"),
    Source("cssrs", "en", frozenset({"self_harm"}), _cssrs, "CC BY",
           "C-SSRS ideation, behaviour and attempt are self-harm; supportive posts are benign; "
           "'indicator' is left out as ambiguous"),
    Source("smishing", "en", frozenset({"scam_spam"}), _smishing, "CC BY 4.0",
           "smishing and spam are scam_spam; ham is benign"),
    Source("sms_uci", "en", frozenset({"scam_spam"}), _sms_uci, "CC BY 4.0", "spam is scam_spam"),
    Source("youtube_spam", "en", frozenset({"scam_spam"}), _youtube, "CC BY 4.0",
           "spam comments (self-promotion, scams) are scam_spam"),
)  # fmt: skip


def _seed_examples(root: Path) -> Iterator[Example]:
    """Examples written for the project (seeds/labeled/*.yaml)."""
    for f in sorted(root.glob("**/*.yaml")):
        doc = yaml.safe_load(f.read_text("utf-8")) or {}
        category = doc.get("category", "benign")
        default = frozenset() if category == "benign" else frozenset({category})
        for item in doc.get("examples", []):
            text = item if isinstance(item, str) else item["text"]
            labels = (
                default
                if isinstance(item, str) or "labels" not in item
                else frozenset(item["labels"])
            )
            yield Example(text.strip(), labels, doc.get("language", "en"), f"seeds/{f.stem}")


def load_examples(
    root: Path = SHARED_TRAIN,
    seeds: Path | None = SEEDS_LABELED,
    cap_per_label: int | None = 3000,
    sources: tuple[str, ...] | None = None,
) -> list[Example]:
    """All examples, deduplicated by text, at most `cap_per_label` per (source, label set).

    The cap keeps the big English hate corpora from drowning the rest (and keeps the
    embedding pass affordable on a CPU); which rows are kept is deterministic.
    """
    out: list[Example] = []
    seen: set[str] = set()
    for src in SOURCES:
        if sources and src.name not in sources:
            continue
        groups: dict[frozenset[str], list[Example]] = {}
        for text, labels in src.read(root):
            text = " ".join((text or "").split())
            if len(text) < 2 or text in seen:
                continue
            seen.add(text)
            groups.setdefault(labels, []).append(
                Example(text, labels, src.language, src.name, src.covers)
            )
        for group in groups.values():
            group.sort(key=lambda e: hashlib.sha1(e.text.encode()).hexdigest())
            out += group[:cap_per_label] if cap_per_label else group
    if seeds is not None and seeds.exists() and (not sources or "seeds" in sources):
        for ex in _seed_examples(seeds):
            if ex.text and ex.text not in seen:
                seen.add(ex.text)
                out.append(ex)
    return out


def summary(examples: list[Example]) -> dict:
    """Counts per source, language and label (for the model card)."""
    table: dict = {}
    for ex in examples:
        row = table.setdefault(ex.source, {"language": ex.language, "rows": 0, "benign": 0})
        row["rows"] += 1
        if not ex.labels:
            row["benign"] += 1
        for cat in ex.labels:
            row[cat] = row.get(cat, 0) + 1
    return json.loads(json.dumps(table))
