"""Evaluate every language-detection backend of service.language.

    python bench/langid_eval.py [--limit-per-cell N] [--seed 0] [--no-write]

Data: ../shared/data/eval/langid/lingua_testdata.jsonl (lingua-py test data,
13 languages x buckets word / short (word pair) / sent; see its SOURCE.txt).
Accuracy counts "und" as wrong; precision is accuracy on the answered rows.
Overall figures are over rows (micro average). texts/s is one thread, one
text per call, after a warm-up that loads each backend's models. floodgate,
floodgate-v1 and the libraries (one text per call; floodgate and v1 also through
detect_batch in batches of 128) are then timed against each other in
alternating chunks, which keeps their ratios meaningful on a machine whose load
changes from minute to minute; floodgate is also timed on refugee_surge's own
posts (the mix a worker detects: mostly Chinese, English rising), in batches of
64 as the worker sends them, against cld2 and fastText-lite on the same posts.

"floodgate-v1" is the detector as it was before the cheap first pass and the
market prior (service/language.py at commit V1_COMMIT, read from git and
loaded as a module of its own), so old and new are measured in the same run.
``--market`` picks the
prior floodgate uses (default: none given, i.e. DEFAULT_PRIOR).

The markdown tables are printed and written into docs/language.md between
the langid-eval markers.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
import types
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service.language import (  # noqa: E402
    DETECTORS,
    detect,
    detect_batch,
    get_detector,
    warm_up,
)

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "eval" / "langid" / "lingua_testdata.jsonl"
DOC = ROOT / "docs" / "language.md"
BUCKETS = ("word", "short", "sent")
START, END = "<!-- langid-eval:start -->", "<!-- langid-eval:end -->"
ALIASES = {"iw": "he", "in": "id", "jw": "jv"}
V1 = "floodgate-v1"
CHUNK, BATCH = 512, 128  # paired timing: texts per turn; detect_batch size
V1_COMMIT = "6a169b2"  # last commit of the detector before the cheap first pass


def load_v1() -> types.ModuleType:
    """The old detector, service/language.py at V1_COMMIT, as its own module."""
    source = subprocess.run(
        ["git", "show", f"{V1_COMMIT}:service/language.py"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    module = types.ModuleType("floodgate_language_v1")
    module.__file__ = f"{V1_COMMIT}:service/language.py"
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    return module


def backend(name: str, market: str | None, v1: types.ModuleType | None):
    """text -> (code, confidence) for name; floodgate's models are loaded first
    (warm_up, as the worker does at start-up), since its candidate sets vary
    and a one-text-per-language warm-up would leave some lingua models unloaded."""
    if name == V1:
        assert v1 is not None
        v1.warm_up()

        def run_v1(text: str) -> tuple[str, float]:
            r = v1.detect(text)
            return r.code, r.confidence

        return run_v1
    if name == "floodgate":
        warm_up()
    if name == "floodgate" and market is not None:

        def run_market(text: str) -> tuple[str, float]:
            r = detect(text, market=market)
            return r.code, r.confidence

        return run_market
    return get_detector(name)


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


def evaluate(run, rows: list[dict]) -> dict:
    seen = set()
    for row in rows:  # warm-up: one text per language loads the models
        if row["lang"] not in seen:
            seen.add(row["lang"])
            run(row["text"])
    t0 = time.perf_counter()
    preds = [norm(run(row["text"])[0]) for row in rows]
    return summarise(rows, preds, len(rows) / (time.perf_counter() - t0))


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


def paired_speeds(paths: dict[str, Callable[[list[str]], object]], rows: list[dict]):
    """{path: (texts/s, texts per CPU-second of this process)}, the paths timed
    on the same texts in alternating chunks (order reversed every other chunk),
    so that all of them see the same load on a shared machine."""
    texts = [row["text"] for row in rows]
    for fn in paths.values():
        fn(texts[:CHUNK])  # warm-up
    wall: dict[str, float] = defaultdict(float)
    cpu: dict[str, float] = defaultdict(float)
    names = list(paths)
    for k, i in enumerate(range(0, len(texts), CHUNK)):
        part = texts[i : i + CHUNK]
        for name in names if k % 2 == 0 else names[::-1]:
            t0, c0 = time.perf_counter(), time.process_time()
            paths[name](part)
            wall[name] += time.perf_counter() - t0
            cpu[name] += time.process_time() - c0
    return {name: (len(texts) / wall[name], len(texts) / cpu[name]) for name in names}


def surge_texts(n: int = 10_000) -> list[str]:
    """The texts of refugee_surge's posts (the replay generator, seed 1), up to ``n``."""
    from service.replay.generate import generate
    from service.replay.runner import load as load_scenario

    return [g.post["text"] for g in generate(load_scenario("refugee_surge"), 1)][:n]


def batched(fn, size: int = BATCH):
    def run(texts: list[str]) -> None:
        for i in range(0, len(texts), size):
            fn(texts[i : i + size])

    return run


def one_by_one(detector) -> Callable[[list[str]], object]:
    return lambda texts: [detector(t) for t in texts]


def library_paths(names) -> dict[str, Callable[[list[str]], object]]:
    """The libraries among ``names``, one text per call, timed beside floodgate."""
    return {name: one_by_one(get_detector(name)) for name in names if name not in ("floodgate", V1)}


def speed_paths(market: str | None, v1: types.ModuleType | None, libraries=()):
    """The timed paths: floodgate (and v1) one text per call and in batches of BATCH, and
    the libraries one text per call."""

    paths: dict[str, Callable[[list[str]], object]] = {
        "floodgate": lambda texts: [detect(t, market=market) for t in texts],
        "floodgate batch": batched(lambda b: detect_batch(b, markets=[market] * len(b))),
    }
    if v1 is not None:
        paths[V1] = lambda texts: [v1.detect(t) for t in texts]
        paths[f"{V1} batch"] = batched(v1.detect_batch)
    return paths | library_paths(libraries)


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def tables(
    results: dict[str, dict],
    rows: list[dict],
    args: argparse.Namespace,
    speeds: dict[str, tuple[float, float]],
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
    ours = [name for name in ("floodgate", V1) if name in results]
    if ours:
        langs = sorted({row["lang"] for row in rows})
        head = " | ".join(f"{name} {b}" for name in ours for b in BUCKETS)
        out += ["", f"| language | {head} |", "| --- |" + " ---: |" * (len(ours) * 3)]
        for lang in langs:
            cells = [
                pct(results[name]["acc"][f"{lang}/{b}"])
                if f"{lang}/{b}" in results[name]["acc"]
                else "-"
                for name in ours
                for b in BUCKETS
            ]
            out.append(f"| {lang} | " + " | ".join(cells) + " |")
    if speeds:
        out += [
            "",
            f"Speed of floodgate{', ' + V1 if V1 in speeds else ''} and the libraries, timed in alternating "
            f"chunks of {CHUNK} texts so that all paths see the same machine load (texts/s, "
            "and texts per CPU-second of the process in brackets):",
            "",
            "| path | one text per call | detect_batch, batches of 128 |",
            "| --- | ---: | ---: |",
        ]
        for name in ("floodgate", V1):
            if name in speeds:
                (w, c), (bw, bc) = speeds[name], speeds[f"{name} batch"]
                out.append(f"| {name} | {w:,.0f} ({c:,.0f}) | {bw:,.0f} ({bc:,.0f}) |")
        if V1 in speeds:
            ratio = [
                speeds[f"floodgate{s}"][i] / speeds[f"{V1}{s}"][i]
                for s in ("", " batch")
                for i in (0, 1)
            ]
            out.append(
                f"| floodgate / {V1} | {ratio[0]:.2f}x ({ratio[1]:.2f}x) | "
                f"{ratio[2]:.2f}x ({ratio[3]:.2f}x) |"
            )
        for name, (w, c) in speeds.items():
            if name not in ("floodgate", V1) and not name.endswith((" batch", " surge")):
                out.append(f"| {name} | {w:,.0f} ({c:,.0f}) | - |")
    out += surge_table(speeds)
    return "\n".join(out)


def surge_table(speeds: dict[str, tuple[float, float]]) -> list[str]:
    """The same paths timed on refugee_surge's posts (paths ending " surge")."""
    rows = {k.removesuffix(" surge"): v for k, v in speeds.items() if k.endswith(" surge")}
    if not rows:
        return []
    out = ["", "On refugee_surge's own posts (the texts a worker detects; floodgate in "
           "detect_batch batches of 64 as the worker sends them, the libraries one text per "
           "call), texts/s (per CPU-second of the process):", "", "| path | texts/s |",
           "| --- | ---: |"]  # fmt: skip
    out += [f"| {name} | {w:,.0f} ({c:,.0f}) |" for name, (w, c) in rows.items()]
    return out


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
        "--detectors",
        default=",".join(["floodgate", V1, *(n for n in DETECTORS if n != "floodgate")]),
        help=f"comma-separated names from DETECTORS, or {V1}",
    )
    p.add_argument("--market", default=None, help="market whose prior floodgate uses")
    p.add_argument("--no-write", action="store_true", help=f"do not update {DOC.name}")
    args = p.parse_args(argv)

    rows = load(args.data, args.limit_per_cell, args.seed)
    names = args.detectors.split(",")
    v1 = load_v1() if V1 in names else None
    results: dict[str, dict] = {}
    for name in names:
        t0 = time.perf_counter()
        results[name] = evaluate(backend(name, args.market, v1), rows)
        print(
            f"{name}: {pct(results[name]['acc']['all'])} % in {time.perf_counter() - t0:.0f} s",
            file=sys.stderr,
        )
    speeds = {}
    if "floodgate" in results:
        libraries = [n for n in results if n in ("cld2", "fasttext-lite", "lingua")]
        paths = speed_paths(args.market, v1 if V1 in results else None, libraries)
        speeds = paired_speeds(paths, rows)
        surge = {"floodgate batch": batched(detect_batch, 64)} | library_paths(
            n for n in libraries if n != "lingua"  # lingua alone: minutes on 10,000 posts
        )
        texts = [{"text": t} for t in surge_texts()]
        speeds |= {f"{k} surge": v for k, v in paired_speeds(surge, texts).items()}
    table = tables(results, rows, args, speeds)
    print(table)
    if not args.no_write:
        command = "python bench/langid_eval.py"
        if args.limit_per_cell is not None:
            command += f" --limit-per-cell {args.limit_per_cell}"
        if args.seed != 0:
            command += f" --seed {args.seed}"
        if args.market is not None:
            command += f" --market {args.market}"
        write_doc(table, command)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
