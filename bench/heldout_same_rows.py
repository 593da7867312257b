"""Held-out AUPRC of the current model on the test rows an earlier model was judged on.

Adding seed files adds rows to the test split too (it is drawn by a hash of each text), so
the held-out table of a model trained with new seeds is measured on more rows than its
predecessor's. This script restricts the current heads' test split to the sources (datasets
and seed files) that a baseline's manifest lists, so that the two models are compared on
the same rows, and prints both the restricted and the full figures per category x language.

    git show <commit>:models/heads/heads.json > /tmp/baseline_heads.json
    python bench/heldout_same_rows.py --baseline /tmp/baseline_heads.json [--json out.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from service.classifier.evaluate import _test_split, held_out, policy_thresholds
from service.classifier.heads import HEADS_DIR, TrainedHeads
from service.classifier.loader import open_embedding_cache
from service.config import get_settings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--baseline", type=Path, required=True, help="an earlier heads.json")
    ap.add_argument("--heads", type=Path, default=HEADS_DIR)
    ap.add_argument("--policy", type=Path, default=Path("policies/default.yaml"))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    known = set(json.loads(args.baseline.read_text(encoding="utf-8")).get("data", {}))
    if not known:
        raise SystemExit(f"{args.baseline}: no 'data' in the manifest; cannot tell its rows")
    cache = open_embedding_cache(get_settings())
    heads = TrainedHeads(args.heads, encoder_version=cache.version)
    t = policy_thresholds(heads, args.policy)
    every = _test_split(heads)
    same = [e for e in every if e.source in known]
    new_sources = sorted({e.source for e in every} - known)
    result = {"baseline": str(args.baseline), "rows": len(every), "same_rows": len(same),
              "sources_not_in_baseline": new_sources}  # fmt: skip
    for name, rows in (("all_rows", every), ("same_rows", same)):
        result[name] = held_out(cache, heads, rows, t=t)
    print(f"{len(same)} of {len(every)} test rows come from the baseline's sources; "
          f"new: {', '.join(new_sources) or 'none'}")  # fmt: skip
    print("| category | language | positives (same rows) | AUPRC same rows | F1 same rows | AUPRC all rows |")
    print("| --- | --- | --- | --- | --- | --- |")
    for cat, by_lang in result["same_rows"].items():
        for lang, r in by_lang.items():
            full = result["all_rows"].get(cat, {}).get(lang, {})
            print(f"| {cat} | {lang} | {r['positives']} | {r['auprc']:.3f} | {r['f1'] or 0:.3f} | "
                  f"{full.get('auprc', float('nan')):.3f} |")  # fmt: skip
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
