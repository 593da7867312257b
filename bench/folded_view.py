"""Does the classifier need the policy's folding as its input view? (issue 15, step 4)

The served heads score the test split four ways, AUPRC per category x language (with the
served view switched off, so that each arm reads exactly its texts):
  clean        the texts as written
  evaded       the same texts as an evader rewrites them (below)
  evaded+view  the evaded texts through `policy.text.model_view` first
  clean+view   the clean texts through the view (what the view costs on honest posts)

The evasions, drawn per text from a generator seeded by the text's hash (deterministic):
Chinese: an emoji, a space or a dot between about 40 % of neighbouring Han characters
(repeated, as spammers do), about half the characters written Traditional (OpenCC's
table in opencc-purepy), Latin letters and digits full-width. English: one or two words
spaced out letter by letter, Latin letters of a third of the words full-width.

    python bench/folded_view.py [--heads models/heads] [--json var/bench/folded_view.json]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import random
import re
from dataclasses import replace
from pathlib import Path

from service.classifier.evaluate import _test_split, held_out
from service.classifier.heads import HEADS_DIR, TrainedHeads
from service.classifier.loader import open_embedding_cache
from service.config import get_settings
from service.policy.text import model_view

_HAN = re.compile(r"[\u4e00-\u9fff]")
EMOJI = ["😀", "🔥", "💰", "❤️", "👉", "⭐"]


def _simplified_to_traditional() -> dict[str, str]:
    spec = importlib.util.find_spec("opencc_purepy")
    table = Path(next(iter(spec.submodule_search_locations))) / "dicts" / "STCharacters.txt"
    out = {}
    for line in table.read_text("utf-8").splitlines():
        simp, _, trad = line.partition("\t")
        if len(simp) == 1 and trad.split() and len(trad.split()[0]) == 1:
            out[simp] = trad.split()[0]
    return out


S2T = _simplified_to_traditional()


def _wide(ch: str) -> str:
    return chr(ord(ch) + 0xFEE0) if "!" <= ch <= "~" else ch


def evade(text: str) -> str:
    rng = random.Random(int(hashlib.sha1(text.encode("utf-8")).hexdigest()[:8], 16))
    if len(_HAN.findall(text)) >= 2:
        sep = rng.choice([rng.choice(EMOJI), " ", "."])
        out = []
        for i, ch in enumerate(text):
            if _HAN.match(ch):
                ch = S2T.get(ch, ch) if rng.random() < 0.5 else ch
            elif ch.isascii() and ch.isalnum():
                ch = _wide(ch)
            out.append(ch)
            nxt = text[i + 1] if i + 1 < len(text) else ""
            if _HAN.match(text[i]) and _HAN.match(nxt) and rng.random() < 0.4:
                out.append(sep)
        return "".join(out)
    words = text.split(" ")
    long_words = [i for i, w in enumerate(words) if len(w) >= 4 and w.isalpha()]
    for i in rng.sample(long_words, min(len(long_words), rng.choice([1, 2]))):
        words[i] = " ".join(words[i])
    for i in range(len(words)):
        if rng.random() < 0.33:
            words[i] = "".join(_wide(c) for c in words[i])
    return " ".join(words)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--heads", type=Path, default=HEADS_DIR)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    # the texts as each arm gives them: the served cache would apply the view to all four
    settings = get_settings().model_copy(update={"input_view": False})
    cache = open_embedding_cache(settings, progress=True)
    heads = TrainedHeads(args.heads, cache.version)
    examples = _test_split(heads)
    arms = {
        "clean": examples,
        "evaded": [replace(e, text=evade(e.text)) for e in examples],
    }
    arms["evaded+view"] = [replace(e, text=model_view(e.text)) for e in arms["evaded"]]
    arms["clean+view"] = [replace(e, text=model_view(e.text)) for e in examples]
    results = {name: held_out(cache, heads, exs) for name, exs in arms.items()}
    print("| category | language | positives | " + " | ".join(arms) + " |")
    print("| --- | --- | --- | " + " | ".join("---" for _ in arms) + " |")
    for cat, by_lang in results["clean"].items():
        for lang, r in by_lang.items():
            if lang == "all" or not r.get("positives"):
                continue
            cells = [f"{results[a][cat][lang]['auprc']:.3f}" for a in arms]
            print(f"| {cat} | {lang} | {r['positives']} | " + " | ".join(cells) + " |")
    changed = sum(model_view(e.text) != e.text for e in examples)
    print(f"\nthe view changes {changed} of {len(examples)} clean test texts")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"results": results, "changed": changed}, indent=1))


if __name__ == "__main__":
    main()
