"""The model card: `floodgate model eval`'s result as markdown tables, written into
models/README.md between the EVAL markers (evaluate.py measures; this module renders)."""

from __future__ import annotations

from pathlib import Path

from service.classifier.lexicon import LEXICON_MIN_SCORE


def _f(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def _held_out(result: dict) -> list[str]:
    """The test split's metrics per category x language."""
    lines = ["### Held-out test split (10 % of the training data, by text hash)", "",
             "| category | language | n | positives | AUPRC | F1 @ threshold | precision | recall | ECE |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for name, rows in result["held_out"].items():
        for lang, r in rows.items():
            lines.append(f"| {name} | {lang} | {r['n']} | {r['positives']} | {_f(r['auprc'])} | "
                         f"{_f(r['f1'])} @ {r.get('threshold', result['thresholds'][name]):.2f} | {_f(r['precision'])} | "
                         f"{_f(r['recall'])} | {_f(r['ece'])} |")  # fmt: skip
    return lines


def _seeds_ablation(result: dict) -> list[str]:
    """AUPRC with and without the hand-written seeds."""
    lines: list[str] = []
    lines += ["", "### What the hand-written seeds add (same test split, AUPRC)", "",
              "| category | language | public data + seeds | public data only |",
              "| --- | --- | --- | --- |"]  # fmt: skip
    with_, without = result["seeds_ablation"]["with"], result["seeds_ablation"]["without"]
    for name, rows in with_.items():
        for lang, r in rows.items():
            other = without.get(name, {}).get(lang, {}).get("auprc")
            lines.append(f"| {name} | {lang} | {_f(r['auprc'])} | {_f(other)} |")
    return lines


def _source_ablation(result: dict) -> list[str]:
    """AUPRC without each data source."""
    lines: list[str] = []
    with_, without = result["source_ablation"]["with"], result["source_ablation"]["without"]
    names = list(without)
    lines += ["", "### What each data source adds (same test split, AUPRC)", "",
              "Each column: the heads trained again without that source's rows (training and "
              "calibration), tested on the same split as the full model. A drop means the "
              "source helps that cell.", "",
              "| category | language | all sources | " + " | ".join(f"without {n}" for n in names) + " |",
              "| --- | --- | --- | " + " | ".join("---" for _ in names) + " |"]  # fmt: skip
    for cat, rows in with_.items():
        for lang, r in rows.items():
            cells = [_f(without[n].get(cat, {}).get(lang, {}).get("auprc")) for n in names]
            lines.append(f"| {cat} | {lang} | {_f(r['auprc'])} | " + " | ".join(cells) + " |")
    return lines


def _serving_variants(result: dict) -> list[str]:
    """The heads on embeddings of other precisions and truncations."""
    lines: list[str] = []
    sv = result["serving_variants"]
    names = list(sv)
    lines += ["", "### Serving variants: encoder precision x truncation (test split, AUPRC)",
              "", f"The same heads on embeddings computed four ways; the first column is what "
              f"they were trained on ({names[0]}). The worker serves bf16 at 256 tokens where "
              "the CPU has bf16 units, else fp32.",
              "", "| category | " + " | ".join(names) + " |",
              "| --- | " + " | ".join("---" for _ in names) + " |"]  # fmt: skip
    for cat in sv[names[0]]:
        lines.append(f"| {cat} | " + " | ".join(_f(sv[n][cat]) for n in names) + " |")
    ref = sv[names[0]]
    lines.append("| largest loss vs " + names[0] + " | " + " | ".join(
        _f(max(ref[c] - sv[n][c] for c in ref if ref[c] is not None)) for n in names) + " |")
    return lines


def _lexicon(result: dict) -> list[str]:
    """The model, the lexicon, and both combined."""
    lines: list[str] = []
    lines += ["", "### What the lexicon adds (test split)", "",
              "Keyword lists selected from the Sensitive-lexicon by `floodgate model lexicon`. "
              f"*combined* = model, or a lexicon hit with the category's score >= "
              f"{LEXICON_MIN_SCORE} (the default policy's lexicon rules). Cells: F1 "
              "(precision / recall), and false flags.", "",
              "| list | category | language | n | positives | model | lexicon | model or lexicon "
              "| combined |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip

    def cell(r: dict) -> str:
        return f"{_f(r['f1'])} ({_f(r['precision'])} / {_f(r['recall'])}), {r['false_flags']} ff"

    for name, lx in result["lexicon"].items():
        for lang, r in lx["splits"].items():
            lines.append(f"| {name} | {lx['category']} | {lang} | {r['n']} | {r['positives']} | "
                         + " | ".join(cell(r[w]) for w in ("model", "lexicon", "model or lexicon",
                                                           "combined")) + " |")  # fmt: skip
    lines += ["", "Lexicon hits on every negative of the uncapped test split: " + "; ".join(
        f"{n} {lx['uncapped_negative_hits']} of {lx['uncapped_negatives']:,}"
        for n, lx in result["lexicon"].items()) + "."]
    return lines


def _suites(result: dict) -> list[str]:
    """HateCheck, MHC and XSTest."""
    lines: list[str] = []
    hc = result["hatecheck"]
    lines += ["", "### HateCheck (English functional tests)", "",
              f"Accuracy: **{hc['floodgate']['accuracy']:.3f}** (Perspective on the same cases: "
              f"{hc['perspective']['accuracy']:.3f}; target >= 0.85).", "",
              "| functionality | n | Floodgate | Perspective |", "| --- | --- | --- | --- |"]  # fmt: skip
    for k, v in hc["floodgate"]["by_functionality"].items():
        p = hc["perspective"]["by_functionality"].get(k, {}).get("accuracy")
        lines.append(f"| {k} | {v['n']} | {v['accuracy']:.3f} | {_f(p)} |")
    mhc_r = result["mhc_mandarin"]
    lines += ["", "### MHC, Mandarin HateCheck", "",
              f"Accuracy: **{mhc_r['accuracy']:.3f}** (target >= 0.82).", "",
              "| functionality | n | accuracy |", "| --- | --- | --- |"]  # fmt: skip
    lines += [
        f"| {k} | {v['n']} | {v['accuracy']:.3f} |" for k, v in mhc_r["by_functionality"].items()
    ]
    xs = result["xstest"]
    lines += ["", "### XSTest (over-flagging)", "",
              f"False flags on the {xs['safe_prompts']} safe prompts: **{xs['false_flag_rate']:.1%}** "
              f"(target <= 5 %); unsafe prompts flagged: {xs['unsafe_flag_rate']:.1%}.", "",
              "| safe prompt type | false-flag rate |", "| --- | --- |"]  # fmt: skip
    lines += [f"| {k} | {v:.1%} |" for k, v in xs["false_flags_by_type"].items()]
    return lines


def _transfer(result: dict) -> list[str]:
    """The evaluation-only datasets, per dataset and per dataset label."""
    lines: list[str] = []
    tr = result["transfer"]
    lines += ["", "### Transfer to real posts: evaluation-only datasets (never trained on)", "",
              "NON-COMMERCIAL datasets, used only to measure: a deterministic sample of at most "
              "1,000 rows per dataset label. *category*: the dataset's category at the policy's "
              "threshold; *any*: any harmful category flags the post. F1 of each label "
              "(harmful / not), accuracy, and AUPRC of the category's score.", "",
              "| dataset | language | category | n | harmful | AUPRC | accuracy | F1 harmful | "
              "F1 not | macro-F1 | accuracy (any) | F1 harmful (any) | F1 not (any) |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for name, r in tr.items():
        c, a = r["own"], r["any"]
        lines.append(f"| {name} | {r['language']} | {r['category']} | {r['n']} | {r['positives']} | "
                     f"{_f(r['auprc'])} | {_f(c['accuracy'])} | {_f(c['f1_positive'])} | "
                     f"{_f(c['f1_negative'])} | {_f(c['macro_f1'])} | {_f(a['accuracy'])} | "
                     f"{_f(a['f1_positive'])} | {_f(a['f1_negative'])} |")  # fmt: skip
    lines += ["", "Per dataset label: the share judged right (harmful labels: flagged; the "
              "others: not flagged) and the mean calibrated score of the dataset's category.", "",
              "| dataset | label | harmful | n | accuracy | accuracy (any) | mean score |",
              "| --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for name, r in tr.items():
        for tag, t in r["by_label"].items():
            lines.append(f"| {name} | {tag} | {'yes' if t['harmful'] else 'no'} | {t['n']} | "
                         f"{_f(t['accuracy'])} | {_f(t['accuracy_any'])} | {_f(t['mean_score'])} |")  # fmt: skip
    return lines


def tables(result: dict) -> str:
    """The model card's tables (markdown) from `evaluate`'s result; a section whose
    measurement is not in the result is left out."""
    lines = _held_out(result)
    if "seeds_ablation" in result:
        lines += _seeds_ablation(result)
    if result.get("source_ablation"):
        lines += _source_ablation(result)
    if "serving_variants" in result:
        lines += _serving_variants(result)
    if result.get("lexicon"):
        lines += _lexicon(result)
    lines += _suites(result)
    if result.get("transfer"):
        lines += _transfer(result)
    return "\n".join(lines) + "\n"


def write_tables(result: dict, card: Path) -> None:
    text = card.read_text("utf-8")
    start, end = "<!-- EVAL:START -->", "<!-- EVAL:END -->"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        card.write_text(f"{head}{start}\n{tables(result)}{end}{tail}", "utf-8")
