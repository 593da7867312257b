"""What the decide path does with the replay corpus's posts: false flags on the harmless kinds,
recall on the harmful ones, per language x kind, without running a replay.

The replay's corpus (seeds/corpus) holds templates of what the influx posts: greetings,
everyday posts, pets, brand ads, ... and the harmful kinds. This renders ``--per-template``
posts from every template (slots filled by a seeded generator), scores them through the
same path as a backtest (language detection, embeddings, heads, the policy's thresholds per
language) and prints, per language x kind:

* harmless kinds: the share of posts on which some harmful category reaches its threshold
  (``flagged``), and which categories did it;
* harmful kinds: the share on which one of the kind's own categories reaches its threshold.

The corpus was written for the replay, before and apart from the labelled seeds, so it is an
independent check of the model on scenario-shaped traffic, not of its training data.

    python bench/scenario_flags.py [--languages en,zh-Hans] [--per-template 3] [--heads DIR] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import random
from collections import Counter
from pathlib import Path

from service.backtest.data import LabeledPost
from service.backtest.metrics import fired_categories
from service.backtest.scoring import score_posts
from service.classifier.heads import TrainedHeads
from service.classifier.loader import load_heads, open_embedding_cache
from service.config import REPO_ROOT, get_settings
from service.policy import load_policy
from service.replay.corpus import load_corpus
from service.replay.kinds import KIND_CATEGORIES

CORPUS = REPO_ROOT / "seeds" / "corpus"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--languages", default="en,zh-Hans,zh-Hant,mixed")
    ap.add_argument("--per-template", type=int, default=3)
    ap.add_argument("--policy", type=Path, default=REPO_ROOT / "policies" / "default.yaml")
    ap.add_argument("--heads", type=Path, default=None, help="heads directory (default: served)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    corpus = load_corpus(CORPUS)
    rng = random.Random(args.seed)
    wanted = args.languages.split(",")
    posts, kinds = [], []
    for (language, kind), templates in sorted(corpus.by_kind.items()):
        if language not in wanted:
            continue
        for template in templates:
            for _ in range(args.per_template):
                truth = tuple(sorted(KIND_CATEGORIES.get(kind, ())))
                posts.append(LabeledPost(template.render(rng), truth, source=template.id))
                kinds.append((language, kind))

    cache = open_embedding_cache(get_settings())
    lp = load_policy(args.policy)
    heads = (TrainedHeads(args.heads, encoder_version=cache.version) if args.heads is not None
             else load_heads(get_settings(), cache.version))  # fmt: skip
    scored = score_posts(posts, lp, cache, progress=False, heads=heads)

    table: dict[str, dict] = {}
    for (language, kind), sp, over in zip(kinds, scored, fired_categories(scored, lp), strict=True):
        row = table.setdefault(f"{language} {kind}", {"n": 0, "hit": 0, "by": Counter(),
                                                      "harmful": bool(sp.post.labels)})  # fmt: skip
        row["n"] += 1
        if sp.post.labels:
            row["hit"] += bool(over & set(sp.post.labels))
        else:
            row["hit"] += bool(over)
            row["by"].update(over)
    print("| language | kind | posts | false flags (harmless) / recall (harmful) | categories that flagged harmless posts |")
    print("| --- | --- | --- | --- | --- |")
    totals = Counter()
    for key, row in table.items():
        language, kind = key.split(" ", 1)
        share = row["hit"] / row["n"]
        what = "recall" if row["harmful"] else "false flags"
        by = ", ".join(f"{c} {n}" for c, n in row["by"].most_common())
        print(f"| {language} | {kind} | {row['n']} | {what} {share:.1%} | {by} |")
        if not row["harmful"]:
            totals[(language, "n")] += row["n"]
            totals[(language, "hit")] += row["hit"]
    print()
    for language in wanted:
        if totals[(language, "n")]:
            print(f"{language}: false flags on harmless kinds {totals[(language, 'hit')]} / "
                  f"{totals[(language, 'n')]} = {totals[(language, 'hit')] / totals[(language, 'n')]:.1%}")  # fmt: skip
    if args.json:
        out = {k: {**v, "by": dict(v["by"])} for k, v in table.items()}
        args.json.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
