"""Labelled posts from JSONL, CSV or TSV files, for backtests and policy diffs.

``load_labeled`` reads a file with a text column and a labels column (names detected; see
``TEXT_COLUMNS`` / ``LABEL_COLUMNS``) into ``LabeledPost``s whose labels are policy category
names (``()`` for benign posts). Bad rows raise ``DataError`` naming file and line.
``DataSpec`` holds the reading options the backtest, the diff and their CLI commands share.
"""

from __future__ import annotations

import csv
import json
import random
import re
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


# Column names looked for, case-insensitively, in this order of preference.
TEXT_COLUMNS = _words(
    "text comment_text comment tweet post sentence content body message sms msg test_case"
    " document prompt question"
)
LABEL_COLUMNS = _words(
    "labels label label_gold gold_label gold categories category class is_hate hateful is_spam spam"
)
LANGUAGE_COLUMNS = ("language", "lang", "lang_hint", "locale")
MARKET_COLUMNS = ("market",)
ID_COLUMNS = ("post_id", "id", "case_id", "mhc_case_id")

# Label values meaning "no category" / "the dataset's one category" (compared after lower
# case and turning spaces and hyphens into underscores).
BENIGN = frozenset(
    _words(
        "none benign neutral ham normal 0 false no n f not_hateful non_hateful nonhateful"
        " not_hate nothate non_hate neither clean safe negative neg ok nan null not_spam"
        " non_spam not_toxic non_toxic not_offensive non_offensive none_of_the_above"
    )
) | {""}
TRUTHY = frozenset(
    _words(
        "1 true yes y t positive pos hateful spam toxic offensive abusive harmful unsafe"
        " smishing scam"
    )
)


class DataError(ValueError):
    """A labelled data file that cannot be used; the message starts with file:line."""


# --------------------------------------------------------------------------
# Loading


@dataclass(frozen=True)
class LabeledPost:
    text: str
    labels: tuple[str, ...]  # policy category names; () for a benign post
    language: str | None = None  # the file's language column: a hint, as lang_hint is
    market: str | None = None
    id: str | None = None
    raw_label: str = ""
    source: str = ""
    line: int = 0


class LabeledData(list):
    """The posts of a file; ``skipped`` lists the rows left out with ``skip_bad``."""

    def __init__(self, posts: Iterable[LabeledPost] = (), skipped: Sequence[str] = ()) -> None:
        super().__init__(posts)
        self.skipped = list(skipped)


def parse_label_map(spec: str | Mapping[str, str] | None) -> dict[str, str]:
    """``"spam=scam_spam,ham="`` (the CLI form) or a mapping -> {raw label: category or ""}."""
    if spec is None:
        return {}
    if isinstance(spec, Mapping):
        items = list(spec.items())
    else:
        items = []
        for part in filter(None, (p.strip() for p in re.split(r"[,;]", spec))):
            if "=" not in part:
                raise ValueError(f"label map entry {part!r} is not RAW=CATEGORY")
            raw, _, cat = part.partition("=")
            items.append((raw, cat))
    return {_norm(str(k)): str(v).strip() for k, v in items}


def _norm(token: str) -> str:
    return re.sub(r"[\s\-]+", "_", token.strip().strip("'\"").lower())


def _tokens(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, bool):
        return ["true" if value else "false"]
    if isinstance(value, int | float):
        return [_num(value)]
    if isinstance(value, list | tuple):
        return [t for v in value for t in _tokens(v)]
    text = str(value).strip()
    if text.startswith("[") and text.endswith("]"):  # "['a', 'b']" or '["a"]' in a CSV cell
        try:
            return _tokens(json.loads(text.replace("'", '"')))
        except ValueError:
            text = text[1:-1]
    return [_num(t) if _is_num(t) else t for t in re.split(r"[,;|]", text)]


def _is_num(t: str) -> bool:
    try:
        float(t)
    except ValueError:
        return False
    return True


def _num(v: Any) -> str:
    f = float(v)
    return str(int(f)) if f == int(f) else str(f)


def _labels(
    value: Any,
    *,
    category: str | None,
    label_map: Mapping[str, str],
    categories: frozenset[str] | None,
    where: str,
) -> tuple[str, ...]:
    out: list[str] = []
    for raw in _tokens(value):
        tok = _norm(raw)
        if tok in label_map:
            mapped = label_map[tok]
        elif tok in BENIGN:
            mapped = ""
        elif categories is not None and tok in categories:
            mapped = tok
        elif category is not None:
            if _is_num(tok) and tok not in ("1",):
                raise DataError(
                    f"{where}: label {raw.strip()!r} is not binary (0/1); "
                    "map its values to categories with a label map"
                )
            mapped = category  # a binary or named positive label: the dataset's category
        elif tok in TRUTHY:
            raise DataError(
                f"{where}: label {raw.strip()!r} is a yes/no label; say which policy "
                "category it means (category=..., e.g. hate or scam_spam)"
            )
        else:
            mapped = tok
        if mapped and categories is not None and mapped not in categories:
            raise DataError(
                f"{where}: unknown label {raw.strip()!r}: not a policy category "
                f"({', '.join(sorted(categories))}); pass category=... for a yes/no "
                "dataset or a label map (RAW=CATEGORY,...)"
            )
        if mapped and mapped not in out:
            out.append(mapped)
    return tuple(out)


def _pick(columns: Sequence[str], wanted: str | None, candidates: Sequence[str]) -> str | None:
    lower = {c.strip().lower(): c for c in columns}
    if wanted is not None:
        return lower.get(wanted.strip().lower())
    return next((lower[c] for c in candidates if c in lower), None)


def _decode(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(f"{path}:{line}: not valid UTF-8 (byte {exc.start})") from exc


def _records(path: Path, text: str) -> tuple[list[str], Iterator[tuple[int, dict[str, Any]]]]:
    """(column names, iterator of (line, record)) for a JSONL, CSV or TSV file."""
    suffix = path.suffix.lower()
    first = next((ln for ln in text.splitlines() if ln.strip()), "")
    if suffix in (".jsonl", ".ndjson", ".json") or (
        suffix not in (".csv", ".tsv", ".tab", ".txt") and first.lstrip().startswith("{")
    ):
        return _jsonl(path, text)
    delimiter = "\t" if suffix in (".tsv", ".tab") or ("\t" in first and "," not in first) else ","
    return _delimited(path, text, delimiter)


def _jsonl(path: Path, text: str) -> tuple[list[str], Iterator[tuple[int, dict[str, Any]]]]:
    rows: list[tuple[int, dict[str, Any]]] = []
    columns: dict[str, None] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{n}: not valid JSON: {exc.msg} (column {exc.colno})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{n}: a JSONL row must be an object, not {type(obj).__name__}")
        columns.update(dict.fromkeys(obj))
        rows.append((n, obj))
    return list(columns), iter(rows)


def _delimited(
    path: Path, text: str, delimiter: str
) -> tuple[list[str], Iterator[tuple[int, dict[str, Any]]]]:
    csv.field_size_limit(sys.maxsize)
    quoting = csv.QUOTE_MINIMAL
    if delimiter == "\t":
        # Many TSVs (the UCI SMS collection) use quotes literally: a lone " must not swallow
        # the following lines. Read quotes literally when every line then has the header's
        # number of fields, and strip only whole-field CSV quoting ("a ""b"" c").
        lines = [ln for ln in text.splitlines() if ln.strip()]
        width = lines[0].count("\t") if lines else 0
        if all(ln.count("\t") == width for ln in lines):
            quoting = csv.QUOTE_NONE
    reader = csv.reader(text.splitlines(keepends=True), delimiter=delimiter, quoting=quoting)
    try:
        header = next(reader)
    except StopIteration:
        raise DataError(f"{path}:1: empty file") from None
    except csv.Error as exc:
        raise DataError(f"{path}:1: unreadable header: {exc}") from None
    header = [h.strip() for h in header]

    def rows() -> Iterator[tuple[int, dict[str, Any]]]:
        while True:
            start = reader.line_num + 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise DataError(f"{path}:{start}: unreadable row: {exc}") from None
            if not row or not any(c.strip() for c in row):
                continue
            if len(row) != len(header):
                raise DataError(
                    f"{path}:{start}: {len(row)} fields, the header has {len(header)} "
                    f"({'tabs' if delimiter == chr(9) else 'commas'} inside an unquoted field?)"
                )
            if quoting == csv.QUOTE_NONE:
                row = [_unquote(c) for c in row]
            yield start, dict(zip(header, row, strict=True))

    return header, rows()


_QUOTED = re.compile(r'^"((?:[^"]|"")*)"$', re.DOTALL)


def _unquote(cell: str) -> str:
    m = _QUOTED.match(cell)
    return m.group(1).replace('""', '"') if m else cell


def load_labeled(
    path: Path | str,
    text_col: str | None = None,
    label_col: str | None = None,
    category: str | None = None,
    limit: int | None = None,
    seed: int = 0,
    *,
    label_map: str | Mapping[str, str] | None = None,
    categories: Iterable[str] | None = None,
    skip_bad: bool = False,
) -> LabeledData:
    """Labelled posts from a JSONL, CSV or TSV file.

    Columns are found by name (``TEXT_COLUMNS``, ``LABEL_COLUMNS``, optional language,
    market and id columns) unless ``text_col`` / ``label_col`` name them. A label is a list
    or a ``,``/``;``/``|``-separated string of policy category names; benign markers
    (``BENIGN``: none, ham, 0, not_hateful, ...) mean no category. ``category`` names the
    category of a yes/no dataset: every positive value (1, true, hateful, spam, ...) then
    means it. ``label_map`` (``"spam=scam_spam,ham="``) maps raw values explicitly.
    ``categories`` (the policy's) makes unknown labels an error at their line.
    ``limit`` keeps a random sample of that many rows (``seed``), in file order.
    Bad rows raise ``DataError`` naming file and line, or are left out with ``skip_bad``
    (listed in the result's ``skipped``).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    columns, records = _records(path, _decode(path))
    if not columns:
        raise DataError(f"{path}:1: no rows")
    cols = _Columns.find(path, columns, text_col, label_col)
    cats = frozenset(categories) if categories is not None else None
    if category is not None and cats is not None and category not in cats:
        raise DataError(f"{path}: category {category!r} is not a policy category")
    lmap = parse_label_map(label_map)
    posts: list[LabeledPost] = []
    skipped: list[str] = []
    for line, rec in records:
        where = f"{path}:{line}"
        try:
            text = rec.get(cols.text)
            if not isinstance(text, str) or not text.strip():
                raise DataError(f"{where}: empty or missing text in column {cols.text!r}")
            raw = rec.get(cols.labels)
            labels = _labels(raw, category=category, label_map=lmap, categories=cats, where=where)
        except DataError as exc:
            if not skip_bad:
                raise
            skipped.append(str(exc))
            continue
        posts.append(cols.post(path, line, rec, text, labels))
    if limit is not None and 0 <= limit < len(posts):
        keep = sorted(random.Random(seed).sample(range(len(posts)), limit))
        posts = [posts[i] for i in keep]
    return LabeledData(posts, skipped)


@dataclass(frozen=True)
class _Columns:
    """The columns of a labelled file that ``load_labeled`` reads."""

    text: str
    labels: str
    language: str | None
    market: str | None
    id: str | None

    @classmethod
    def find(
        cls, path: Path, columns: Sequence[str], text_col: str | None, label_col: str | None
    ) -> _Columns:
        tcol = _pick(columns, text_col, TEXT_COLUMNS)
        lcol = _pick(columns, label_col, LABEL_COLUMNS)
        for col, wanted, kind, names in (
            (tcol, text_col, "text", TEXT_COLUMNS),
            (lcol, label_col, "labels", LABEL_COLUMNS),
        ):
            if col is None:
                what = (
                    f"no column {wanted!r}" if wanted else f"no {kind} column ({', '.join(names)})"
                )
                raise DataError(
                    f"{path}:1: {what}; columns: {', '.join(map(str, columns))}; "
                    f"name it with {'text_col' if kind == 'text' else 'label_col'}=..."
                )
        assert tcol is not None and lcol is not None
        return cls(
            tcol,
            lcol,
            _pick(columns, None, LANGUAGE_COLUMNS),
            _pick(columns, None, MARKET_COLUMNS),
            _pick(columns, None, ID_COLUMNS),
        )

    def post(
        self, path: Path, line: int, rec: Mapping[str, Any], text: str, labels: tuple[str, ...]
    ) -> LabeledPost:
        raw = rec.get(self.labels)
        lang = rec.get(self.language) if self.language else None
        market = rec.get(self.market) if self.market else None
        pid = rec.get(self.id) if self.id else None
        return LabeledPost(
            text=text,
            labels=labels,
            language=str(lang).strip() or None if lang not in (None, "") else None,
            market=str(market).strip() or None if market not in (None, "") else None,
            id=str(pid) if pid not in (None, "") else None,
            raw_label=raw if isinstance(raw, str) else json.dumps(raw, ensure_ascii=False),
            source=str(path),
            line=line,
        )


@dataclass(frozen=True)
class DataSpec:
    """How to read a labelled file (the options `load_labeled` takes), shared by
    `backtest`, `diff` and their CLI commands."""

    text_col: str | None = None
    label_col: str | None = None
    category: str | None = None
    label_map: str | Mapping[str, str] | None = None
    limit: int | None = None
    seed: int = 0
    skip_bad: bool = False

    def load(
        self, data: Path | str | Sequence[LabeledPost], categories: Iterable[str]
    ) -> Sequence[LabeledPost]:
        if isinstance(data, str | Path):
            return load_labeled(data, categories=categories, **self.__dict__)
        return data


def describe(data: Any, posts: Sequence[LabeledPost]) -> dict[str, Any]:
    """The ``data`` part of a result: source, rows, labels and how raw labels were read."""
    labels = Counter(c for p in posts for c in p.labels)
    raw = Counter((p.raw_label, ",".join(p.labels)) for p in posts)
    return {
        "source": str(data) if isinstance(data, str | Path) else "<posts>",
        "rows": len(posts),
        "benign": sum(1 for p in posts if not p.labels),
        "labels": dict(labels.most_common()),
        # raw value -> categories it was read as: check a dataset's mapping at a glance
        "label_values": [{"raw": r, "read_as": m, "count": n} for (r, m), n in raw.most_common(20)],
        "skipped": list(getattr(posts, "skipped", [])),
    }
