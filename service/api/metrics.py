"""Prometheus metrics of the API process, and the middleware that counts every request."""

from __future__ import annotations

import time

from fastapi import FastAPI
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.posts = Counter(
            "floodgate_posts_total", "Posts received by outcome", ["outcome"], registry=r
        )
        self.requests = Counter(
            "floodgate_http_requests_total", "HTTP requests", ["route", "status"], registry=r
        )
        self.latency = Histogram(
            "floodgate_http_request_seconds", "HTTP request latency", ["route"], registry=r
        )
        self.backlog = Gauge(
            "floodgate_stream_length", "Posts accepted and not yet decided", registry=r
        )
        self.pending = Gauge(
            "floodgate_stream_pending", "Posts delivered to a worker, not acked", registry=r
        )
        self.lag = Gauge(
            "floodgate_stream_lag_seconds", "Age of the oldest undecided post", registry=r
        )
        self.dead = Gauge("floodgate_dead_letters", "Entries in the dead-letter stream", registry=r)
        self.decisions = Gauge(
            "floodgate_decisions",
            "Decisions stored, by language and action",
            ["language", "action"],
            registry=r,
        )
        self.throughput = Gauge(
            "floodgate_decisions_per_second", "Decisions per second, last minute", registry=r
        )
        self.redis_up = Gauge(
            "floodgate_redis_up", "1 when Redis answered the last scrape", registry=r
        )
        self.workers = Gauge("floodgate_workers_alive", "Workers with a fresh heartbeat", registry=r)
        self.worker_info = Gauge(
            "floodgate_worker_info", "A live worker and the model and policy it decides with",
            ["worker", "model_version", "policy_version"], registry=r,
        )  # fmt: skip
        self.heartbeat_age = Gauge(
            "floodgate_worker_heartbeat_age_seconds", "Seconds since a live worker's last beat",
            ["worker"], registry=r,
        )  # fmt: skip
        self.policy_info = Gauge(
            "floodgate_policy_info", "The live and shadow policy versions", ["role", "version"],
            registry=r,
        )  # fmt: skip
        self.denied = Counter(
            "floodgate_auth_denied_total", "Requests refused: 401 or 403", ["status"], registry=r
        )
        self.rate_limited = Counter(
            "floodgate_rate_limited_total", "Requests or posts over a rate limit", ["scope"],
            registry=r,
        )  # fmt: skip

    def update(self, stats: dict, workers: list[dict], policy: dict[str, str | None]) -> None:
        self.backlog.set(stats["stream"]["length"])
        self.pending.set(stats["stream"]["pending"])
        self.lag.set(stats["stream"]["lag_ms"] / 1000)
        self.dead.set(stats["dead_letters"])
        for lang, actions in stats["decisions"]["by_language"].items():
            for action, n in actions.items():
                self.decisions.labels(lang, action).set(n)
        self.throughput.set(stats["throughput"]["per_s"])
        self.workers.set(len(workers))
        for gauge in (self.worker_info, self.heartbeat_age, self.policy_info):
            gauge.clear()  # workers come and go; versions change
        for w in workers:
            self.worker_info.labels(w["name"], w["model_version"], w["policy_version"]).set(1)
            self.heartbeat_age.labels(w["name"]).set(w["last_heartbeat_ms"] / 1000)
        for role, version in policy.items():
            if version:
                self.policy_info.labels(role, version).set(1)
        self.redis_up.set(1)

    def install(self, app: FastAPI) -> None:
        """Count every request by route template and status, with its latency."""
        app.add_middleware(_Observe, metrics=self)


class _Observe:
    """Pure ASGI middleware (Starlette's BaseHTTPMiddleware costs a task and two memory
    streams per request): the status from the response start, the route once it is known."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500

        async def send_status(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            name = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(name, str(status)).inc()
            self.metrics.latency.labels(name).observe(time.perf_counter() - started)


# (name, help, the queue view's field) of each per-queue review figure (review.rules.queue_view)
REVIEW_GAUGES = (
    ("floodgate_review_waiting", "Items waiting in a review queue", "waiting"),
    ("floodgate_review_in_review", "Items claimed by a reviewer, not yet resolved", "in_review"),
    ("floodgate_review_oldest_age_seconds", "Age of the queue's oldest unresolved item (0: none)",
     "oldest_age_s"),
    ("floodgate_review_expected_wait_seconds",
     "Waiting items / the language's review capacity (+Inf: nobody reads it)", "expected_wait_s"),
    ("floodgate_review_sla_seconds", "The queue's SLA", "sla_s"),
    ("floodgate_review_capacity_per_hour", "Items per hour the language's reviewers can take",
     "capacity_per_hour"),
    ("floodgate_review_over_sla", "1 while the expected wait is over the SLA", "over_sla"),
    ("floodgate_review_backlog", "Overflowed items waiting, limited meanwhile, for room in the "
     "queue", "backlog"),
)  # fmt: skip
REVIEW_COUNTERS = (
    ("floodgate_review_enqueued", "Items that entered a review queue", "enqueued"),
    ("floodgate_review_overflowed", "Review outcomes that took the queue's fallback action "
     "instead (its expected wait was over its SLA)", "overflowed"),
    ("floodgate_review_admitted", "Overflowed items that later entered the queue from its "
     "backlog", "admitted"),
)  # fmt: skip


def _gauge_value(field: str, view: dict) -> float | None:
    value = view.get(field)
    if field == "expected_wait_s" and value is None and view.get("waiting"):
        return float("inf")  # items wait and nobody reads the language
    if field == "oldest_age_s" and value is None:
        return 0.0
    return None if value is None else float(value)


class ReviewFamilies:
    """The review queues and verdicts as Prometheus families, built on each scrape from the
    queue views the review API lists and the verdict counters (review.rules.verdict_rows)."""

    def __init__(self, queues: list[dict], verdicts: list[dict]) -> None:
        self.queues, self.verdicts = queues, verdicts

    def collect(self):
        labels = ["queue", "language", "reason"]
        for name, text, field in REVIEW_GAUGES:
            family = GaugeMetricFamily(name, text, labels=labels)
            for q in self.queues:
                value = _gauge_value(field, q)
                if value is not None:
                    family.add_metric([q["queue"], q["language"], q["reason"]], value)
            yield family
        for name, text, field in REVIEW_COUNTERS:
            family = CounterMetricFamily(name, text, labels=labels)
            for q in self.queues:
                family.add_metric([q["queue"], q["language"], q["reason"]], q[field])
            yield family
        verdicts = CounterMetricFamily(
            "floodgate_review_verdicts", "Reviewers' verdicts by language, kind (review or "
            "appeal) and action", labels=["language", "kind", "action"])  # fmt: skip
        for v in self.verdicts:
            verdicts.add_metric([v["language"], v["kind"], v["action"]], v["count"])
        yield verdicts


class MixFamilies:
    """Language-mix drift (service/langmix) as Prometheus families, from the state the
    workers' judge stored (None: never judged, nothing exported)."""

    def __init__(self, state: dict | None) -> None:
        self.state = state

    def collect(self):
        if not self.state:
            return
        st = self.state
        shares = GaugeMetricFamily("floodgate_language_share", "Share of the posts decided over "
                                   "the drift window, by language", labels=["language"])  # fmt: skip
        alerts = GaugeMetricFamily("floodgate_language_mix_alert", "1 while the language's "
                                   "drift alert is raised", labels=["language"])  # fmt: skip
        for code in sorted(set(st["shares"]) | set(st["marks"]) | set(st["raised"])):
            shares.add_metric([code], st["shares"].get(code, 0.0))
            alerts.add_metric([code], 1.0 if code in st["raised"] else 0.0)
        yield shares
        yield alerts
        yield GaugeMetricFamily("floodgate_language_mix_posts", "Posts in the drift window",
                                value=st["posts"])  # fmt: skip
        profile = GaugeMetricFamily("floodgate_policy_profile_info", "The policy profile "
                                    "decisions use (base: the policy as written)",
                                    labels=["profile"])  # fmt: skip
        profile.add_metric([st.get("profile") or "base"], 1.0)
        yield profile
