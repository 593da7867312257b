"""Backtests: run a policy over labelled posts, and compare two policies on the same posts.

* ``load_labeled`` reads JSONL, CSV or TSV with a text column and a labels column (names
  detected; see ``TEXT_COLUMNS`` / ``LABEL_COLUMNS``) into ``LabeledPost``s whose labels
  are policy category names (``[]`` for benign posts).
* ``score_posts`` gives each post its language and its category scores for a policy, the
  way the worker does (``language.detect_batch``, then the zero-shot scorer on e5
  embeddings), with embeddings and detections taken from an ``EmbeddingCache``.
* ``backtest`` measures the policy against the labels: per category and language, whether
  the category *fired* (its score reached the threshold for the post's language) against
  the label (precision / recall / F1); the share of labelled posts a non-allow action
  caught; actions per language and market; per rule, how many posts it matched and, for
  rules that test categories, how many of them carry one of those labels.
* ``diff`` lists the posts whose action changes in some market between two policies,
  grouped by (old action -> new action, language) and by (rule that appeared or
  disappeared, language). Text embeddings are computed once for both policies, and the
  scores too when both policies have the same scorer anchors.

``render_backtest`` / ``render_diff`` print the results as rich tables; the results
themselves are plain JSON-able dicts.
"""

from __future__ import annotations

import csv
import json
import random
import re
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.classifier.cache import QUERY, EmbeddingCache
from service.language import LanguageResult
from service.policy import (
    ACTIONS,
    SEVERITY,
    Condition,
    Facts,
    LoadedPolicy,
    Outcome,
    evaluate,
    load_policy,
)

__all__ = [
    "DataError",
    "LabeledPost",
    "ScoredPost",
    "backtest",
    "category_metrics",
    "diff",
    "evaluate_posts",
    "load_labeled",
    "open_cache",
    "parse_label_map",
    "prf",
    "render_backtest",
    "render_diff",
    "score_posts",
]


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

FIRED = "category fired: the category's score reached its threshold for the post's language"
CAUGHT = "caught: the post's action in its own market is not allow"
CAUGHT_BY_RULE = "caught by a rule on the category: a matching rule's condition fired on it"


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
    tcol = _pick(columns, text_col, TEXT_COLUMNS)
    lcol = _pick(columns, label_col, LABEL_COLUMNS)
    for col, wanted, kind, names in (
        (tcol, text_col, "text", TEXT_COLUMNS),
        (lcol, label_col, "labels", LABEL_COLUMNS),
    ):
        if col is None:
            what = f"no column {wanted!r}" if wanted else f"no {kind} column ({', '.join(names)})"
            raise DataError(
                f"{path}:1: {what}; columns: {', '.join(map(str, columns))}; "
                f"name it with {'text_col' if kind == 'text' else 'label_col'}=..."
            )
    langcol = _pick(columns, None, LANGUAGE_COLUMNS)
    mcol = _pick(columns, None, MARKET_COLUMNS)
    idcol = _pick(columns, None, ID_COLUMNS)
    cats = frozenset(categories) if categories is not None else None
    if category is not None and cats is not None and category not in cats:
        raise DataError(f"{path}: category {category!r} is not a policy category")
    lmap = parse_label_map(label_map)
    posts: list[LabeledPost] = []
    skipped: list[str] = []
    for line, rec in records:
        where = f"{path}:{line}"
        try:
            text = rec.get(tcol)
            if not isinstance(text, str) or not text.strip():
                raise DataError(f"{where}: empty or missing text in column {tcol!r}")
            raw = rec.get(lcol)
            labels = _labels(raw, category=category, label_map=lmap, categories=cats, where=where)
        except DataError as exc:
            if not skip_bad:
                raise
            skipped.append(str(exc))
            continue
        lang = rec.get(langcol) if langcol else None
        market = rec.get(mcol) if mcol else None
        pid = rec.get(idcol) if idcol else None
        posts.append(
            LabeledPost(
                text=text,
                labels=labels,
                language=str(lang).strip() or None if lang not in (None, "") else None,
                market=str(market).strip() or None if market not in (None, "") else None,
                id=str(pid) if pid not in (None, "") else None,
                raw_label=raw if isinstance(raw, str) else json.dumps(raw, ensure_ascii=False),
                source=str(path),
                line=line,
            )
        )
    if limit is not None and 0 <= limit < len(posts):
        keep = sorted(random.Random(seed).sample(range(len(posts)), limit))
        posts = [posts[i] for i in keep]
    return LabeledData(posts, skipped)


# --------------------------------------------------------------------------
# Scoring and evaluation


@dataclass(frozen=True)
class ScoredPost:
    post: LabeledPost
    language: LanguageResult
    scores: dict[str, float] = field(hash=False)


def open_cache(
    cache_dir: Path | str | None = None,
    model_dir: Path | str | None = None,
    *,
    progress: bool | None = None,
) -> EmbeddingCache:
    """The cache under ``<data dir>/cache/embeddings`` for the configured model and
    precision, so that a backtest scores what the worker would (lazy)."""
    from service.config import Settings

    settings = Settings()
    return EmbeddingCache(
        Path(cache_dir) if cache_dir else settings.data_dir / "cache" / "embeddings",
        Path(model_dir) if model_dir else settings.resolved_model_dir,
        max_length=settings.max_length_tokens,
        threads=settings.torch_threads,
        precision=settings.precision,
        tuned_dir=settings.tuned_dir,
        progress=progress,
    )


def _policy(policy: LoadedPolicy | Path | str) -> LoadedPolicy:
    return policy if isinstance(policy, LoadedPolicy) else load_policy(policy)


@contextmanager
def _stage(message: str, enabled: bool | None) -> Iterator[None]:
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        yield
        return
    from rich.console import Console

    with Console(stderr=True).status(message):
        yield


class _Embedded:
    """Languages and text embeddings of posts: policy-independent, computed once."""

    def __init__(
        self,
        posts: Sequence[LabeledPost],
        cache: EmbeddingCache,
        progress: bool | None,
        heads: Any = "auto",
    ) -> None:
        self.posts = list(posts)
        self.cache = cache
        self.heads = default_heads(cache) if heads == "auto" else heads
        texts = [p.text for p in self.posts]
        with _stage(f"detecting the language of {len(texts)} posts", progress):
            self.languages = cache.detect(texts, [p.language for p in self.posts])
        self.embeddings = cache.embed(texts, prefix=QUERY, progress=progress)
        self._scores: dict[str, list[dict[str, float]]] = {}
        self.scorer_versions: dict[str, str] = {}

    def scored(self, lp: LoadedPolicy) -> list[ScoredPost]:
        from service.classifier.scorer import PolicyScorer

        # as the worker scores: trained heads, zero-shot for categories without one; the
        # zero-shot anchors go through the cache too, so a warm run does not load the model
        scorer = PolicyScorer(self.cache, lp.policy, self.heads)
        self.scorer_versions[lp.version] = scorer.version
        if scorer.version not in self._scores:
            codes = [lang.code for lang in self.languages]
            self._scores[scorer.version] = scorer.score_embeddings(self.embeddings, codes)
        scores = self._scores[scorer.version]
        return [
            ScoredPost(p, lang, sc)
            for p, lang, sc in zip(self.posts, self.languages, scores, strict=True)
        ]


def default_heads(cache: EmbeddingCache) -> Any:
    """The trained heads the service would load for this encoder, or None (zero-shot)."""
    from service.classifier.heads import HeadsMismatch, TrainedHeads
    from service.config import get_settings

    directory = get_settings().heads_dir
    if directory is None or not TrainedHeads.available(directory):
        return None
    try:
        return TrainedHeads(directory, encoder_version=cache.version)
    except HeadsMismatch:
        return None


def score_posts(
    posts: Sequence[LabeledPost],
    policy: LoadedPolicy | Path | str,
    encoder_cache: EmbeddingCache,
    *,
    progress: bool | None = None,
    heads: Any = "auto",
) -> list[ScoredPost]:
    """Each post's language and its category scores under ``policy`` (as the worker would).

    ``heads``: "auto" loads the service's trained heads; None scores zero-shot only.
    """
    return _Embedded(posts, encoder_cache, progress, heads).scored(_policy(policy))


def _market(sp: ScoredPost, lp: LoadedPolicy, market: str | None) -> str:
    return market or sp.post.market or lp.policy.default_market


def evaluate_posts(
    scored: Sequence[ScoredPost], policy: LoadedPolicy, market: str | None = None
) -> list[dict[str, Outcome]]:
    """``policy.evaluate`` for each post: its outcome per market (its own one included)."""
    out = []
    for sp in scored:
        facts = Facts(
            text=sp.post.text,
            language=sp.language.code,
            script=sp.language.script,
            mixed=bool(sp.language.mixed),
            scores=sp.scores,
            market=_market(sp, policy, market),
            account_age_days=None,  # labelled data has no accounts
        )
        out.append(evaluate(policy, facts))
    return out


# --------------------------------------------------------------------------
# Metrics


def prf(tp: int, fp: int, fn: int) -> dict[str, float | None]:
    """Precision, recall, F1; None where undefined (nothing predicted / nothing labelled)."""
    return {
        "precision": round(tp / (tp + fp), 4) if tp + fp else None,
        "recall": round(tp / (tp + fn), 4) if tp + fn else None,
        "f1": round(2 * tp / (2 * tp + fp + fn), 4) if tp + fp + fn else None,
    }


def category_metrics(
    rows: Iterable[tuple[str, str, bool, bool]], languages: Sequence[str] = ()
) -> list[dict[str, Any]]:
    """(category, language, labelled, predicted) rows -> one row per category x language.

    Every category gets an ``all`` row; a language row appears when the category has
    labelled or predicted posts in it, or when the language is in ``languages``.
    """
    counts: dict[tuple[str, str], Counter] = defaultdict(Counter)
    cats: dict[str, None] = {}
    for cat, lang, truth, pred in rows:
        cats[cat] = None
        key = ("tp" if pred else "fn") if truth else ("fp" if pred else "tn")
        counts[(cat, lang)][key] += 1
        counts[(cat, "all")][key] += 1
    out = []
    for cat in cats:
        langs = ["all"] + sorted(
            {lg for c, lg in counts if c == cat and lg != "all"},
            key=lambda lg: (-sum(counts[(cat, lg)].values()), lg),
        )
        for lang in langs:
            c = counts[(cat, lang)]
            support, predicted = c["tp"] + c["fn"], c["tp"] + c["fp"]
            if lang != "all" and not (support or predicted) and lang not in languages:
                continue
            out.append(
                {
                    "category": cat,
                    "language": lang,
                    "posts": sum(c.values()),
                    "support": support,
                    "fired": predicted,
                    "tp": c["tp"],
                    "fp": c["fp"],
                    "fn": c["fn"],
                    "tn": c["tn"],
                    **prf(c["tp"], c["fp"], c["fn"]),
                }
            )
    return out


def _rule_categories(cond: Condition, negated: bool = False) -> set[str]:
    """Categories a rule tests positively (not those under a ``not``)."""
    found = {cond.category} if cond.category and not negated else set()
    for child in (cond.all or []) + (cond.any or []):
        found |= _rule_categories(child, negated)
    if cond.not_ is not None:
        found |= _rule_categories(cond.not_, not negated)
    return found


def _example(sp: ScoredPost, **extra: Any) -> dict[str, Any]:
    return {
        "line": sp.post.line,
        "id": sp.post.id,
        "text": sp.post.text,
        "language": sp.language.code,
        "labels": list(sp.post.labels),
        **extra,
    }


def _share(n: int, d: int) -> float | None:
    return round(n / d, 4) if d else None


def _data_info(data: Any, posts: Sequence[LabeledPost]) -> dict[str, Any]:
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


def backtest(
    policy_path: LoadedPolicy | Path | str,
    data_path: Path | str | Sequence[LabeledPost],
    *,
    cache: EmbeddingCache | None = None,
    spec: DataSpec = DataSpec(),
    market: str | None = None,
    examples: int = 3,
    include_posts: bool = False,
    progress: bool | None = None,
    heads: Any = "auto",
) -> dict[str, Any]:
    """Measure a policy on labelled posts; a JSON-able dict (see the module doc).

    ``market`` evaluates every post as if posted there (default: the post's market column,
    else the policy's default market). ``include_posts`` adds every post's language,
    scores, fired categories and actions.
    """
    t0 = time.perf_counter()
    lp = _policy(policy_path)
    posts = spec.load(data_path, lp.policy.categories)
    cache = cache or open_cache(progress=progress)
    t1 = time.perf_counter()
    scored = score_posts(posts, lp, cache, progress=progress, heads=heads)
    t2 = time.perf_counter()
    outcomes = evaluate_posts(scored, lp, market)
    cats = list(lp.policy.categories)
    fired = [
        {c for c in cats if sp.scores[c] >= lp.policy.categories[c].threshold_for(sp.language.code)}
        for sp in scored
    ]

    langs = Counter(sp.language.code for sp in scored)
    metrics = category_metrics(
        (c, sp.language.code, c in sp.post.labels, c in f)
        for sp, f in zip(scored, fired, strict=True)
        for c in cats
    )
    labelled_cats = {c for p in posts for c in p.labels} | (
        {spec.category} if spec.category else set()
    )
    for row in metrics:
        row["labelled_in_data"] = row["category"] in labelled_cats
        cat = lp.policy.categories[row["category"]]
        row["threshold"] = (
            cat.threshold if row["language"] == "all" else cat.threshold_for(row["language"])
        )

    # labelled posts caught by a non-allow action (own market), per category and language
    caught: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for sp, oc in zip(scored, outcomes, strict=True):
        own = oc[_market(sp, lp, market)]
        by_cat = {c for m in own.matches for c, _ in m.categories}
        groups = [("any", "all"), ("any", sp.language.code)] if sp.post.labels else []
        groups += [(c, g) for c in sp.post.labels for g in ("all", sp.language.code)]
        for key in groups:
            caught[key]["positives"] += 1
            caught[key]["caught"] += own.action != "allow"
            for m, o in oc.items():
                caught[key][("market", m)] += o.action != "allow"
            if key[0] != "any":
                caught[key]["by_rule"] += key[0] in by_cat
    caught_rows = [
        {
            "category": c,
            "language": g,
            "positives": n["positives"],
            "caught": n["caught"],
            "share": _share(n["caught"], n["positives"]),
            "caught_by_category_rule": n["by_rule"] if c != "any" else None,
            "share_by_category_rule": _share(n["by_rule"], n["positives"]) if c != "any" else None,
            "caught_by_market": {m: n[("market", m)] for m in lp.policy.markets},
        }
        for (c, g), n in sorted(
            caught.items(),
            key=lambda kv: (
                kv[0][0] == "any",
                cats.index(kv[0][0]) if kv[0][0] in cats else 0,
                kv[0][1] != "all",
                -kv[1]["positives"],
                kv[0][1],
            ),
        )
    ]

    # actions per language: the post's own market, and every market
    own_actions: dict[str, Counter] = defaultdict(Counter)
    by_market: dict[str, dict[str, Counter]] = defaultdict(lambda: defaultdict(Counter))
    benign_actioned: dict[str, Counter] = defaultdict(Counter)
    for sp, oc in zip(scored, outcomes, strict=True):
        lang = sp.language.code
        own = oc[_market(sp, lp, market)]
        for g in ("all", lang):
            own_actions[g][own.action] += 1
            if not sp.post.labels:
                benign_actioned[g]["benign"] += 1
                benign_actioned[g]["actioned"] += own.action != "allow"
                for m, o in oc.items():
                    benign_actioned[g][("market", m)] += o.action != "allow"
        for m, o in oc.items():
            for g in ("all", lang):
                by_market[m][g][o.action] += 1
    lang_order = ["all"] + [lg for lg, _ in langs.most_common()]

    def actions_table(counter: Mapping[str, Counter]) -> dict[str, dict[str, int]]:
        return {
            g: {a: counter[g][a] for a in ACTIONS if counter[g][a]}
            for g in lang_order
            if g in counter
        }

    # rules
    rules = []
    for rule in lp.policy.rules:
        rcats = sorted(_rule_categories(rule.when), key=cats.index)
        matched, decided, true_pos = [], 0, 0
        per_market: Counter = Counter()
        per_lang: Counter = Counter()
        for sp, oc in zip(scored, outcomes, strict=True):
            for m, o in oc.items():
                if any(x.rule_id == rule.id for x in o.matches):
                    per_market[m] += 1
            own = oc[_market(sp, lp, market)]
            hit = next((x for x in own.matches if x.rule_id == rule.id), None)
            if hit is None:
                continue
            matched.append((sp, hit))
            per_lang[sp.language.code] += 1
            decided += own.matches[0].rule_id == rule.id
            true_pos += bool(set(rcats) & set(sp.post.labels))
        rules.append(
            {
                "rule": rule.id,
                "action": rule.action,
                "markets": list(rule.markets) if rule.markets else None,
                "categories": rcats,
                "matched": len(matched),
                "matched_by_language": dict(per_lang.most_common()),
                "matched_by_market": {m: per_market[m] for m in lp.policy.markets},
                "decided": decided,
                "labelled_matches": true_pos if rcats else None,
                "precision": _share(true_pos, len(matched)) if rcats else None,
                "examples": [
                    _example(
                        sp,
                        categories=dict(hit.categories),
                        keywords={k: list(v) for k, v in hit.keywords},
                    )
                    for sp, hit in matched[:examples]
                ],
            }
        )
    t3 = time.perf_counter()

    result: dict[str, Any] = {
        "kind": "backtest",
        "policy": {"name": lp.name, "version": lp.version, "source": lp.source},
        "data": _data_info(data_path, posts),
        "languages": dict(langs.most_common()),
        "market": market
        or f"own (the post's market column, else the policy's default: {lp.policy.default_market})",
        "definitions": {
            "fired": FIRED,
            "caught": CAUGHT,
            "caught_by_category_rule": CAUGHT_BY_RULE,
            "rule_precision": "share of a rule's matches labelled with one of the "
            "categories its condition tests (rules without categories: none)",
        },
        "categories": metrics,
        "caught": caught_rows,
        "benign_actioned": [
            {
                "language": g,
                "benign": benign_actioned[g]["benign"],
                "actioned": benign_actioned[g]["actioned"],
                "share": _share(benign_actioned[g]["actioned"], benign_actioned[g]["benign"]),
                "caught_by_market": {
                    m: benign_actioned[g][("market", m)] for m in lp.policy.markets
                },
            }
            for g in lang_order
            if g in benign_actioned
        ],
        "actions": actions_table(own_actions),
        "actions_by_market": {m: actions_table(by_market[m]) for m in by_market},
        "rules": rules,
        "cache": cache.stats(),
        "timings_s": {
            "load": round(t1 - t0, 3),
            "score": round(t2 - t1, 3),
            "evaluate": round(t3 - t2, 3),
            "total": round(t3 - t0, 3),
        },
    }
    if include_posts:
        result["posts"] = [
            _example(
                sp,
                scores=sp.scores,
                fired=sorted(f, key=cats.index),
                actions={m: o.action for m, o in oc.items()},
                rules={m: [x.rule_id for x in o.matches] for m, o in oc.items()},
                market=_market(sp, lp, market),
            )
            for sp, f, oc in zip(scored, fired, outcomes, strict=True)
        ]
    return result


def diff(
    old_policy_path: LoadedPolicy | Path | str,
    new_policy_path: LoadedPolicy | Path | str,
    data_path: Path | str | Sequence[LabeledPost],
    *,
    cache: EmbeddingCache | None = None,
    spec: DataSpec = DataSpec(),
    market: str | None = None,
    examples: int = 3,
    progress: bool | None = None,
    heads: Any = "auto",
) -> dict[str, Any]:
    """Posts whose action changes in some market between two policies (see the module doc).

    ``changed`` lists every such post with its per-market old/new action and rules; rule
    groups also count posts whose matched rules changed without a change of action.
    """
    t0 = time.perf_counter()
    old, new = _policy(old_policy_path), _policy(new_policy_path)
    posts = spec.load(data_path, set(old.policy.categories) | set(new.policy.categories))
    cache = cache or open_cache(progress=progress)
    embedded = _Embedded(posts, cache, progress, heads)
    scored_old, scored_new = embedded.scored(old), embedded.scored(new)
    outcomes_old = evaluate_posts(scored_old, old, market)
    outcomes_new = evaluate_posts(scored_new, new, market)

    transitions: dict[tuple[str, str, str, str], list[int]] = defaultdict(list)
    rule_groups: dict[tuple[str, str, str], dict[int, set[str]]] = defaultdict(dict)
    changed: list[dict[str, Any]] = []
    rules_only = 0
    for i, (sp, oo, on) in enumerate(zip(scored_old, outcomes_old, outcomes_new, strict=True)):
        lang = sp.language.code
        markets = list(dict.fromkeys([*oo, *on]))
        per_market = {}
        action_changed = False
        for m in markets:
            a_old = oo[m].action if m in oo else "allow"
            a_new = on[m].action if m in on else "allow"
            r_old = [x.rule_id for x in oo[m].matches] if m in oo else []
            r_new = [x.rule_id for x in on[m].matches] if m in on else []
            for rid in set(r_new) - set(r_old):
                rule_groups[(rid, "appeared", lang)].setdefault(i, set()).add(m)
            for rid in set(r_old) - set(r_new):
                rule_groups[(rid, "disappeared", lang)].setdefault(i, set()).add(m)
            if a_old != a_new:
                action_changed = True
                transitions[(m, a_old, a_new, lang)].append(i)
            if a_old != a_new or set(r_old) != set(r_new):
                per_market[m] = {"old": a_old, "new": a_new, "old_rules": r_old, "new_rules": r_new}
        if action_changed:
            changed.append(
                {
                    "index": i,
                    **_example(sp),
                    "market": _market(sp, new, market),
                    "scores_old": sp.scores,
                    "scores_new": scored_new[i].scores,
                    "markets": per_market,
                }
            )
        elif per_market:
            rules_only += 1
    changed_idx = {c["index"] for c in changed}

    def sev(a: str) -> int:
        return SEVERITY.get(a, 0)

    by_transition = [
        {
            "market": m,
            "old": a,
            "new": b,
            "language": lang,
            "direction": "stricter" if sev(b) > sev(a) else "laxer",
            "count": len(idx),
            "labelled": sum(1 for i in idx if scored_old[i].post.labels),
            "examples": [_example(scored_old[i]) for i in idx[:examples]],
        }
        for (m, a, b, lang), idx in sorted(transitions.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    ]
    by_rule = [
        {
            "rule": rid,
            "change": change,
            "language": lang,
            "count": len(idx),
            "action_changed": sum(1 for i in idx if i in changed_idx),
            "markets": sorted({m for ms in idx.values() for m in ms}),
            "labelled": sum(1 for i in idx if scored_old[i].post.labels),
            "examples": [_example(scored_old[i]) for i in list(idx)[:examples]],
        }
        for (rid, change, lang), idx in sorted(
            rule_groups.items(), key=lambda kv: (-len(kv[1]), kv[0])
        )
    ]
    return {
        "kind": "diff",
        "old": {"name": old.name, "version": old.version, "source": old.source},
        "new": {"name": new.name, "version": new.version, "source": new.source},
        "data": _data_info(data_path, posts),
        "market": market or "own",
        "scores_reused": embedded.scorer_versions[old.version]
        == embedded.scorer_versions[new.version],
        "posts": len(posts),
        "changed_posts": len(changed),
        "rules_only_changed": rules_only,
        "by_transition": by_transition,
        "by_rule": by_rule,
        "changed": changed,
        "cache": cache.stats(),
        "timings_s": {"total": round(time.perf_counter() - t0, 3)},
    }


# --------------------------------------------------------------------------
# Rendering


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _clip(text: str, n: int = 70) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def render_backtest(result: Mapping[str, Any], console: Any) -> None:
    """Print a ``backtest`` result as rich tables on ``console`` (a ``rich.console.Console``)."""
    from rich.table import Table

    d = result["data"]
    langs = ", ".join(f"{k} {v}" for k, v in result["languages"].items())
    console.print(
        f"[bold]{result['policy']['name']}[/] ({result['policy']['version']}) on "
        f"{d['source']}: {d['rows']} posts ({d['benign']} benign); languages: {langs}; "
        f"market: {result['market']}"
    )
    if d["skipped"]:
        console.print(f"[yellow]{len(d['skipped'])} rows skipped[/], first: {d['skipped'][0]}")

    t = Table(title=f"Categories — {FIRED}", title_justify="left")
    for col in (
        "category",
        "lang",
        "threshold",
        "posts",
        "labelled",
        "fired",
        "TP",
        "FP",
        "FN",
        "precision",
        "recall",
        "F1",
    ):
        t.add_column(col, justify="left" if col in ("category", "lang") else "right")
    shown = [r for r in result["categories"] if r["labelled_in_data"]]
    for r in shown:
        if r["language"] == "all" and t.row_count:
            t.add_section()
        t.add_row(
            r["category"] if r["language"] == "all" else "",
            r["language"],
            f"{r['threshold']:.2f}",
            str(r["posts"]),
            str(r["support"]),
            str(r["fired"]),
            str(r["tp"]),
            str(r["fp"]),
            str(r["fn"]),
            _fmt(r["precision"]),
            _fmt(r["recall"]),
            _fmt(r["f1"]),
        )
    others = [
        f"{r['category']} {r['fired']}"
        for r in result["categories"]
        if r["language"] == "all" and not r["labelled_in_data"]
    ]
    if others:
        t.caption = "not labelled in this data (posts fired on): " + ", ".join(others)
    console.print(t)

    markets = list(result["actions_by_market"])
    t = Table(title=f"Labelled posts caught — {CAUGHT}", title_justify="left")
    for col in (
        "category",
        "lang",
        "labelled",
        "caught",
        "share",
        *markets,
        "by a rule on it",
        "share",
    ):
        t.add_column(col, justify="left" if col in ("category", "lang") else "right")

    def by_market(r: Mapping[str, Any], total: int) -> list[str]:
        return [_pct(_share(r["caught_by_market"].get(m, 0), total)) for m in markets]

    for r in result["caught"]:
        t.add_row(
            r["category"] if r["language"] == "all" else "",
            r["language"],
            str(r["positives"]),
            str(r["caught"]),
            _pct(r["share"]),
            *by_market(r, r["positives"]),
            "-" if r["caught_by_category_rule"] is None else str(r["caught_by_category_rule"]),
            _pct(r["share_by_category_rule"]),
        )
    for r in result["benign_actioned"]:
        t.add_row(
            "(benign)" if r["language"] == "all" else "",
            r["language"],
            str(r["benign"]),
            str(r["actioned"]),
            _pct(r["share"]),
            *by_market(r, r["benign"]),
            "",
            "",
            style="dim",
        )
    t.caption = (
        "per market: share with a non-allow action there; "
        "(benign): unlabelled posts that got a non-allow action"
    )
    console.print(t)

    t = Table(title="Actions by language (own market, then per market)", title_justify="left")
    t.add_column("lang")
    t.add_column("market")
    for a in ACTIONS:
        t.add_column(a, justify="right")
    for lang, counts in result["actions"].items():
        t.add_row(lang, "own", *(str(counts.get(a, "")) for a in ACTIONS), style="bold")
        for m in markets:
            mc = result["actions_by_market"][m].get(lang, {})
            t.add_row("", m, *(str(mc.get(a, "")) for a in ACTIONS))
    console.print(t)

    t = Table(title="Rules (own market)", title_justify="left")
    for col in (
        "rule",
        "action",
        "matched",
        "decided",
        "by market",
        "labelled",
        "precision",
        "example",
    ):
        t.add_column(
            col,
            justify="right" if col in ("matched", "decided", "labelled", "precision") else "left",
        )
    for r in result["rules"]:
        ex = r["examples"][0] if r["examples"] else None
        t.add_row(
            r["rule"],
            r["action"],
            str(r["matched"]),
            str(r["decided"]),
            " ".join(f"{m}:{n}" for m, n in r["matched_by_market"].items()),
            "-" if r["labelled_matches"] is None else str(r["labelled_matches"]),
            _fmt(r["precision"]),
            f"[{ex['language']}] {_clip(ex['text'], 50)}" if ex else "",
        )
    t.caption = "precision: matches labelled with a category the rule tests"
    console.print(t)


def render_diff(result: Mapping[str, Any], console: Any) -> None:
    """Print a ``diff`` result as rich tables on ``console``."""
    from rich.table import Table

    o, n = result["old"], result["new"]
    console.print(
        f"[bold]{o['source']}[/] ({o['version']}) → [bold]{n['source']}[/] ({n['version']}) on "
        f"{result['data']['source']}: {result['changed_posts']} of {result['posts']} posts "
        f"change action; {result['rules_only_changed']} more change rules only"
        + ("" if result["scores_reused"] else " (scorer anchors differ: scores recomputed)")
    )
    if not result["changed_posts"] and not result["by_rule"]:
        return
    t = Table(title="Action changes (market, old → new, language)", title_justify="left")
    for col in ("market", "change", "lang", "posts", "labelled", "example"):
        t.add_column(col, justify="right" if col in ("posts", "labelled") else "left")
    for g in result["by_transition"]:
        colour = "red" if g["direction"] == "stricter" else "green"
        ex = g["examples"][0]
        t.add_row(
            g["market"],
            f"[{colour}]{g['old']} → {g['new']}[/]",
            g["language"],
            str(g["count"]),
            str(g["labelled"]),
            _clip(ex["text"], 60),
        )
    console.print(t)
    t = Table(title="Rules that appeared / disappeared", title_justify="left")
    for col in ("rule", "change", "lang", "posts", "action changed", "markets", "example"):
        t.add_column(col, justify="right" if col in ("posts", "action changed") else "left")
    for g in result["by_rule"]:
        t.add_row(
            g["rule"],
            ("+ " if g["change"] == "appeared" else "- ") + g["change"],
            g["language"],
            str(g["count"]),
            str(g["action_changed"]),
            ",".join(g["markets"]),
            _clip(g["examples"][0]["text"], 50),
        )
    console.print(t)
