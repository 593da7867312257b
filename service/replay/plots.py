"""Replay plots: PNG figures of a run, of a policy comparison and of a capacity search
(matplotlib, Agg backend, loaded only when a figure is drawn)."""

from __future__ import annotations

import math
from itertools import accumulate
from pathlib import Path
from typing import Any

from service.replay.analysis import SLO_MS
from service.replay.metrics import ACTIONS, moving_average

ACTION_COLORS = {"allow": "#4caf50", "label": "#90caf9", "limit_reach": "#ffb300",
                 "review": "#8e24aa", "remove": "#d32f2f"}  # fmt: skip
LANG_COLORS = {"zh-Hans": "#c62828", "zh-Hant": "#ef9a9a", "en": "#1565c0",
               "mixed": "#7e57c2", "other": "#9e9e9e"}  # fmt: skip


def pyplot() -> Any:
    """matplotlib.pyplot with the Agg backend and the reports' style."""
    import matplotlib  # heavy: imported when the first figure is drawn, not with the module

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 100, "font.size": 10, "axes.grid": True,
                         "grid.alpha": 0.3, "axes.spines.top": False,
                         "axes.spines.right": False})  # fmt: skip
    return plt


class _Saver:
    """Writes figures into ``out`` (a little headroom above each linear y axis) and
    remembers their names."""

    def __init__(self, plt: Any, out: Path) -> None:
        self.plt, self.out, self.files = plt, out, []

    def __call__(self, fig: Any, name: str) -> None:
        for ax in fig.axes:
            lo, hi = ax.get_ylim()
            if ax.get_yscale() == "linear" and hi > lo:
                ax.set_ylim(lo, hi + (hi - lo) * 0.12)
        fig.tight_layout()
        fig.savefig(self.out / name)
        self.plt.close(fig)
        self.files.append(name)


def _phases(ax, report: dict, label: bool = True) -> None:
    shades = ("#f5f5f5", "#ffffff")
    for k, p in enumerate(report["phases"]):
        ax.axvspan(p["start_s"], p["end_s"], color=shades[k % 2], zorder=0, lw=0)
        if label:
            ax.text((p["start_s"] + p["end_s"]) / 2, 0.99, p["name"], transform=ax.get_xaxis_transform(),
                    ha="center", va="top", fontsize=8, color="#777", style="italic")  # fmt: skip
    end = report["phases"][-1]["end_s"] if report["phases"] else 0
    ax.axvline(end, color="#999", lw=0.8, ls=":")


def _timeline(plt, report: dict) -> tuple[Any, Any]:
    """A wide figure over the run's wall seconds, its phases shaded."""
    fig, ax = plt.subplots(figsize=(10, 4))
    _phases(ax, report)
    return fig, ax


def plot_all(report: dict, out: Path) -> list[str]:
    """The run's figures, written into ``out``; their file names."""
    plt = pyplot()
    save = _Saver(plt, out)
    for figure in (_input_rate, _queue, _latency, _actions, _review_queues, _review_flow):
        figure(plt, report, save)
    return save.files


def _input_rate(plt, report: dict, save: _Saver) -> None:
    """Input rate by language (stacked) and decisions per second."""
    s, x = report["series"], report["series"]["second"]
    fig, ax = _timeline(plt, report)
    langs = [lang for lang in s["sent_by_language"] if sum(s["sent_by_language"][lang])]
    ax.stackplot(x, *[s["sent_by_language"][lang] for lang in langs], labels=langs,
                 colors=[LANG_COLORS.get(lang, "#999") for lang in langs], alpha=0.85, step="post")
    ax.plot(x, moving_average(s["decided_total"], 3), color="black", lw=1.2,
            label="decided (3 s avg)")  # fmt: skip
    ax.set(xlabel="wall seconds", ylabel="posts per second",
           title="Input rate by language (truth) and decisions per second")  # fmt: skip
    ax.legend(loc="upper left", fontsize=8, ncol=3)
    save(fig, "input_rate.png")


def _queue(plt, report: dict, save: _Saver) -> None:
    """Queue depth and lag."""
    s, x = report["series"], report["series"]["second"]
    fig, ax = _timeline(plt, report)
    ax.plot(x, [v or 0 for v in s["stream_length"]], color="#1565c0", lw=1.5,
            label="stream length (posts)")  # fmt: skip
    ax.set(xlabel="wall seconds", ylabel="posts waiting", title="Queue depth and consumer lag")
    ax2 = ax.twinx()
    ax2.plot(x, [(v or 0) / 1000 for v in s["lag_ms"]], color="#e65100", lw=1.2, ls="--",
             label="lag (s): age of oldest undecided post")  # fmt: skip
    ax2.axhline(SLO_MS / 1000, color="#e65100", lw=0.6, ls=":")
    ax2.set_ylabel("lag (s)")
    ax2.grid(False)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="upper left", fontsize=8)
    save(fig, "queue.png")


def _latency(plt, report: dict, save: _Saver) -> None:
    """Latency percentiles over time."""
    s, x = report["series"], report["series"]["second"]
    fig, ax = _timeline(plt, report)
    for q, color in ((50, "#2e7d32"), (95, "#f9a825"), (99, "#c62828")):
        ys = [v / 1000 if v is not None else math.nan for v in s[f"latency_p{q}_ms"]]
        ax.plot(x, ys, color=color, lw=1.3, label=f"p{q}", marker=".", ms=3)
    ax.axhline(SLO_MS / 1000, color="black", lw=0.8, ls=":", label="2 s")
    ax.set(xlabel="wall seconds (when decided)", ylabel="seconds",
           title="Enqueue -> decision latency, per second of decision")  # fmt: skip
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper left", fontsize=8)
    save(fig, "latency.png")


def _actions(plt, report: dict, save: _Saver) -> None:
    """Actions by language: totals (left), per second (right)."""
    s, x = report["series"], report["series"]["second"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [1, 2]})
    by_lang = report["totals"]["decisions_by_language"]
    langs = sorted(by_lang, key=lambda k: -sum(by_lang[k].values()))
    bottom = [0] * len(langs)
    for a in ACTIONS:
        vals = [by_lang[lang].get(a, 0) for lang in langs]
        a1.bar(langs, vals, bottom=bottom, color=ACTION_COLORS[a], label=a)
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    a1.set(ylabel="decisions", title="Actions by detected language")
    a1.legend(fontsize=8)
    _phases(a2, report)
    acts = [a for a in ACTIONS if sum(s["decisions_by_action"].get(a, []))]
    a2.stackplot(x, *[moving_average(s["decisions_by_action"][a], 3) for a in acts],
                 labels=acts, colors=[ACTION_COLORS[a] for a in acts], alpha=0.9)
    a2.set(xlabel="wall seconds", ylabel="decisions per second (3 s avg)",
           title="Actions over time")  # fmt: skip
    a2.legend(loc="upper left", fontsize=8, ncol=5)
    save(fig, "actions.png")


def _review_groups(report: dict) -> list[str]:
    """The language groups worth a panel: someone reads them or something waited."""
    groups = [g for g, r in report["review"].items()
              if r["demand"] or r["capacity_per_scenario_h"] > 0]  # fmt: skip
    return groups or list(report["review"])[:1]


def _review_panels(plt, report: dict, height: float) -> tuple[Any, list[tuple[Any, str, dict]]]:
    """A figure with a panel per language group worth one, phases shaded: the figure and
    (axes, group, the group's figures) per panel."""
    groups = _review_groups(report)
    fig, axes = plt.subplots(1, len(groups), figsize=(5.2 * len(groups), height), squeeze=False)
    panels = []
    for ax, g in zip(axes[0], groups, strict=True):
        _phases(ax, report, label=False)
        panels.append((ax, g, report["review"][g]))
    return fig, panels


def _review_queues(plt, report: dict, save: _Saver) -> None:
    """Per language: the real queues' depth against their admission limits and the expected
    wait against the SLAs, overflow periods shaded."""
    x = report["series"]["second"]
    fig, panels = _review_panels(plt, report, 3.9)
    for ax, g, r in panels:
        for p in r["overflow_periods"]:
            ax.axvspan(p["start_s"], p["end_s"], color="#ffcdd2", alpha=0.6, lw=0, zorder=0.5)
        ax.fill_between(x, [d or 0 for d in r["series"]["depth"]], color="#8e24aa", alpha=0.35,
                        step="post", label="queue depth (waiting + in review)")  # fmt: skip
        limit = sum(q["admission_limit"] or 0 for name, q in r["queues"].items()
                    if not name.endswith("/appeal") and (q["enqueued"] or q["overflowed"]))  # fmt: skip
        ax.axhline(limit, color="#8e24aa", lw=0.8, ls=":",
                   label=f"admission limits of its queues ({limit})")  # fmt: skip
        ax.set(title=f"review '{g}' ({r['capacity_per_scenario_h']:.3g}/scenario h)",
               xlabel="wall seconds", ylabel="posts")  # fmt: skip
        ax2 = ax.twinx()
        ax2.grid(False)
        ax2.plot(x, [w if w is not None else math.nan for w in r["series"]["expected_wait_h"]],
                 color="#e65100", lw=1.2, label="expected wait (scenario h)")  # fmt: skip
        for name, q in sorted(r["queues"].items()):
            if q.get("sla_s") and not name.endswith("/appeal"):
                ax2.axhline(q["sla_s"] / 3600, color="#e65100", lw=0.7, ls="--")
                ax2.text(x[-1], q["sla_s"] / 3600, f"SLA {name} ", color="#e65100", fontsize=7,
                         va="bottom", ha="right")  # fmt: skip
        ax2.set_ylabel("scenario hours")
        ax2.set_ylim(bottom=0)
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="upper left")
    save(fig, "review_queues.png")


def _review_flow(plt, report: dict, save: _Saver) -> None:
    """Per language, cumulative: posts that waited for a human, queued, limited by the
    fallback, resolved by the reviewers."""
    x = report["series"]["second"]
    fig, panels = _review_panels(plt, report, 3.6)
    for ax, g, r in panels:
        rs = r["series"]
        for series, color, label in ((r["arrivals"], "#212121", "waited for a human"),
                                     (rs["queued"], "#8e24aa", "queued for review"),
                                     (rs["overflowed"], "#ffb300", "limited by the fallback"),
                                     (rs["limited_pending"], "#6d4c41",
                                      "limited by a rule, pending review (never queued)"),
                                     (rs["resolved"], "#2e7d32", "resolved")):
            ax.plot(x, list(accumulate(series)), color=color, lw=1.3, label=label)
        ax.set(title=f"review '{g}': cumulative", xlabel="wall seconds", ylabel="posts")
        ax.legend(fontsize=7, loc="upper left")
    save(fig, "review_flow.png")


def plot_compare(cmp: dict, rep_a: dict, rep_b: dict, out: Path) -> str:
    plt = pyplot()
    queues = _review_groups(rep_a)
    fig, axes = plt.subplots(1, len(queues) + 1, figsize=(4.2 * (len(queues) + 1), 3.8),
                             squeeze=False)  # fmt: skip
    for ax, q in zip(axes[0], queues, strict=False):
        for rep, color, name in ((rep_a, "#1565c0", cmp["a"]["label"]),
                                 (rep_b, "#e65100", cmp["b"]["label"])):
            if q in rep["review"]:
                ax.plot(rep["series"]["second"],
                        [d or 0 for d in rep["review"][q]["series"]["depth"]],
                        color=color, lw=1.5, label=f"{name}")  # fmt: skip
        ax.set(title=f"review queue '{q}'", xlabel="wall seconds", ylabel="posts waiting")
        ax.legend(fontsize=8)
    ax = axes[0][-1]
    for rep, color, name in ((rep_a, "#1565c0", cmp["a"]["label"]),
                             (rep_b, "#e65100", cmp["b"]["label"])):
        ys = [v / 1000 if v is not None else math.nan for v in rep["series"]["latency_p99_ms"]]
        ax.plot(rep["series"]["second"], ys, color=color, lw=1.3, label=f"p99 {name}")
    ax.set(title="p99 latency", xlabel="wall seconds", ylabel="seconds")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "compare.png")
    plt.close(fig)
    return "compare.png"


def plot_capacity(results: dict, out: Path) -> Path:
    """p99 latency against the input rate of each step, one line per worker count."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    colors = ["#1565c0", "#e65100", "#2e7d32", "#6a1b9a"]
    for k, (w, r) in enumerate(results["workers"].items()):
        pts = sorted(r["steps"], key=lambda s: s["rate"])
        ax.plot([p["rate"] for p in pts], [(p["p99_ms"] or math.nan) / 1000 for p in pts],
                marker="o", color=colors[k % 4], label=f"{w} worker(s): ok up to {r['max_rate_ok']}/s")
    ax.axhline(results["slo_ms"] / 1000, color="black", ls=":", lw=1, label="2 s")
    ax.set_yscale("log")
    ax.set(xlabel="input rate (posts/s, constant)", ylabel="p99 latency (s)",
           title=f"Saturation: p99 vs input rate ({results['step_s']:.0f} s steps)")  # fmt: skip
    ax.legend(fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "capacity.png")
    plt.close(fig)
    return out / "capacity.png"
