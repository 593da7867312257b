"""The sums of binary classification, written once for every report that grades predictions
against labels: policy backtests, the replay's quality table, the heads' training and
evaluation tables.

Definitions (the same everywhere):

* confusion counts: tp (labelled and predicted), fp (predicted, not labelled), fn
  (labelled, not predicted), tn (neither);
* precision = tp / (tp + fp), undefined (None) when nothing was predicted;
* recall = tp / (tp + fn), undefined (None) when nothing was labelled;
* F1 = 2 tp / (2 tp + fp + fn), the harmonic mean of the two where both exist; 0.0 when
  there were labels or predictions but no hit, undefined (None) when there were neither.

Rounding is for display: ``digits`` rounds each figure (None keeps the exact float), and
each report states the number of digits it prints.
"""

from __future__ import annotations

from typing import Any

OUTCOMES = ("tp", "fp", "fn", "tn")


def outcome(labelled: bool, predicted: bool) -> str:
    """The confusion cell of one prediction: "tp", "fp", "fn" or "tn"."""
    if labelled:
        return "tp" if predicted else "fn"
    return "fp" if predicted else "tn"


def mask_counts(predicted: Any, labelled: Any) -> tuple[int, int, int]:
    """(tp, fp, fn) of two boolean numpy arrays of the same shape."""
    return (
        int((predicted & labelled).sum()),
        int((predicted & ~labelled).sum()),
        int((~predicted & labelled).sum()),
    )


def _ratio(num: float, den: float, digits: int | None) -> float | None:
    if not den:
        return None
    value = num / den
    return value if digits is None else round(value, digits)


def precision(tp: int, fp: int, digits: int | None = None) -> float | None:
    return _ratio(tp, tp + fp, digits)


def recall(tp: int, fn: int, digits: int | None = None) -> float | None:
    return _ratio(tp, tp + fn, digits)


def f1(tp: int, fp: int, fn: int, digits: int | None = None) -> float | None:
    return _ratio(2 * tp, 2 * tp + fp + fn, digits)


def prf(tp: int, fp: int, fn: int, digits: int | None = None) -> dict[str, float | None]:
    """{"precision", "recall", "f1"} from the confusion counts (see the module doc)."""
    return {
        "precision": precision(tp, fp, digits),
        "recall": recall(tp, fn, digits),
        "f1": f1(tp, fp, fn, digits),
    }
