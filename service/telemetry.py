"""Worker-side metrics, kept in Redis so that the API's one `/metrics` endpoint exports them.

Workers have no HTTP server of their own (and may run on other hosts), so each batch adds
its observations to Redis hashes, one pipeline per batch; the API reads them per scrape and
exports Prometheus histograms and counters:

* enqueue -> decision latency (seconds), per decision;
* batch size (posts per model call) and model time (seconds per call);
* decisions by language, action and every category a matched rule acted on.

A histogram hash holds one field per bucket (observations up to that bound, not yet
cumulative), ``sum`` and ``count``; the exporter makes the buckets cumulative.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

from service.queue import Keys


@dataclass(frozen=True)
class HistogramSpec:
    name: str
    help: str
    buckets: tuple[float, ...]  # upper bounds, ascending; +Inf is implied


LATENCY = HistogramSpec("floodgate_decision_latency_seconds",
                        "Enqueue to stored decision, per post",
                        (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 1800))  # fmt: skip
BATCH = HistogramSpec("floodgate_batch_size", "Posts per model call",
                      (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024))  # fmt: skip
MODEL_TIME = HistogramSpec("floodgate_model_seconds", "Seconds per batch in the decide path",
                           (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))  # fmt: skip
HISTOGRAMS = (LATENCY, BATCH, MODEL_TIME)
DECISIONS = "floodgate_decisions_total"


def metric_key(keys: Keys, name: str) -> str:
    return f"{keys.prefix}:metrics:{name}"


def bucket_field(spec: HistogramSpec, value: float) -> str:
    i = bisect.bisect_left(spec.buckets, value)
    return "+Inf" if i == len(spec.buckets) else repr(float(spec.buckets[i]))


def observe(pipe, keys: Keys, spec: HistogramSpec, values: Iterable[float]) -> None:
    """Queue the observations on a Redis pipeline (executed with the caller's others)."""
    key = metric_key(keys, spec.name)
    n, total, per_bucket = 0, 0.0, Counter()
    for v in values:  # one HINCRBY per bucket, not per value: a batch is one round trip
        per_bucket[bucket_field(spec, v)] += 1
        n, total = n + 1, total + v
    for field, count in per_bucket.items():
        pipe.hincrby(key, field, count)
    if n:
        pipe.hincrby(key, "count", n)
        pipe.hincrbyfloat(key, "sum", total)


def count_decisions(pipe, keys: Keys, labels: Sequence[tuple[str, str, str]]) -> None:
    """(language, action, category) per decision; category "none" when no rule named one."""
    for field, n in Counter(f"{lang}|{action}|{category}" for lang, action, category in labels).items():
        pipe.hincrby(metric_key(keys, DECISIONS), field, n)


def histogram_family(spec: HistogramSpec, raw: dict[str, str]) -> HistogramMetricFamily:
    """A Prometheus histogram from a hash written by `observe` (pure)."""
    cumulative, running = [], 0
    for bound in (*map(float, spec.buckets), math.inf):
        running += int(raw.get("+Inf" if bound == math.inf else repr(bound), 0))
        cumulative.append(("+Inf" if bound == math.inf else repr(bound), running))
    family = HistogramMetricFamily(spec.name, spec.help)
    family.add_metric([], cumulative, sum_value=float(raw.get("sum", 0.0)))
    return family


def decisions_family(raw: dict[str, str]) -> CounterMetricFamily:
    family = CounterMetricFamily(DECISIONS, "Decisions stored, by language, action and category",
                                 labels=["language", "action", "category"])  # fmt: skip
    for field, n in sorted(raw.items()):
        lang, action, category = (field.split("|") + ["", "", ""])[:3]
        family.add_metric([lang, action, category], int(n))
    return family


class Snapshot:
    """A prometheus_client collector over hashes read once per scrape."""

    def __init__(self, raw: dict[str, dict[str, str]]) -> None:
        self.raw = raw

    def collect(self):
        for spec in HISTOGRAMS:
            yield histogram_family(spec, self.raw.get(spec.name, {}))
        yield decisions_family(self.raw.get(DECISIONS, {}))


async def read_snapshot(client, keys: Keys) -> Snapshot:
    names = [s.name for s in HISTOGRAMS] + [DECISIONS]
    async with client.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.hgetall(metric_key(keys, name))
        values = await pipe.execute()
    return Snapshot(dict(zip(names, values, strict=True)))
