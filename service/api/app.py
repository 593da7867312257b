"""API: takes posts, serves decisions, statistics, health and metrics (FastAPI).

Every client error is a 4xx with one JSON shape that names the offending field:

    {"error": "validation_error", "detail": [{"field": "text", "message": "...", "type": "..."}]}

Bodies over the size limit (413) and bodies that are not UTF-8 (400) are refused by a
small ASGI middleware before FastAPI parses anything.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path as FilePath
from typing import Any

import redis
from fastapi import FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.config import Settings, get_settings
from service.heartbeat import read_live
from service.policy import PolicyError, load_policy
from service.policy.library import PolicyDirectory, PolicyRefused
from service.policy.parse import LoadedPolicy, load_bundle, policy_files
from service.queue import FULL, QUEUED, AsyncProducer, Keys
from service.redisdb import UNAVAILABLE, clients_for
from service.schemas import (
    POST_ID,
    Accepted,
    BatchIn,
    BatchItemResult,
    BatchResult,
    Decision,
    Failed,
    Pending,
    PolicySourceIn,
    PostIn,
)
from service.store import DecisionReader, PolicyRegistry, ShadowStats

log = logging.getLogger("floodgate.api")


def _field(loc: tuple | list, root: str | None = None) -> str:
    """Dotted field name: FastAPI's leading "body" is dropped from a request error's
    location (only that one: a post may have a bad field literally named "body"); a
    batch item's errors are rooted at ``root`` ("posts.<i>")."""
    parts = [str(p) for p in loc]
    if root is None:
        return ".".join(parts[1:] if parts[:1] == ["body"] else parts) or "body"
    return ".".join([root, *parts])


def _errors(
    exc: ValidationError | RequestValidationError, root: str | None = None
) -> list[dict[str, Any]]:
    return [
        {
            # a JSON decode error is located at ("body", <char offset>): the body is at fault
            "field": (root or "body") if e["type"] == "json_invalid" else _field(e["loc"], root),
            "message": e["msg"].removeprefix("Value error, "),
            "type": e["type"],
        }
        for e in exc.errors()
    ]


def error_response(
    status: int, error: str, detail: list[dict[str, Any]], headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": error, "detail": detail},
                        headers=headers)  # fmt: skip


def unavailable(message: str, retry_after_s: int = 2) -> JSONResponse:
    return error_response(503, "unavailable", [{"field": "server", "message": message,
                          "type": "unavailable"}], {"Retry-After": str(retry_after_s)})  # fmt: skip


BACKLOG_FULL = {
    "field": "post",
    "message": "the moderation backlog is full; send it again after Retry-After seconds",
    "type": "backlog_full",
}


class BodyGuard:
    """Refuse oversize and non-UTF-8 request bodies before the app reads them."""

    def __init__(self, app, max_bytes: int, read_timeout_s: float = 15.0) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.read_timeout_s = read_timeout_s

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send, 413, "body_too_large",
                               f"body is {int(declared)} bytes; the limit is {self.max_bytes}")  # fmt: skip
            return
        chunks, size = [], 0
        deadline = asyncio.get_running_loop().time() + self.read_timeout_s
        while True:
            try:
                # the whole body within the timeout: a client that stalls below its declared
                # length must not hold a connection (and its memory) forever
                message = await asyncio.wait_for(
                    receive(), max(deadline - asyncio.get_running_loop().time(), 0.001)
                )
            except TimeoutError:
                await self._refuse(scope, receive, send, 408, "body_timeout",
                                   f"the body did not arrive within {self.read_timeout_s:g} s")  # fmt: skip
                return
            if message["type"] == "http.disconnect":
                return  # the client went away mid-body: nothing to answer, nothing to log
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(scope, receive, send, 413, "body_too_large",
                                   f"body exceeds the limit of {self.max_bytes} bytes")  # fmt: skip
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as exc:
            await self._refuse(scope, receive, send, 400, "invalid_utf8",
                               f"body is not valid UTF-8 (byte {exc.start})")  # fmt: skip
            return
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    @staticmethod
    async def _refuse(scope, receive, send, status: int, error: str, message: str) -> None:
        response = error_response(
            status, error, [{"field": "body", "message": message, "type": error}]
        )
        await response(scope, receive, send)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
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
        self.redis_up = Gauge("floodgate_redis_up", "1 when Redis answered the last scrape", registry=r)
        self.workers = Gauge(
            "floodgate_workers_alive", "Workers with a fresh heartbeat", registry=r
        )

    def update(self, stats: dict) -> None:
        self.backlog.set(stats["stream"]["length"])
        self.pending.set(stats["stream"]["pending"])
        self.lag.set(stats["stream"]["lag_ms"] / 1000)
        self.dead.set(stats["dead_letters"])
        for lang, actions in stats["decisions"]["by_language"].items():
            for action, n in actions.items():
                self.decisions.labels(lang, action).set(n)
        self.throughput.set(stats["throughput"]["per_s"])


def _policy_errors(exc: PolicyError) -> JSONResponse:
    detail = [{"field": "policy", "message": line, "type": "policy_error"} for line in exc.errors]
    return error_response(422, "invalid_policy", detail)


def _refused(exc: PolicyRefused) -> JSONResponse:
    detail = [{"field": exc.field, "message": exc.message, "type": "policy_refused"}]
    return error_response(exc.status, "policy_refused", detail)


def publish(registry: PolicyRegistry, lp: LoadedPolicy, role: str = "live") -> dict:
    """Make a validated policy the live (or shadow) version."""
    changed = registry.publish(lp.bundle(), lp.version, lp.name, role=role)
    if changed:
        log.info("%s policy is now %s (%s, from %s)", role, lp.version, lp.name, lp.source)
    return {"role": role, "name": lp.name, "version": lp.version, "changed": changed}


def publish_file(registry: PolicyRegistry, path: FilePath, role: str = "live") -> dict:
    """Validate the policy at `path` (server configuration, never a client's path) and
    publish it. Raises PolicyError (with `check`'s file:line errors) and then changes nothing.
    """
    return publish(registry, load_policy(path), role)


def _publish_at_start(registry: PolicyRegistry, settings: Settings) -> None:
    try:
        publish_file(registry, settings.policy_path)
    except PolicyError as exc:
        if registry.current()["live"] is None:
            raise
        log.error("policy file is invalid; the live version stays:\n%s", exc)
    if settings.shadow_policy_path:
        publish_file(registry, settings.shadow_policy_path, role="shadow")


def _fingerprint(path: FilePath) -> tuple:
    """Modification times and sizes of the policy and the files it includes."""
    try:
        files = policy_files(path)
    except PolicyError:
        files = [path]  # invalid right now: watch the file itself until it is fixed
    out = []
    for f in files:
        try:
            st = f.stat()
            out.append((str(f), st.st_mtime_ns, st.st_size))
        except OSError:
            out.append((str(f), None, None))
    return tuple(out)


async def _watch_policy(registry: PolicyRegistry, settings: Settings) -> None:
    """Poll the policy files; publish a valid change, log an invalid one (the live one stays).

    Polling keeps it dependency-free and works on every file system (bind mounts, NFS).
    """
    path = settings.policy_path
    seen = await asyncio.to_thread(_fingerprint, path)
    while True:
        await asyncio.sleep(settings.policy_watch_interval_s)
        try:
            now = await asyncio.to_thread(_fingerprint, path)
            if now == seen:
                continue
            seen = now
            await asyncio.to_thread(publish_file, registry, path)
        except PolicyError as exc:
            log.error("policy edit refused, the live version stays:\n%s", exc)
        except Exception:  # the watcher must survive a Redis hiccup
            log.exception("policy watcher")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    if not settings.redis_url:
        raise ValueError("the API needs a Redis URL (serve starts an embedded one)")
    keys = Keys(settings.key_prefix)
    metrics = Metrics()
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        sync_client, client = clients_for(settings)
        state["client"] = client
        state["producer"] = AsyncProducer(
            client, keys, settings.decision_ttl_s, settings.max_backlog
        )
        state["reader"] = DecisionReader(client, keys, settings.consumer_group)
        state["moderator_lock"] = asyncio.Lock()
        state["sync_slots"] = asyncio.Semaphore(settings.max_sync_inflight)
        registry = PolicyRegistry(sync_client, keys)
        state["registry"] = registry
        state["shadow_stats"] = ShadowStats(sync_client, keys)
        await asyncio.to_thread(_publish_at_start, registry, settings)
        watcher = None
        if settings.policy_watch:
            watcher = asyncio.create_task(_watch_policy(registry, settings))
        yield
        if watcher:
            watcher.cancel()
        await client.aclose()
        await client.connection_pool.disconnect()
        sync_client.close()

    app = FastAPI(
        title="Floodgate",
        version="0.1.0",
        description="Content moderation for a bilingual platform under an influx.",
        lifespan=lifespan,
    )
    app.add_middleware(
        BodyGuard, max_bytes=settings.max_body_bytes, read_timeout_s=settings.body_read_timeout_s
    )

    @app.exception_handler(redis.RedisError)
    async def _redis_error(_: Request, exc: redis.RedisError) -> JSONResponse:
        # Redis away (down, restarting, loading, pool exhausted): a JSON 503 the client can
        # retry after; nothing accepted is lost, since a 202 is only sent after Redis replied
        if isinstance(exc, UNAVAILABLE):
            return unavailable(f"Redis is unavailable ({type(exc).__name__}); retry shortly")
        log.exception("Redis error")
        return error_response(500, "internal_error",
                              [{"field": "server", "message": "storage error", "type": "redis"}])  # fmt: skip

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(500, "internal_error",
                              [{"field": "server", "message": "internal error", "type": "internal"}])  # fmt: skip

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "validation_error", _errors(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(
            exc.status_code,
            "http_error",
            [{"field": "path", "message": str(exc.detail), "type": "http"}],
        )

    @app.middleware("http")
    async def _observe(request: Request, call_next):
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        name = getattr(route, "path", "unmatched")
        metrics.requests.labels(name, str(response.status_code)).inc()
        metrics.latency.labels(name).observe(time.perf_counter() - started)
        return response

    def _new_id() -> str:
        return f"p_{uuid.uuid4().hex}"

    async def retry_after() -> int:
        """Seconds until the workers have drained 5 % of the backlog bound, at the rate of
        the last 10 s (1..60): long enough to matter, short enough not to idle them."""
        rate = await state["reader"].recent_rate(10)
        return int(min(60, max(1, 0.05 * settings.max_backlog / max(rate, 1.0))))

    async def backlog_full() -> JSONResponse:
        return error_response(429, "backlog_full", [BACKLOG_FULL],
                              {"Retry-After": str(await retry_after())})  # fmt: skip

    @app.post("/v1/posts", status_code=202, response_model=Accepted, tags=["posts"])
    async def submit(post: PostIn) -> Any:
        """Queue a post. The 202 is sent once the post is durably in Redis."""
        post_id = post.post_id or _new_id()
        [outcome] = await state["producer"].enqueue_many(
            [(post_id, post.model_dump(mode="json", exclude_none=True))]
        )
        if outcome == FULL:
            metrics.posts.labels("refused").inc()
            return await backlog_full()
        metrics.posts.labels(outcome).inc()
        return Accepted(post_id=post_id, status=outcome)

    @app.post("/v1/posts/batch", status_code=202, response_model=BatchResult, tags=["posts"])
    async def submit_batch(batch: BatchIn) -> Any:
        """Queue up to 1,000 posts; each is accepted or rejected on its own."""
        results: list[BatchItemResult] = []
        good: list[tuple[int, str, dict]] = []
        for i, raw in enumerate(batch.posts):
            try:
                post = PostIn.model_validate(raw)
            except ValidationError as exc:
                errors = _errors(exc, root=f"posts.{i}")
                results.append(BatchItemResult(index=i, status="rejected", errors=errors))
                continue
            post_id = post.post_id or _new_id()
            good.append((i, post_id, post.model_dump(mode="json", exclude_none=True)))
        outcomes = await state["producer"].enqueue_many([(pid, p) for _, pid, p in good])
        for (i, post_id, _), outcome in zip(good, outcomes, strict=True):
            if outcome == FULL:
                results.append(BatchItemResult(index=i, post_id=post_id, status="rejected",
                                               errors=[BACKLOG_FULL]))  # fmt: skip
            else:
                results.append(BatchItemResult(index=i, post_id=post_id, status=outcome))
        results.sort(key=lambda r: r.index)
        accepted = sum(r.status != "rejected" for r in results)
        refused = outcomes.count(FULL)
        metrics.posts.labels("queued").inc(outcomes.count(QUEUED))
        metrics.posts.labels("duplicate").inc(accepted - outcomes.count(QUEUED))
        metrics.posts.labels("refused").inc(refused)
        metrics.posts.labels("rejected").inc(len(results) - accepted - refused)
        body = BatchResult(accepted=accepted, rejected=len(results) - accepted, results=results)
        if refused:  # the refused posts may be sent again after Retry-After
            return JSONResponse(body.model_dump(mode="json"), status_code=202,
                                headers={"Retry-After": str(await retry_after())})  # fmt: skip
        return body

    @app.get(
        "/v1/posts/{post_id}/decision",
        response_model=Decision | Failed,
        responses={202: {"model": Pending}, 404: {"description": "unknown post id"}},
        tags=["posts"],
    )
    async def get_decision(post_id: str = Path(pattern=POST_ID)) -> Any:
        """The decision (200), still queued (202), dead-lettered (200, status failed), unknown (404)."""
        status, value = await state["reader"].lookup(post_id)
        if status == "decided":
            return JSONResponse(value)
        if status == "failed":
            return Failed(post_id=post_id, error=value)
        if status == "pending":
            return JSONResponse(Pending(post_id=post_id).model_dump(), status_code=202)
        return error_response(
            404,
            "not_found",
            [{"field": "post_id", "message": f"unknown post id {post_id!r}", "type": "not_found"}],
        )

    @app.get("/v1/decisions", tags=["posts"])
    async def decision_feed(
        after: str = Query("0", pattern=r"^\d{1,20}(-\d{1,20})?$",
                           description="cursor from the last page"),
        limit: int = Query(500, ge=1, le=5000),
    ) -> Any:
        """Every decision in the order it was stored (the audit stream), page by page.

        Start with `after=0` and pass the returned `next` to get the following page; an
        empty page means caught up (poll again later with the same cursor).
        """
        if any(int(part) >= 2**64 for part in after.split("-")):  # a stream id is 2 x u64
            return error_response(422, "validation_error", [{"field": "after", "message":
                                  "cursor out of range", "type": "value_error"}])  # fmt: skip
        items, cursor = await state["reader"].feed(after, limit)
        return {"decisions": items, "next": cursor}

    @app.post("/v1/moderate", response_model=Decision, tags=["posts"])
    async def moderate(post: PostIn) -> Any:
        """Decide one post synchronously (for tuning and small callers; not queued, not stored)."""
        slots: asyncio.Semaphore = state["sync_slots"]
        if slots.locked():  # bounded: a flood of sync calls must not starve the API
            return error_response(429, "too_many_requests", [{"field": "request", "message":
                                  f"{settings.max_sync_inflight} synchronous calls are in flight; "
                                  "retry after Retry-After seconds", "type": "sync_inflight"}],
                                  {"Retry-After": "1"})  # fmt: skip
        async with slots:
            return await _moderate(post)

    async def _moderate(post: PostIn) -> Decision:
        from service.pipeline import Job, Moderator  # torch loads on the first sync call only

        async with state["moderator_lock"]:
            if "moderator" not in state:
                state["moderator"] = await asyncio.to_thread(Moderator.from_settings, settings)
            # decide with the live version, like the workers
            live = (await asyncio.to_thread(state["registry"].current))["live"]
            if live and live != state["moderator"].policy.version:
                bundle = await asyncio.to_thread(state["registry"].bundle, live)
                if bundle:
                    lp = await asyncio.to_thread(load_bundle, bundle)
                    await asyncio.to_thread(state["moderator"].use_policy, lp)
        job = Job(post.post_id or _new_id(), post)
        [decision] = await asyncio.to_thread(state["moderator"].decide, [job])
        return decision

    @app.get("/v1/stats", tags=["operations"])
    async def stats() -> dict:
        """Backlog, pending, dead letters, decisions by language and action, throughput."""
        out = await state["reader"].stats()
        out["workers"] = await read_live(state["client"], keys, settings.heartbeat_ttl_s)
        shadow = (await asyncio.to_thread(state["registry"].current))["shadow"]
        out["shadow"] = (
            await asyncio.to_thread(state["shadow_stats"].report, shadow, 5) if shadow else None
        )
        return out

    # ------------------------------------------------------------------ policy

    def _describe(version: str | None) -> dict | None:
        if version is None:
            return None
        bundle = state["registry"].bundle(version) or {}
        return {"name": bundle.get("name"), "version": version, "source": bundle.get("source")}

    @app.get("/v1/policy", tags=["policy"])
    async def live_policy() -> dict:
        """The live policy (and the shadow candidate, if any)."""
        current = await asyncio.to_thread(state["registry"].current)
        return {
            "live": await asyncio.to_thread(_describe, current["live"]),
            "shadow": await asyncio.to_thread(_describe, current["shadow"]),
            "watching": str(settings.policy_path) if settings.policy_watch else None,
        }

    policy_dir = PolicyDirectory(settings.resolved_policy_dir)

    def _load_source(body: PolicySourceIn) -> LoadedPolicy:
        if body.name is not None:
            return policy_dir.load(body.name)
        return policy_dir.load_text(body.text or "")

    async def _publish_source(body: PolicySourceIn | None, role: str) -> Any:
        try:
            if body is None:
                return await asyncio.to_thread(
                    publish_file, state["registry"], settings.policy_path, role
                )
            lp = await asyncio.to_thread(_load_source, body)
            return await asyncio.to_thread(publish, state["registry"], lp, role)
        except PolicyRefused as exc:
            return _refused(exc)
        except PolicyError as exc:
            return _policy_errors(exc)

    @app.post("/v1/policy/reload", tags=["policy"])
    async def reload_policy(body: PolicySourceIn | None = None) -> Any:
        """Without a body, re-read the configured policy file; with one, publish the named
        file of the policy directory or the uploaded text. A valid policy goes live, an
        invalid one is refused (422 with file:line errors) and the live one stays."""
        return await _publish_source(body, "live")

    @app.get("/v1/policy/versions", tags=["policy"])
    async def policy_history(limit: int = 100) -> list[dict]:
        """Every change of the live and shadow versions, newest first."""
        return await asyncio.to_thread(state["registry"].history, min(max(limit, 1), 10_000))

    @app.get("/v1/policy/versions/{version}", tags=["policy"])
    async def policy_version(version: str) -> Any:
        """The exact policy (YAML and included files) of a version that has been live."""
        bundle = await asyncio.to_thread(state["registry"].bundle, version)
        if bundle is None:
            return error_response(
                404,
                "not_found",
                [
                    {
                        "field": "version",
                        "message": f"unknown policy version {version!r}",
                        "type": "not_found",
                    }
                ],
            )
        return bundle

    @app.post("/v1/policy/shadow", tags=["policy"])
    async def start_shadow(body: PolicySourceIn) -> Any:
        """Run a candidate policy beside the live one on every post; nothing it decides is
        applied. The candidate is a file of the policy directory (`name`) or uploaded
        (`text`); a name outside the directory is refused."""
        return await _publish_source(body, "shadow")

    @app.delete("/v1/policy/shadow", tags=["policy"])
    async def stop_shadow() -> dict:
        return {"stopped": await asyncio.to_thread(state["registry"].clear, "shadow")}

    @app.get("/v1/policy/shadow/report", tags=["policy"])
    async def shadow_report(examples: int = 20) -> Any:
        """How often and where the shadow policy disagrees with the live one, with examples."""
        shadow = (await asyncio.to_thread(state["registry"].current))["shadow"]
        if shadow is None:
            return error_response(
                404,
                "not_found",
                [
                    {
                        "field": "shadow",
                        "message": "no shadow policy is running",
                        "type": "not_found",
                    }
                ],
            )
        return await asyncio.to_thread(
            state["shadow_stats"].report, shadow, min(max(examples, 0), 200)
        )

    @app.get("/healthz", tags=["operations"])
    async def healthz() -> Any:
        """ok (200) when Redis answers and at least one worker is alive; else degraded (503):
        posts would be accepted but nobody would decide them."""
        try:
            await state["client"].ping()
            workers = await read_live(state["client"], keys, settings.heartbeat_ttl_s)
        except Exception as exc:  # any failure to reach Redis means not healthy
            return JSONResponse({"status": "degraded", "redis": f"unavailable: {exc}",
                                 "workers": None}, status_code=503,
                                headers={"Retry-After": "2"})  # fmt: skip
        body = {"status": "ok" if workers else "degraded", "redis": "ok", "workers": len(workers)}
        return JSONResponse(body, status_code=200 if workers else 503)

    @app.get("/livez", tags=["operations"])
    async def livez() -> dict:
        """The API process answers (whatever Redis and the workers do)."""
        return {"status": "ok"}

    @app.get("/metrics", tags=["operations"])
    async def prometheus() -> Response:
        try:
            metrics.update(await state["reader"].stats())
            workers = await read_live(state["client"], keys, settings.heartbeat_ttl_s)
            metrics.redis_up.set(1)
            metrics.workers.set(len(workers))
        except UNAVAILABLE:  # still answer: an outage is what operators want to see
            metrics.redis_up.set(0)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
