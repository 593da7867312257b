"""`floodgate model eval`: the trained heads on held-out data and on functional test suites.

* held-out: the test split of the training data (never seen in training or calibration):
  AUPRC, F1 at the chosen threshold and expected calibration error, per category x language;
* HateCheck (en): accuracy overall and per functionality, beside Perspective's per-case
  predictions shipped with the suite; a case counts as "hateful" when the hate score
  reaches the hate threshold;
* MHC, the Mandarin HateCheck: accuracy overall and per functionality;
* XSTest: the share of its 250 safe prompts that any harmful category flags (false flags),
  and for reference the share of its unsafe prompts flagged;
* transfer to real posts: the evaluation-only (NON-COMMERCIAL) datasets, never trained on -
  real Chinese platform comments (CHNCI, harassment), Chinese fraud texts (scam_spam),
  DynaHate (hate) - accuracy and F1 per label at the policy's thresholds, and the accuracy
  on every dataset label (e.g. each fraud script) - see `transfer`.

None of these suites is used for training. Results go to models/heads/eval.json and the
tables (card.py) into models/README.md (between the EVAL markers).
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from service.classification import f1, mask_counts, prf
from service.classifier.card import write_tables
from service.classifier.datasets import (
    CATEGORIES,
    SOURCES,
    load_eval_only,
    load_examples,
    trained_examples,
)
from service.classifier.heads import HEADS_DIR, TrainedHeads
from service.classifier.lexicon import LEXICON_MIN_SCORE
from service.classifier.train import (
    LANGUAGES,
    OUTPUTS,
    average_precision,
    split_metrics,
    targets,
)
from service.config import REPO_ROOT

SHARED_EVAL = REPO_ROOT.parent / "shared" / "data" / "eval"
CARD = REPO_ROOT / "models" / "README.md"


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8-sig", newline="") as fh:
        return list(csv.DictReader(fh))


@dataclass(frozen=True)
class Thresholds:
    """The thresholds a model is judged at: per output, and per language where the policy
    sets its own (``policy_thresholds``)."""

    overall: dict[str, float]
    by_language: dict[str, dict[str, float]] = field(default_factory=dict)

    @classmethod
    def of_heads(cls, heads: TrainedHeads) -> Thresholds:
        """The heads' own F1-optimal thresholds (from training), in every language."""
        return cls(dict(heads.thresholds))

    def of(self, name: str, language: str) -> float:
        return self.by_language.get(language, self.overall)[name]


def _suite(cache, heads: TrainedHeads, texts: list[str], language: str) -> np.ndarray:
    emb = cache.embed(texts, prefix="query: ")
    return heads.probabilities(emb, [language] * len(texts))


def _accuracy(cases: list[dict], predicted: list[bool]) -> dict:
    by: dict[str, list[bool]] = defaultdict(list)
    for case, pred in zip(cases, predicted, strict=True):
        by[case["functionality"]].append(pred == (case["label_gold"] == "hateful"))
    return {
        "accuracy": float(np.mean([ok for v in by.values() for ok in v])),
        "n": len(cases),
        "by_functionality": {
            k: {"accuracy": float(np.mean(v)), "n": len(v)} for k, v in sorted(by.items())
        },
    }


def hatecheck(cache, heads: TrainedHeads, t: Thresholds, root: Path = SHARED_EVAL) -> dict:
    cases = _rows(root / "hatecheck" / "test_suite_cases.csv")
    probs = _suite(cache, heads, [c["test_case"].strip() for c in cases], "en")
    hate = heads.outputs.index("hate")
    ours = _accuracy(cases, list(probs[:, hate] >= t.of("hate", "en")))
    anchors = {
        r["case_id"]: r
        for r in _rows(
            root / "hatecheck" / "anchor_predictions_acl2021" / "predictions_by_case_id.csv"
        )
    }
    with_ref = [c for c in cases if c["case_id"] in anchors]
    perspective = _accuracy(
        with_ref, [anchors[c["case_id"]]["pred_perspective"] == "hateful" for c in with_ref]
    )
    return {"floodgate": ours, "perspective": perspective}


def mhc(cache, heads: TrainedHeads, t: Thresholds, root: Path = SHARED_EVAL) -> dict:
    cases = _rows(root / "mhc_mandarin" / "hatecheck_cases_final_mandarin.csv")
    probs = _suite(cache, heads, [c["test_case"].strip() for c in cases], "zh")
    hate = heads.outputs.index("hate")
    return _accuracy(cases, list(probs[:, hate] >= t.of("hate", "zh")))


def xstest(cache, heads: TrainedHeads, t: Thresholds, root: Path = SHARED_EVAL) -> dict:
    rows = _rows(root / "xstest" / "xstest_prompts.csv")
    probs = _suite(cache, heads, [r["prompt"] for r in rows], "en")
    cols = [heads.outputs.index(c) for c in CATEGORIES]
    flagged = [
        any(probs[i, j] >= t.of(heads.outputs[j], "en") for j in cols)
        for i in range(len(rows))
    ]
    safe = [f for r, f in zip(rows, flagged, strict=True) if r["label"] == "safe"]
    unsafe = [f for r, f in zip(rows, flagged, strict=True) if r["label"] != "safe"]
    by_type: dict[str, list[bool]] = defaultdict(list)
    for r, f in zip(rows, flagged, strict=True):
        if r["label"] == "safe":
            by_type[r["type"]].append(f)
    return {
        "safe_prompts": len(safe),
        "false_flag_rate": float(np.mean(safe)),
        "unsafe_flag_rate": float(np.mean(unsafe)) if unsafe else None,
        "false_flags_by_type": {k: float(np.mean(v)) for k, v in sorted(by_type.items())},
        "false_flag_examples": [
            r["prompt"] for r, f in zip(rows, flagged, strict=True) if r["label"] == "safe" and f
        ][:15],  # fmt: skip
    }


def _test_split(heads: TrainedHeads) -> list:
    """The heads' own test split: the sources, row budget and seed files they were trained
    with (heads trained before a source was added are judged on the data they knew)."""
    return [e for e in trained_examples(heads.manifest) if e.split == "test"]


def _f1(pred: np.ndarray, truth: np.ndarray) -> float | None:
    return f1(*mask_counts(pred, truth))


def transfer(
    cache,
    heads: TrainedHeads,
    examples: list | None = None,
    cap_per_tag: int = 1000,
    t: Thresholds | None = None,
) -> dict:
    """The evaluation-only datasets (never trained on): per dataset, its category's accuracy
    and F1 of both labels (positive: the dataset's harmful label; negative: the rest) at the
    thresholds `t` (default: the heads' own), also when any harmful category counts as a
    flag; per dataset label, the share judged right and the mean score."""
    t = t or Thresholds.of_heads(heads)
    examples = examples if examples is not None else load_eval_only(cap_per_tag=cap_per_tag)
    if not examples:
        return {}
    emb = cache.embed([e.text for e in examples], prefix="query: ")
    probs = heads.probabilities(emb, [e.language for e in examples])
    probs = probs[:, [heads.outputs.index(o) for o in OUTPUTS]]
    flagged = np.stack([probs[i] >= np.array([t.of(o, e.language) for o in OUTPUTS])
                        for i, e in enumerate(examples)])  # fmt: skip
    harmful = [OUTPUTS.index(c) for c in CATEGORIES]
    covers = {src.name: src.covers for src in SOURCES}
    out: dict = {}
    for name in sorted({e.source for e in examples}):
        sel = np.array([e.source == name for e in examples])
        (cat,) = covers[name]  # each evaluation-only source labels one category
        j = OUTPUTS.index(cat)
        rows = [e for e in examples if e.source == name]
        truth = np.array([cat in e.labels for e in rows])
        # "own": the dataset's category flags the row; "any": any harmful category does
        ways = {"own": flagged[sel, j], "any": flagged[sel][:, harmful].any(1)}
        r: dict = {"category": cat, "language": rows[0].language, "n": len(rows),
                   "positives": int(truth.sum()), "auprc": average_precision(probs[sel, j], truth)}  # fmt: skip
        for way, pred in ways.items():
            pos, neg = _f1(pred, truth), _f1(~pred, ~truth)
            r[way] = {"accuracy": float((pred == truth).mean()), "f1_positive": pos,
                      "f1_negative": neg, "macro_f1": (pos + neg) / 2 if None not in (pos, neg) else None}  # fmt: skip
        tags = np.array([e.tag for e in rows])
        r["by_label"] = {
            tag: {"n": int((tags == tag).sum()), "harmful": bool(truth[tags == tag][0]),
                  "accuracy": float((ways["own"] == truth)[tags == tag].mean()),
                  "accuracy_any": float((ways["any"] == truth)[tags == tag].mean()),
                  "mean_score": float(probs[sel, j][tags == tag].mean())}
            for tag in sorted(set(tags))
        }  # fmt: skip
        out[name] = r
    return out


def _held_out_probs(cache, heads: TrainedHeads, examples: list) -> np.ndarray:
    """Probabilities in OUTPUTS order for the test split."""
    emb = cache.embed([e.text for e in examples], prefix="query: ")
    probs = heads.probabilities(emb, [e.language for e in examples])
    return probs[:, [heads.outputs.index(o) for o in OUTPUTS]]


def held_out(cache, heads: TrainedHeads, examples: list | None = None,
             probs: np.ndarray | None = None, t: Thresholds | None = None) -> dict:  # fmt: skip
    """Test-split metrics per output x language, at `t` (default: the heads' own)."""
    t = t or Thresholds.of_heads(heads)
    examples = examples if examples is not None else _test_split(heads)
    probs = probs if probs is not None else _held_out_probs(cache, heads, examples)
    y, m = targets(examples)
    langs = np.array([e.language for e in examples])
    return split_metrics(probs, y, m, langs, t.overall, t.by_language)


# (precision, max_length) besides the one the heads were trained on: the other precision the
# heads accept, no truncation at all, and a shorter truncation
SERVING_VARIANTS = (("fp32", 256), ("bf16", 256), ("fp32", 512), ("bf16", 128))


def serving_variants(cache, heads: TrainedHeads, examples: list, t: Thresholds,
                     log=print) -> dict:  # fmt: skip
    """Test-split AUPRC per category (all languages) for each encoder precision x
    truncation, with the same heads: what bf16, fp32 and truncation cost. The first entry
    is what the heads were trained on."""
    y, m = targets(examples)
    langs = np.array([e.language for e in examples])
    trained = (heads.manifest.get("encoder_precision", "fp32"), cache.max_length)
    out = {}
    for precision, max_length in [trained, *(v for v in SERVING_VARIANTS if v != trained)]:
        log(f"  {precision}, {max_length} tokens ...")
        variant = cache.variant(precision=precision, max_length=max_length)
        metrics = split_metrics(_held_out_probs(variant, heads, examples), y, m, langs,
                                t.overall, t.by_language)  # fmt: skip
        out[f"{precision}@{max_length}"] = {c: metrics[c]["all"]["auprc"] for c in metrics}
    return out


def lexicon_effect(heads: TrainedHeads, examples: list, probs: np.ndarray, policy_path: Path,
                   t: Thresholds) -> dict:  # fmt: skip
    """Per lexicon list: the model alone, the lexicon alone, and the two combined, on the
    test split (precision, recall, F1, false flags); plus the lexicon's hits on every
    negative of the uncapped test split."""
    from service.classifier import lexicon
    from service.policy import load_policy

    lp = load_policy(policy_path)
    y, m = targets(examples)
    langs = np.array([e.language for e in examples])
    capped = lexicon.folded(examples)
    everything = lexicon.folded(e for e in load_examples(cap_per_label=None) if e.split == "test")

    def hits(matcher, items: list) -> np.ndarray:
        return np.array([bool(matcher.find(*item.forms)) for item in items])

    out = {}
    for lst in lexicon.LISTS:
        matcher = lp.matchers.get(lst.name)
        if matcher is None:
            continue
        j = OUTPUTS.index(lst.category)
        hit, score = hits(matcher, capped), probs[:, j]
        model = score >= np.array([t.of(lst.category, lang) for lang in langs])
        ways = {"model": model, "lexicon": hit, "model or lexicon": model | hit,
                "combined": model | (hit & (score >= LEXICON_MIN_SCORE))}  # fmt: skip
        rows = {}
        for lang in ("zh", "all"):
            keep = (m[:, j] > 0) & ((langs == lang) if lang != "all" else True)
            truth = y[keep, j] > 0
            rows[lang] = {"n": int(keep.sum()), "positives": int(truth.sum())}
            for name, flagged in ways.items():
                f = flagged[keep]
                tp, fp, fn = mask_counts(f, truth)
                rows[lang][name] = {**prf(tp, fp, fn), "false_flags": fp}
        negatives = [f for f in everything if lexicon._is_negative(f.example, lst.category)]
        out[lst.name] = {"category": lst.category, "splits": rows,
                         "uncapped_negatives": len(negatives),
                         "uncapped_negative_hits": int(hits(matcher, negatives).sum())}  # fmt: skip
    return out


def policy_thresholds(heads: TrainedHeads, policy_path: Path) -> Thresholds:
    """The thresholds the service applies: the policy's (per language where it sets one),
    where it names the category; the heads' own for the rest (benign)."""
    from service.policy import load_policy

    categories = load_policy(policy_path).policy.categories

    def table(language: str | None) -> dict[str, float]:
        return {name: (categories[name].threshold_for(language) if language
                       else categories[name].threshold)
                if name in categories else heads.thresholds[name]
                for name in heads.outputs}  # fmt: skip

    return Thresholds(table(None), {lang: table(lang) for lang in LANGUAGES})


def evaluate(
    cache,
    heads_dir: Path = HEADS_DIR,
    write_card: bool = True,
    log=print,
    policy_path: Path = REPO_ROOT / "policies" / "default.yaml",
    variants: bool = True,
    transfer_cap: int = 1000,
) -> dict:
    heads = TrainedHeads(heads_dir, encoder_version=cache.version)
    # judge the model at the thresholds the default policy applies (per language where it
    # sets one), not at the F1-optimal ones found in training
    t = policy_thresholds(heads, policy_path)
    log("held-out test split ...")
    examples = _test_split(heads)
    probs = _held_out_probs(cache, heads, examples)
    result = {"heads_version": heads.version, "thresholds": t.overall,
              "thresholds_by_language": t.by_language,
              "held_out": held_out(cache, heads, examples, probs, t)}  # fmt: skip
    log("lexicon rules ...")
    result["lexicon"] = lexicon_effect(heads, examples, probs, policy_path, t)
    if variants and getattr(cache, "model_dir", None) is not None:
        log("serving variants (precision x truncation) ...")
        result["serving_variants"] = serving_variants(cache, heads, examples, t, log)
    trained = heads.manifest.get("metrics", {})
    if "without_seeds" in trained:
        result["seeds_ablation"] = {"with": trained["test"], "without": trained["without_seeds"]}
    log("HateCheck ...")
    result["hatecheck"] = hatecheck(cache, heads, t)
    log("MHC (Mandarin HateCheck) ...")
    result["mhc_mandarin"] = mhc(cache, heads, t)
    log("XSTest ...")
    result["xstest"] = xstest(cache, heads, t)
    if transfer_cap:
        log("evaluation-only datasets (transfer to real posts) ...")
        result["transfer"] = transfer(cache, heads, cap_per_tag=transfer_cap, t=t)
    if "without_source" in trained:
        result["source_ablation"] = {"with": trained["test"], "without": trained["without_source"]}
    (Path(heads_dir) / "eval.json").write_text(
        json.dumps(result, indent=1, ensure_ascii=False) + "\n"
    )
    if write_card and CARD.exists():
        write_tables(result, CARD)
    return result
