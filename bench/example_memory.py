"""What a policy's example memory adds (issue 15, step 6): ten examples, no retraining.

Scores come from the served scorer (`PolicyScorer.assess`: heads, then the memory) on the
served policy with `memory:` examples added to one category; a post is flagged for the
category when its score reaches the category's threshold in its language (what the rules'
category conditions test). Two measurements, each averaged over `--draws` random draws of
`--examples` examples:

  held-out    per category x language with >= 20 test positives: examples drawn from the
              calibration split's positives of that cell; precision / recall / F1 of the
              flag on the test split, without and with the memory.
  new wave    per evaluation-only dataset (real posts the heads never saw, NON-COMMERCIAL:
              measurement only, never shipped): examples drawn from the dataset's harmful
              rows; precision / recall / F1 on the rest of that dataset, and how many of the
              test split's posts not labelled with the category the memory flags besides
              (the collateral a wave's examples cost on ordinary traffic). Then per harmful
              dataset label (one fraud script, say: a wave of one kind): examples from that
              label, recall on the label's other rows.

Both at several `similarity` settings (the memory's one knob).

    python bench/example_memory.py [--examples 10] [--draws 5] [--json var/bench/memory.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from service.classification import mask_counts, prf
from service.classifier.datasets import load_eval_only, load_examples
from service.classifier.evaluate import _test_split
from service.classifier.heads import HEADS_DIR, TrainedHeads
from service.classifier.loader import open_embedding_cache
from service.classifier.scorer import PolicyScorer
from service.classifier.train import CATEGORIES, targets
from service.config import get_settings
from service.policy import load_policy
from service.policy.model import Memory

SIMILARITIES = (0.8, 0.85, 0.88, 0.92)


def _with_memory(policy, category: str, language: str, texts: list[str], similarity: float):
    cats = dict(policy.categories)
    cats[category] = cats[category].model_copy(
        update={"memory": Memory(similarity=similarity, examples={language: texts})}
    )
    return policy.model_copy(update={"categories": cats})


def _flags(cache, heads, policy, emb, langs, category) -> np.ndarray:
    scores, _ = PolicyScorer(cache, policy, heads).assess(emb, langs)
    spec = policy.categories[category]
    return np.array([s[category] >= spec.threshold_for(lang) for s, lang in zip(scores, langs, strict=True)])


def _prf(pred: np.ndarray, truth: np.ndarray) -> dict:
    return prf(*mask_counts(pred, truth), digits=4)


def _mean(rows: list[dict]) -> dict:
    keys = rows[0].keys()
    return {k: round(float(np.mean([r[k] for r in rows if r[k] is not None] or [0.0])), 4) for k in keys}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--heads", type=Path, default=HEADS_DIR)
    ap.add_argument("--policy", type=Path, default=Path("policies/default.yaml"))
    ap.add_argument("--examples", type=int, default=10)
    ap.add_argument("--draws", type=int, default=5)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    settings = get_settings()
    cache = open_embedding_cache(settings)
    heads = TrainedHeads(args.heads, encoder_version=cache.version)
    policy = load_policy(args.policy).policy
    rng = np.random.default_rng(7)

    test = _test_split(heads)
    cap = heads.manifest["settings"]["cap_per_label"] or None
    calib = [e for e in load_examples(cap_per_label=cap) if e.split == "calibration"]
    t_emb = cache.embed([e.text for e in test])
    t_lang = [e.language for e in test]
    y, m = targets(test)
    report: dict = {"examples": args.examples, "draws": args.draws, "held_out": {}, "new_wave": {}}

    print(f"held-out: {len(test)} test posts, examples from {len(calib)} calibration posts")
    for j, cat in enumerate(CATEGORIES):
        for lang in ("en", "zh"):
            cell = (np.array(t_lang) == lang) & (m[:, j] > 0)
            truth = y[cell, j] > 0
            pool = [e.text for e in calib if e.language == lang and cat in e.labels]
            if truth.sum() < 20 or len(pool) < args.examples:
                continue
            base = _flags(cache, heads, policy, t_emb[cell], [lang] * int(cell.sum()), cat)
            row = {"positives": int(truth.sum()), "without": _prf(base, truth)}
            for sim in SIMILARITIES:
                runs = []
                for _ in range(args.draws):
                    chosen = [pool[i] for i in rng.choice(len(pool), args.examples, replace=False)]
                    pol = _with_memory(policy, cat, lang, chosen, sim)
                    runs.append(_prf(_flags(cache, heads, pol, t_emb[cell], [lang] * int(cell.sum()), cat), truth))
                row[f"with@{sim}"] = _mean(runs)
            report["held_out"][f"{cat}/{lang}"] = row
            print(cat, lang, json.dumps(row))

    wave = load_eval_only()
    for name in sorted({e.source for e in wave}):
        rows = [e for e in wave if e.source == name]
        (cat,) = {c for e in rows for c in e.labels} or {None}
        if cat is None:
            continue
        lang = rows[0].language
        emb = cache.embed([e.text for e in rows])
        truth_all = np.array([cat in e.labels for e in rows])
        j = CATEGORIES.index(cat)
        others = (m[:, j] > 0) & (y[:, j] == 0)  # test posts labelled "not this category"
        base_all = _flags(cache, heads, policy, emb, [lang] * len(rows), cat)
        base_others = _flags(cache, heads, policy, t_emb[others], [t_lang[i] for i in np.flatnonzero(others)], cat)
        out = {"category": cat, "language": lang, "n": len(rows), "positives": int(truth_all.sum())}
        for sim in (None, *SIMILARITIES):
            runs, extra = [], []
            for _ in range(args.draws):
                chosen = rng.choice(np.flatnonzero(truth_all), args.examples, replace=False)
                rest = np.ones(len(rows), bool)
                rest[chosen] = False
                if sim is None:
                    runs.append(_prf(base_all[rest], truth_all[rest]))
                    continue
                pol = _with_memory(policy, cat, lang, [rows[i].text for i in chosen], sim)
                runs.append(_prf(_flags(cache, heads, pol, emb[rest], [lang] * int(rest.sum()), cat), truth_all[rest]))
                now = _flags(cache, heads, pol, t_emb[others], [t_lang[i] for i in np.flatnonzero(others)], cat)
                extra.append(int((now & ~base_others).sum()))
            key = "without" if sim is None else f"with@{sim}"
            out[key] = _mean(runs)
            if extra:
                out[key]["collateral_flags"] = float(np.mean(extra))
        out["test_negatives"] = int(others.sum())
        tags = np.array([e.tag for e in rows])
        out["by_label"] = {}
        for tag in sorted({e.tag for e in rows if cat in e.labels}):
            members = np.flatnonzero(tags == tag)
            if len(members) < 5 * args.examples:
                continue
            rec: dict = {"n": len(members), "without": float(base_all[members].mean())}
            for sim in SIMILARITIES:
                got = []
                for _ in range(args.draws):
                    chosen = rng.choice(members, args.examples, replace=False)
                    rest = np.setdiff1d(members, chosen)
                    pol = _with_memory(policy, cat, lang, [rows[i].text for i in chosen], sim)
                    got.append(float(_flags(cache, heads, pol, emb[rest], [lang] * len(rest), cat).mean()))
                rec[f"with@{sim}"] = round(float(np.mean(got)), 4)
            out["by_label"][tag] = rec
        report["new_wave"][name] = out
        print(name, json.dumps(out))

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n", "utf-8")


if __name__ == "__main__":
    main()
