"""Backtests: run a policy over labelled posts, and compare two policies on the same posts.

One module per job:

* ``data``: labelled JSONL / CSV / TSV files -> ``LabeledPost``s (``load_labeled``,
  ``DataSpec``, ``DataError`` with file:line);
* ``scoring``: posts -> languages, scores and policy outcomes through the pipeline's own
  decide path (``pipeline.score`` / ``pipeline.judge``), from an ``EmbeddingCache``;
* ``metrics``: the tables of a backtest (fired categories against labels, what the actions
  caught, actions per language and market, per rule);
* ``runs``: ``backtest`` and ``diff``, whose results are plain JSON-able dicts;
* ``render``: those results as rich tables.
"""

from service.backtest.data import DataError, DataSpec, LabeledPost, load_labeled, parse_label_map
from service.backtest.metrics import category_metrics, prf
from service.backtest.render import render_backtest, render_diff
from service.backtest.runs import backtest, diff
from service.backtest.scoring import ScoredPost, judge_posts, score_posts

__all__ = [
    "DataError",
    "DataSpec",
    "LabeledPost",
    "ScoredPost",
    "backtest",
    "category_metrics",
    "diff",
    "judge_posts",
    "load_labeled",
    "parse_label_map",
    "prf",
    "render_backtest",
    "render_diff",
    "score_posts",
]
