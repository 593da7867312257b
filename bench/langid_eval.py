"""Evaluate every language-detection backend of service.language.

    python bench/langid_eval.py [--limit-per-cell N] [--seed 0] [--no-write]

Data: ../shared/data/eval/langid/lingua_testdata.jsonl (lingua-py test data,
13 languages x buckets word / short (word pair) / sent; see its SOURCE.txt).
Accuracy counts "und" as wrong; precision is accuracy on the answered rows.
Overall figures are over rows (micro average). texts/s is one thread, one
text per call, after a warm-up that loads each backend's models. For
"floodgate" the batched path (detect_batch, lingua's parallel call) is timed too.

The markdown tables are printed and written into docs/language.md between
the langid-eval markers.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service.language import DETECTORS, detect_batch, get_detector  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "eval" / "langid" / "lingua_testdata.jsonl"
DOC = ROOT / "docs" / "language.md"
BUCKETS = ("word", "short", "sent")
START, END = "<!-- langid-eval:start -->", "<!-- langid-eval:end -->"
ALIASES = {"iw": "he", "in": "id", "jw": "jv"}


def load(path: Path, limit_per_cell: int | None, seed: int) -> list[dict]:
    cells: dict[tuple[str, str], list[dict]] = defaultdict(list)
    with path.open(encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            cells[(row["lang"], row["bucket"])].append(row)
    rng = random.Random(seed)
    rows: list[dict] = []
    for key in sorted(cells):
        cell = cells[key]
        if limit_per_cell is not None and len(cell) > limit_per_cell:
            cell = rng.sample(cell, limit_per_cell)
        rows.extend(cell)
    return rows


def norm(code: str) -> str:
    code = (code or "und").lower().split("-")[0].split("_")[0]
    return ALIASES.get(code, code)


def evaluate(name: str, rows: list[dict]) -> dict:
    backend = get_detector(name)
    seen = set()
    for row in rows:  # warm-up: one text per language loads the models
        if row["lang"] not in seen:
            seen.add(row["lang"])
            backend(row["text"])
    t0 = time.perf_counter()
    preds = [norm(backend(row["text"])[0]) for row in rows]
    elapsed = time.perf_counter() - t0
    return summarise(rows, preds, len(rows) / elapsed)


def summarise(rows: list[dict], preds: list[str], speed: float) -> dict:
    n: dict[str, int] = defaultdict(int)
    ok: dict[str, int] = defaultdict(int)
    answered = correct_answered = und = 0
    for row, pred in zip(rows, preds, strict=True):
        right = pred == row["lang"]
        for key in (row["bucket"], "all", f"{row['lang']}/{row['bucket']}"):
            n[key] += 1
            ok[key] += right
        if pred == "und":
            und += 1
        else:
            answered += 1
            correct_answered += right
    acc = {k: ok[k] / n[k] for k in n}
    return {
        "acc": acc,
        "precision": correct_answered / answered if answered else 0.0,
        "und": und / len(rows),
        "speed": speed,
    }


def batch_speed(rows: list[dict], batch: int = 128) -> float:
    texts = [row["text"] for row in rows]
    detect_batch(texts[:batch])
    t0 = time.perf_counter()
    for i in range(0, len(texts), batch):
        detect_batch(texts[i : i + batch])
    return len(texts) / (time.perf_counter() - t0)


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def tables(
    results: dict[str, dict], rows: list[dict], args: argparse.Namespace, fg_batch: float | None
) -> str:
    cells = (
        "all rows"
        if args.limit_per_cell is None
        else f"at most {args.limit_per_cell} rows per (language, bucket), seed {args.seed}"
    )
    out = [
        f'Rows: {len(rows)} ({cells}). Accuracy in %, "und" counts as wrong; '
        "precision = accuracy on answered rows; texts/s: one thread, one text per call.",
        "",
        "| detector | word | short | sent | overall | precision | und rate | texts/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in results.items():
        a = r["acc"]
        out.append(
            f"| {name} | {pct(a['word'])} | {pct(a['short'])} | {pct(a['sent'])} | "
            f"{pct(a['all'])} | {pct(r['precision'])} | {pct(r['und'])} | {r['speed']:,.0f} |"
        )
    out += [
        "",
        "| detector | zh word | zh short | zh sent | en word | en short | en sent |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in results.items():
        a = r["acc"]
        out.append(
            f"| {name} | "
            + " | ".join(pct(a.get(f"{lang}/{b}", 0.0)) for lang in ("zh", "en") for b in BUCKETS)
            + " |"
        )
    if fg_batch is not None:
        out += [
            "",
            f"floodgate through detect_batch (batches of 128, lingua's parallel call): "
            f"{fg_batch:,.0f} texts/s.",
        ]
    return "\n".join(out)


def write_doc(table: str, command: str) -> None:
    block = f"{START}\nProduced by `{command}`.\n\n{table}\n{END}"
    text = DOC.read_text(encoding="utf-8") if DOC.exists() else "# Language detection\n\n"
    if START in text and END in text:
        head, rest = text.split(START, 1)
        tail = rest.split(END, 1)[1]
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument(
        "--limit-per-cell",
        type=int,
        default=None,
        help="subsample at most N rows per (language, bucket)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--detectors", default=",".join(DETECTORS), help="comma-separated names from DETECTORS"
    )
    p.add_argument("--no-write", action="store_true", help=f"do not update {DOC.name}")
    args = p.parse_args(argv)

    rows = load(args.data, args.limit_per_cell, args.seed)
    results: dict[str, dict] = {}
    for name in args.detectors.split(","):
        t0 = time.perf_counter()
        results[name] = evaluate(name, rows)
        print(
            f"{name}: {pct(results[name]['acc']['all'])} % in {time.perf_counter() - t0:.0f} s",
            file=sys.stderr,
        )
    fg_batch = batch_speed(rows) if "floodgate" in results else None
    table = tables(results, rows, args, fg_batch)
    print(table)
    if not args.no_write:
        command = "python bench/langid_eval.py"
        if args.limit_per_cell is not None:
            command += f" --limit-per-cell {args.limit_per_cell}"
        if args.seed != 0:
            command += f" --seed {args.seed}"
        write_doc(table, command)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
