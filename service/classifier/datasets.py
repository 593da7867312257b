"""Training data: every dataset's labels mapped onto Floodgate's categories, in one place.

Categories: hate, harassment, sexual, violence, self_harm, drugs, gambling, scam_spam; a
post with none of them is benign. Each source says which categories it *covers*: for
those its rows are labelled positive or negative. For the others a benign row counts as
negative (a neutral Reddit comment is no drug ad either), and a harmful row is unknown
(a hateful post may also harass): the trainer masks those cells instead of guessing.

Some datasets' label-free rows are *not* benign: DynaHate's and Hatemoji's "not hate"
includes abuse of non-protected targets, ThreatGram's "no threat" replies still insult. Their
sources say `unlabelled_is_benign=False`: such a row is a negative only for the categories
the source covers; its other cells, benign included, are masked.

Sources flagged NON-COMMERCIAL in their SOURCE.txt are `eval_only`: `load_examples` (the
one loader behind `model train`, `model finetune` and `model lexicon`) never returns them
and refuses to be asked for them, and the trainers refuse examples from them;
`load_eval_only` reads them for `floodgate model eval`'s transfer tables.

The public datasets are read from ../shared/data/train (never copied into the repo);
`seeds/labeled/` holds examples written for the project where public data is thin.
Every mapping below says why; `readers` reads each dataset's files.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from service.classifier import readers
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

@dataclass(frozen=True)
class Example:
    text: str
    labels: frozenset[str]
    language: str  # "en" | "zh" (the dataset's language; mixed seeds say "mixed")
    source: str
    covers: frozenset[str] = field(default=frozenset(CATEGORIES))
    # False where the source's label-free rows are "not X" rather than benign (see the
    # module doc): the trainer then masks their benign cell and uncovered categories
    unlabelled_is_benign: bool = True
    tag: str = ""  # the dataset's own label for the row (evaluation tables), "" if unused

    @property
    def benign(self) -> bool | None:
        """True: benign; False: harmful; None: unknown (no label, source does not say)."""
        if self.labels:
            return False
        return True if self.unlabelled_is_benign else None

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
    read: Callable[[Path], Iterator[tuple]]  # (text, labels) or (text, labels, tag)
    licence: str
    why: str
    unlabelled_is_benign: bool = True
    eval_only: bool = False  # NON-COMMERCIAL: measured on, never trained on (module doc)

    def rows(self, root: Path) -> Iterator[tuple[str, frozenset[str], str]]:
        """(text, labels, tag) for every row, whatever the reader yields."""
        for row in self.read(root):
            yield (row[0], row[1], row[2] if len(row) > 2 else "")


HATE_ONLY = frozenset({"hate"})
SOURCES: tuple[Source, ...] = (
    Source("cold", "zh", HATE_ONLY, readers.cold, "Apache-2.0",
           "COLD 'offensive' is about race, region and gender groups: identity-directed, i.e. hate"),
    Source("swsr", "zh", frozenset({"hate", "harassment"}), readers.swsr, "MIT",
           "sexism is hate against a gender; aimed at one person it is also harassment"),
    Source("jade", "zh", frozenset(), readers.jade, "MIT",
           "harmful questions with sub-types; only sub-types that name one of our categories are "
           "used; covers nothing (all rows are positive, none is a negative example)"),
    Source("cad", "en", frozenset({"hate", "harassment"}), readers.cad, "CC BY 4.0",
           "identity-directed abuse is hate; person- and affiliation-directed abuse is harassment "
           "(political affiliation is not a protected identity); neutral and counter-speech are benign"),
    Source("gab", "en", frozenset({"hate", "violence", "harassment"}), readers.gab, "CC BY 4.0",
           "hd (dehumanising, hate-based) is hate; cv (call for violence) is violence; vo "
           "(vulgar, offensive) is the closest we have to insult, i.e. harassment"),
    Source("implicit_hate", "en", frozenset({"hate"}), readers.implicit, "CC BY 4.0",
           "implicit and explicit hate are hate; stage-2 threatening / incitement posts are also violence"),
    Source("davidson", "en", frozenset({"hate", "harassment"}), readers.davidson, "MIT",
           "hate speech is hate; 'offensive' tweets are insults (harassment); neither is benign"),
    Source("toxigen", "en", HATE_ONLY, readers.toxigen, "MIT", "hate / neutral sentences about groups"),
    Source("jigsaw", "en", frozenset({"hate", "violence", "harassment"}), readers.jigsaw, "CC0",
           "identity_hate is hate, threat is violence, toxic and insult are harassment"),
    Source("cssrs", "en", frozenset({"self_harm"}), readers.cssrs, "CC BY",
           "C-SSRS ideation, behaviour and attempt are self-harm; supportive posts are benign; "
           "'indicator' is left out as ambiguous"),
    Source("smishing", "en", frozenset({"scam_spam"}), readers.smishing, "CC BY 4.0",
           "smishing and spam are scam_spam; ham is benign"),
    Source("sms_uci", "en", frozenset({"scam_spam"}), readers.sms_uci, "CC BY 4.0", "spam is scam_spam"),
    Source("youtube_spam", "en", frozenset({"scam_spam"}), readers.youtube, "CC BY 4.0",
           "spam comments (self-promotion, scams) are scam_spam"),
    Source("hatemoji", "en", HATE_ONLY, readers.hatemoji, "CC BY 4.0",
           "adversarial hate written against a model, each original with a minimal perturbation "
           "that usually flips the label (emoji swaps, negation, positive statements about the "
           "same group): label_gold 1 is hate, and threatening language is also violence "
           "(positive-only, as in implicit_hate). Label 0 is 'not hate', not benign: it keeps "
           "abuse of non-protected targets, so only the hate cell is a known negative",
           unlabelled_is_benign=False),
    Source("dynahate", "en", HATE_ONLY, readers.dynahate, "none stated (NON-COMMERCIAL per SOURCE.txt)",
           "DynaHate R1-R4: 1 hate / 0 nothate. 'nothate' includes counter-speech, negated hate "
           "and abuse of non-protected targets, so it is hate=0, not benign. Evaluation only: "
           "its SOURCE.txt flags it NON-COMMERCIAL (no licence from the authors)",
           unlabelled_is_benign=False, eval_only=True),
    Source("threatgram", "en", frozenset({"violence"}), readers.threatgram, "CC BY 4.0 (per the copying repo)",
           "Telegram replies with threat levels: 2 (hang them, execute them) is violence; 1 "
           "(jail, impeach, charge with treason) is a call for punishment, not violence: a hard "
           "negative for violence; 0 is no threat, but many such replies still insult. Neither "
           "1 nor 0 is benign, and whom a threat names is not labelled, so harassment and hate "
           "stay masked",
           unlabelled_is_benign=False),
    Source("chnci", "zh", frozenset({"harassment"}), readers.chnci, "none stated (NON-COMMERCIAL per SOURCE.txt)",
           "real Douyin / Weibo / Bilibili / Xiaohongshu comments on trending incidents; label3 1 "
           "(insults, mockery, pile-ons, regional jabs) is harassment; 0 is not, but the "
           "labels do not say whether a 0 is free of every other harm, so it is no benign row. "
           "Evaluation only: NON-COMMERCIAL (the repository states no licence)",
           unlabelled_is_benign=False, eval_only=True),
    Source("zh_telecom_fraud", "zh", frozenset({"scam_spam"}), readers.telecom_fraud,
           "research only + GPL-3.0 (NON-COMMERCIAL per SOURCE.txt)",
           "four fraud scripts (fake police / government, loans and credit cards, fake customer "
           "service, fake boss or relative) are scam_spam; label 0 is operators' and shops' "
           "marketing SMS: not fraud, but promotional, so it is scam_spam=0 for fraud and no "
           "benign row. Evaluation only: NON-COMMERCIAL (research use only)",
           unlabelled_is_benign=False, eval_only=True),
    Source("convabuse", "en", frozenset({"harassment", "hate", "sexual"}), readers.convabuse, "CC BY 4.0",
           "users' turns to two chatbots, rated by several annotators: a majority rating it "
           "abusive makes it harassment (aimed at the agent); sexual harassment as the type "
           "named by half of them is also sexual; sexist, racist, homophobic, transphobic or "
           "ableist abuse is also hate. A majority 'not abusive' is benign (chit-chat with a "
           "bot); ambiguous turns are left out"),
)  # fmt: skip


# seed files written but not trained on by default: read only when asked (`candidates=True`,
# `--with-candidates`), to measure them before they join the others (seeds/labeled/README.md,
# "Candidates"); their source is named "seeds/candidates/<file stem>"
CANDIDATES = "candidates"


def _seed_examples(root: Path, candidates: bool = False) -> Iterator[Example]:
    """Examples written for the project (seeds/labeled/**/*.yaml; candidates/ only if asked)."""
    for f in sorted(root.glob("**/*.yaml")):
        candidate = CANDIDATES in f.relative_to(root).parts
        if candidate and not candidates:
            continue
        name = f"seeds/{CANDIDATES}/{f.stem}" if candidate else f"seeds/{f.stem}"
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
            yield Example(text.strip(), labels, doc.get("language", "en"), name)


EVAL_ONLY = frozenset(src.name for src in SOURCES if src.eval_only)

# each source's folder under ../shared/data/train (its SOURCE.txt states the licence and, for
# the evaluation-only ones, starts with NON-COMMERCIAL; tests/test_datasets.py checks both agree)
FOLDERS = {
    "cold": "cold", "swsr": "swsr", "jade": "zh_en_jade_db", "cad": "cad_contextual_abuse",
    "gab": "gab_hate_corpus", "implicit_hate": "implicit_hate_corpus",
    "davidson": "davidson_hate_offensive", "toxigen": "toxigen_prompts_dedup",
    "jigsaw": "jigsaw_toxic_sample_ibm", "cssrs": "reddit_cssrs_suicide",
    "smishing": "en_sms_smishing_5971", "sms_uci": "sms_spam_uci",
    "youtube_spam": "youtube_spam_collection", "hatemoji": "hatemoji_build",
    "dynahate": "dynahate_text_label", "threatgram": "threatgram101_telegram_threats",
    "chnci": "chnci_cyberbullying_zh", "zh_telecom_fraud": "zh_telecom_fraud_texts5",
    "convabuse": "convabuse",
}  # fmt: skip


class EvalOnlyData(ValueError):
    """Examples from an evaluation-only (NON-COMMERCIAL) source were offered for training."""


def check_trainable(examples) -> None:
    """Raise `EvalOnlyData` if any example comes from an evaluation-only source; every
    trainer calls this on what it is given, whoever built the list."""
    bad = sorted({e.source for e in examples if e.source in EVAL_ONLY})
    if bad:
        raise EvalOnlyData(f"evaluation-only (NON-COMMERCIAL) sources may not be trained on: {bad}")


def _grouped(
    src: Source, root: Path, seen: set[str], cap: int | None, by_tag: bool
) -> list[Example]:
    """A source's rows, whitespace-normalised, deduplicated against `seen`, at most `cap` per
    label set (per dataset label with `by_tag`), the kept rows chosen by a hash of the text."""
    groups: dict[object, list[Example]] = {}
    for text, labels, tag in src.rows(root):
        text = " ".join((text or "").split())
        if len(text) < 2 or text in seen:
            continue
        seen.add(text)
        groups.setdefault(tag if by_tag else labels, []).append(
            Example(text, labels, src.language, src.name, src.covers, src.unlabelled_is_benign, tag)
        )
    out: list[Example] = []
    for group in groups.values():
        group.sort(key=lambda e: hashlib.sha1(e.text.encode()).hexdigest())
        out += group[:cap] if cap else group
    return out


# rows read per dataset x label set for training (`--cap`): measured against 4,000 and
# against sample weights in models/README.md ("More rows"); the shipped heads' budget
ROW_BUDGET = 1000


def load_examples(
    root: Path = SHARED_TRAIN,
    seeds: Path | None = SEEDS_LABELED,
    cap_per_label: int | None = ROW_BUDGET,
    sources: tuple[str, ...] | None = None,
    candidates: bool = False,
) -> list[Example]:
    """Training examples, deduplicated by text, at most `cap_per_label` per (source, label set);
    the seed files under seeds/labeled/candidates/ too if `candidates`.

    Never returns an evaluation-only source, and refuses to be asked for one (`EvalOnlyData`).
    The cap only bounds the embedding pass (a CPU affords ~100k texts); balancing between
    categories and languages is done by the trainers' sample weights (`train.sample_weights`),
    not by throwing rows away. Which rows are kept is deterministic.
    """
    if sources:
        check_trainable([Example("", frozenset(), "", name) for name in sources])
    out: list[Example] = []
    seen: set[str] = set()
    for src in SOURCES:
        if src.eval_only or (sources and src.name not in sources):
            continue
        out += _grouped(src, root, seen, cap_per_label, by_tag=False)
    if seeds is not None and seeds.exists() and (not sources or "seeds" in sources):
        for ex in _seed_examples(seeds, candidates):
            if ex.text and ex.text not in seen:
                seen.add(ex.text)
                out.append(ex)
    return out


def trained_examples(manifest: dict) -> list[Example]:
    """The examples a heads manifest says its heads were trained on: its row budget, its
    sources and seed files (a source added later is left out), candidates if it read them."""
    settings = manifest.get("settings", {})
    known = set(manifest.get("data", {}))  # sources and seed files, e.g. "seeds/benign.en"
    names = tuple(sorted({k.split("/")[0] for k in known})) or None
    examples = load_examples(cap_per_label=settings.get("cap_per_label") or None, sources=names,
                             candidates=bool(settings.get("candidates")))  # fmt: skip
    return [e for e in examples if not known or e.source in known]


def load_eval_only(
    root: Path = SHARED_TRAIN,
    cap_per_tag: int | None = 1000,
    sources: tuple[str, ...] | None = None,
) -> list[Example]:
    """Rows of the evaluation-only sources, at most `cap_per_tag` per dataset label (a
    deterministic sample by text hash), for transfer tables; never for training."""
    out: list[Example] = []
    for src in SOURCES:
        if src.eval_only and (not sources or src.name in sources):
            out += _grouped(src, root, set(), cap_per_tag, by_tag=True)
    return out


def summary(examples: list[Example]) -> dict:
    """Counts per source, language and label (for the model card)."""
    table: dict = {}
    for ex in examples:
        row = table.setdefault(ex.source, {"language": ex.language, "rows": 0, "benign": 0})
        row["rows"] += 1
        if ex.benign:
            row["benign"] += 1
        elif ex.benign is None:  # "not <covered category>", not benign (see the module doc)
            row["negative only"] = row.get("negative only", 0) + 1
        for cat in ex.labels:
            row[cat] = row.get(cat, 0) + 1
    return json.loads(json.dumps(table))
