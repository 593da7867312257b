"""/metrics tells an operator where the service stands: the workers' latency, batch and
model-time histograms and decision counters (kept in Redis by the workers), worker and
policy versions; and every metric the Grafana dashboard uses exists."""

from __future__ import annotations

import json
import re

import httpx
from prometheus_client.parser import text_string_to_metric_families

from service.config import REPO_ROOT
from service.telemetry import LATENCY, bucket_field, histogram_family
from tests.conftest import wait_for_decision

DASHBOARD = REPO_ROOT / "docs" / "grafana" / "floodgate.json"


def samples(text: str) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}  # fmt: skip


def test_histogram_buckets_are_cumulative():
    raw = {bucket_field(LATENCY, 0.04): "2", bucket_field(LATENCY, 0.7): "1",
           bucket_field(LATENCY, 10_000): "1", "sum": "10000.8", "count": "4"}  # fmt: skip
    [metric] = histogram_family(LATENCY, raw).samples[:1]
    buckets = {s.labels["le"]: s.value for s in histogram_family(LATENCY, raw).samples
               if s.name.endswith("_bucket")}  # fmt: skip
    assert buckets["0.05"] == 2 and buckets["0.5"] == 2 and buckets["1.0"] == 3
    assert buckets["+Inf"] == 4 and metric.name.endswith("_bucket")


def test_worker_metrics_reach_the_api(service, settings):
    with httpx.Client(base_url=service.url, timeout=30) as http:
        posts = [{"post_id": f"m-{i}", "text": t} for i, t in enumerate(
            ["hello from Texas", "I will kill you and your whole family", "今天做了红烧肉"])]  # fmt: skip
        assert http.post("/v1/posts/batch", json={"posts": posts}).status_code == 202
        for p in posts:
            assert wait_for_decision(service.url, p["post_id"]).status_code == 200
        text = http.get("/metrics").text
    m = samples(text)
    assert m[("floodgate_decision_latency_seconds_count", ())] >= 3
    assert m[("floodgate_batch_size_count", ())] >= 1
    assert m[("floodgate_model_seconds_sum", ())] > 0
    by_lang = {}
    for (name, labels), v in m.items():
        if name == "floodgate_decisions_total":
            by_lang[dict(labels)["language"]] = by_lang.get(dict(labels)["language"], 0) + v
    assert by_lang.get("en", 0) >= 2 and by_lang.get("zh", 0) >= 1
    assert any(name == "floodgate_decisions_total" and dict(labels)["category"] == "violence"
               for name, labels in m)  # fmt: skip
    [info] = [dict(labels) for name, labels in m if name == "floodgate_worker_info"]
    assert info["worker"] == "test-worker" and info["model_version"] and info["policy_version"]
    assert any(name == "floodgate_policy_info" and dict(labels)["role"] == "live" for name, labels in m)
    # the dashboard only queries metrics that exist
    exprs = [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p["targets"]]
    used = {n for e in exprs for n in re.findall(r"\b(floodgate_[a-z_]+)", e)}
    families = list(text_string_to_metric_families(text))  # counters are named without _total
    exported = {name for name, _ in m} | {f.name for f in families} | {f"{f.name}_total" for f in families}
    assert used <= exported, used - exported
