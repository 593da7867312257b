"""The hand-written labeled seed examples (seeds/labeled/*.yaml): schema, counts, labels, scripts.

Pure and fast: reads YAML, counts characters, and runs the rule-based part of the language
detector on Chinese examples (Han text needs no model). See seeds/labeled/README.md.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from functools import cache
from pathlib import Path

import pytest
import yaml

from service.language import detect

REPO = Path(__file__).resolve().parents[1]
LABELED = REPO / "seeds" / "labeled"
CORPUS = REPO / "seeds" / "corpus"

HARMFUL = frozenset(
    {"hate", "harassment", "sexual", "violence", "self_harm", "drugs", "gambling", "scam_spam"}
)
CATEGORIES = HARMFUL | {"benign"}
LANGUAGES = frozenset({"en", "zh", "mixed"})

MIN_HARMFUL = 80
MIN_BENIGN = 120

# The files the project asked for; more may be added, and they are checked the same way.
REQUIRED = {
    "gambling.en",
    "gambling.zh",
    "drugs.en",
    "drugs.zh",
    "sexual.en",
    "sexual.zh",
    "scam_spam.en",
    "scam_spam.zh",
    "self_harm.zh",
    "violence.zh",
    "benign_hard.en",
    "benign_hard.zh",
    "benign.en",
    "benign.zh",
    # real-platform Chinese abuse and spam (issue 15)
    "harassment.zh",
    "scam_spam_platform.zh",
    "sexual_platform.zh",
    "gambling_platform.zh",
    "benign_platform.zh",
    # more platform abuse, spam and their hard negatives (issue 15, step 2)
    "harassment_platform.zh",
    "benign_banter.zh",
    "harassment.en",
    "benign_banter.en",
    "sexual_vulgar.zh",
    "scam_spam_blackmarket.zh",
    "benign_commerce.zh",
}

_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ffff]")
_LATIN = re.compile(r"[A-Za-z\u00c0-\u024f]")
_HAN_WEIGHT = 2.5  # as in service.language: one Han character ~ 2.5 Latin letters


def _files() -> list[Path]:
    # candidates/: written and checked like the rest, not trained on (README "Candidates")
    return sorted(LABELED.glob("*.yaml")) + sorted((LABELED / "candidates").glob("*.yaml"))


def _is_candidate(path: Path) -> bool:
    return path.parent.name == "candidates"


def _least(path: Path) -> int:
    """Mixed and Traditional examples a file needs: 5, or 1 in a small candidate file."""
    return 1 if _is_candidate(path) and len(_load(path)["examples"]) < MIN_HARMFUL else 5


@cache
def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _examples(path: Path) -> list[tuple[str, list[str]]]:
    """(text, effective labels) for every example of a file."""
    data = _load(path)
    default = [] if data["category"] == "benign" else [data["category"]]
    out = []
    for ex in data["examples"]:
        if isinstance(ex, str):
            out.append((ex, default))
        else:
            out.append((ex["text"], list(ex.get("labels", default))))
    return out


def _norm(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def _counts(text: str) -> tuple[int, int]:
    n = unicodedata.normalize("NFKC", text)
    return len(_HAN.findall(n)), len(_LATIN.findall(n))


def _is_mixed(text: str) -> bool:
    han, latin = _counts(text)
    return han >= 2 and latin >= 5


FILES = _files()
IDS = [p.stem for p in FILES]
ZH_FILES = [p for p in FILES if _load(p)["language"] == "zh"]


def test_required_files_present():
    assert {p.stem for p in FILES} >= REQUIRED, sorted(REQUIRED - {p.stem for p in FILES})
    assert (LABELED / "README.md").is_file()


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_schema(path: Path):
    data = _load(path)
    assert isinstance(data, dict)
    assert set(data) == {"language", "category", "source", "examples"}, sorted(data)
    assert data["language"] in LANGUAGES
    assert data["category"] in CATEGORIES
    assert isinstance(data["source"], str) and data["source"].startswith(
        "written for Floodgate (seeds/labeled)"
    )
    # file name: <group>.<language>.yaml, where the group is the category, or the category
    # and a theme after an underscore (scam_spam_platform, benign_hard)
    group, lang = path.stem.rsplit(".", 1)
    assert lang == data["language"]
    assert group == data["category"] or group.startswith(data["category"] + "_"), path.name
    assert isinstance(data["examples"], list) and data["examples"]
    for ex in data["examples"]:
        if isinstance(ex, str):
            assert ex.strip() == ex and ex, repr(ex)
            continue
        assert isinstance(ex, dict), repr(ex)
        assert set(ex) <= {"text", "labels"} and "text" in ex, repr(ex)
        assert isinstance(ex["text"], str) and ex["text"].strip() == ex["text"] and ex["text"]
        if "labels" in ex:
            assert isinstance(ex["labels"], list), repr(ex)


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_minimum_counts(path: Path):
    n = len(_load(path)["examples"])
    minimum = MIN_BENIGN if _load(path)["category"] == "benign" else MIN_HARMFUL
    if _is_candidate(path):  # a candidate may be a small addition to an existing file
        minimum = 20
    assert n >= minimum, f"{path.name}: {n} < {minimum}"


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_labels_valid(path: Path):
    category = _load(path)["category"]
    for text, labels in _examples(path):
        assert len(set(labels)) == len(labels), text
        assert set(labels) <= HARMFUL, (text, labels)  # "benign" is the empty list, not a label
        if category == "benign":
            assert labels == [], (text, labels)
        else:
            assert category in labels, (text, labels)


def test_no_duplicate_texts_within_or_across_files():
    seen: dict[str, str] = {}
    dups = []
    for path in FILES:
        for text, _ in _examples(path):
            key = _norm(text)
            if key in seen:
                dups.append((seen[key], path.name, text))
            else:
                seen[key] = path.name
    assert not dups, dups[:10]


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_script_matches_language(path: Path):
    lang = _load(path)["language"]
    if lang == "mixed":
        return
    dominant = 0
    for text, _ in _examples(path):
        han, latin = _counts(text)
        if lang == "zh":
            assert han >= 1, f"zh example without Han characters: {text!r}"
            dominant += han * _HAN_WEIGHT >= latin
        else:
            assert latin >= 3, f"en example without Latin letters: {text!r}"
            dominant += latin > han * _HAN_WEIGHT
    share = dominant / len(_examples(path))
    assert share >= 0.85, f"{path.name}: only {share:.0%} of examples are mostly {lang} script"


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_some_mixed_examples(path: Path):
    examples = _examples(path)
    mixed = sum(_is_mixed(t) for t, _ in examples)
    assert mixed >= _least(path), f"{path.name}: {mixed} mixed Chinese+English examples"
    assert mixed / len(examples) <= 0.25, f"{path.name}: too many mixed examples ({mixed})"


@pytest.mark.parametrize("path", ZH_FILES, ids=[p.stem for p in ZH_FILES])
def test_zh_files_have_traditional_examples(path: Path):
    examples = _examples(path)
    # only examples without Latin letters: their script is decided by rules (no lingua model)
    hant = [t for t, _ in examples if not _counts(t)[1] and detect(t).script == "Hant"]
    assert len(hant) >= _least(path), f"{path.name}: {len(hant)} Traditional examples"
    assert len(hant) / len(examples) <= 0.3, f"{path.name}: Simplified should dominate"


def test_detector_agrees_on_sample_traditional_and_english():
    # a few fixed examples, to catch the files drifting from what the detector reads
    assert detect("這部《賭神》真的百看不厭，周潤發太帥").script == "Hant"
    assert detect("又傷害自己了，停不下來").script == "Hant"
    assert detect("请问附近的药店几点关门？孩子发烧了急需退烧药").script == "Hans"


def _corpus_templates() -> list[tuple[re.Pattern[str], int]]:
    """Corpus templates as (pattern, fixed characters): {slot} -> anything; tiny ones skipped."""
    found: list[str] = []

    def walk(node):
        if isinstance(node, str):
            found.append(node)
        elif isinstance(node, list):
            for x in node:
                walk(x)
        elif isinstance(node, dict):
            for x in node.values():
                walk(x)

    for path in sorted(CORPUS.glob("*.yaml")):
        walk((yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("kinds", {}))
    patterns = []
    for tpl in found:
        parts = re.split(r"\{[A-Za-z_][A-Za-z0-9_]*\}", _norm(tpl))
        fixed = len("".join(parts).replace(" ", ""))
        if fixed < 6:
            continue
        pattern = re.compile(".*".join(re.escape(p) for p in parts), re.DOTALL)
        patterns.append((pattern, fixed))
    return patterns


@pytest.mark.skipif(not CORPUS.is_dir(), reason="no seeds/corpus")
def test_no_example_is_a_corpus_template():
    """The load-test corpus is what the replay's quality report measures: keep it out of training."""
    patterns = _corpus_templates()
    hits = []
    for path in FILES:
        for text, _ in _examples(path):
            key = _norm(text)
            size = len(key.replace(" ", ""))
            # a hit: the example is an instance of a template whose fixed text is at least half
            # of it (so "hello from {place}" does not claim every long post starting that way)
            if any(p.fullmatch(key) and 2 * fixed >= size for p, fixed in patterns):
                hits.append((path.name, text))
    assert not hits, hits[:10]


def test_training_leaves_the_candidates_out():
    from service.classifier.datasets import _seed_examples

    candidates = [p for p in FILES if _is_candidate(p)]
    assert candidates, "the candidates' checks below would check nothing"
    trained = {_norm(e.text) for e in _seed_examples(LABELED)}
    assert not {_norm(t) for p in candidates for t, _ in _examples(p)} & trained
    assert {_norm(t) for p in FILES if not _is_candidate(p) for t, _ in _examples(p)} <= trained
    # asked for (`--with-candidates`), they come too, named as candidates
    asked = [e for e in _seed_examples(LABELED, candidates=True) if _norm(e.text) not in trained]
    assert {e.source for e in asked} == {f"seeds/candidates/{p.stem}" for p in candidates}


def test_readme_counts_match():
    readme = (LABELED / "README.md").read_text(encoding="utf-8")
    counts = Counter({p.name: len(_load(p)["examples"]) for p in FILES})
    for name, n in counts.items():
        assert re.search(rf"`{re.escape(name)}`\s*\|\s*[^|]*\|\s*[^|]*\|\s*{n}\s*\|", readme), (
            f"README.md should list {name} with {n} examples"
        )


# --------------------------------------------------------------------------- no overlap with
# evaluation data: the functional suites (eval/) and the evaluation-only (NON-COMMERCIAL)
# datasets are what the model is measured on; a seed copied from them would inflate it.

SHARED = REPO.parent / "shared" / "data"
# a shared run of this many tokens (Han characters, or words) is a copy, not a coincidence
WINDOW = 12
_TOKEN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]|[^\W_]+")


def _tokens(text: str) -> tuple[str, ...]:
    return tuple(_TOKEN.findall(_norm(text)))


def _evaluation_texts() -> list[str]:
    import csv

    texts: list[str] = []
    suites = {"hatecheck/test_suite_cases.csv": "test_case",
              "mhc_mandarin/hatecheck_cases_final_mandarin.csv": "test_case",
              "xstest/xstest_prompts.csv": "prompt"}  # fmt: skip
    for rel, col in suites.items():
        with (SHARED / "eval" / rel).open(encoding="utf-8-sig", newline="") as fh:
            texts += [r[col] for r in csv.DictReader(fh)]
    from service.classifier.datasets import SHARED_TRAIN, SOURCES

    for src in SOURCES:
        if src.eval_only:
            texts += [t for t, _, _ in src.rows(SHARED_TRAIN)]
    return texts


@pytest.mark.skipif(not (SHARED / "eval").is_dir() or not (SHARED / "train").is_dir(),
                    reason="../shared/data is not here")  # fmt: skip
def test_no_example_copies_evaluation_data():
    """No seed equals, or shares a run of 12 Han characters or words with, a HateCheck / MHC /
    XSTest case or a row of the evaluation-only datasets (CHNCI, the fraud texts, DynaHate)."""
    seeds = {_tokens(t): (p.name, t) for p in FILES for t, _ in _examples(p)}
    windows: dict[tuple[str, ...], tuple[str, ...]] = {}
    for key in seeds:
        for i in range(len(key) - WINDOW + 1):
            windows.setdefault(key[i : i + WINDOW], key)
    hits = []
    for text in _evaluation_texts():
        key = _tokens(text)
        if key in seeds:
            hits.append((seeds[key], text))
            continue
        for i in range(len(key) - WINDOW + 1):
            if key[i : i + WINDOW] in windows:
                hits.append((seeds[windows[key[i : i + WINDOW]]], text))
                break
    assert not hits, hits[:10]
