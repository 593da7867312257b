"""A small Python client for Floodgate's API (httpx), sync and async alike.

    from service.client import Floodgate
    with Floodgate("http://127.0.0.1:8000", api_key="fg_...") as fg:
        fg.submit({"post_id": "p1", "text": "hello"})
        decision = fg.wait("p1")
        now = fg.moderate({"text": "I will find you"})

It honours backpressure the way the API asks: posts refused because the backlog is full
(429, or `backlog_full` items in a batch) and 503s are sent again after `Retry-After`, up to
`retries` times; every other answer is returned or raised as `FloodgateError` with the API's
one error shape. `floodgate replay` sends its posts through `AsyncFloodgate.submit_batch`
and its simulated reviewers claim and resolve through `AsyncFloodgate.claim` / `resolve`.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

RETRYABLE = (429, 503)


class FloodgateError(Exception):
    """An answer the client will not retry: status and the API's error body."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status, self.body = status, body


@dataclass
class BatchOutcome:
    """Per post id: "queued" / "duplicate" (accepted) or the errors it was rejected with;
    `refused` are the ids still refused for a full backlog when the retries ran out."""

    accepted: dict[str, str] = field(default_factory=dict)
    rejected: dict[str, list] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)
    resends: int = 0  # posts sent again after Retry-After
    requests: int = 0  # requests made (more than 1: something was sent again)


def retry_after(r: httpx.Response, default: float = 1.0) -> float:
    try:
        return min(max(float(r.headers.get("retry-after", default)), 0.1), 60.0)
    except ValueError:
        return default


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _body(r: httpx.Response) -> Any:
    try:
        return r.json()
    except ValueError:
        return r.text


def _settle(r: httpx.Response, ok: tuple[int, ...], attempt: int, retries: int) -> bool:
    """True: the answer is one of ``ok``; False: a 429/503 to retry after Retry-After;
    raises FloodgateError for any other answer, or when the retries are spent."""
    if r.status_code in ok:
        return True
    if r.status_code not in RETRYABLE or attempt == retries:
        raise FloodgateError(r.status_code, _body(r))
    return False


def _claim_body(count: int, queue: str | None) -> dict:
    return {"count": count, **({"queue": queue} if queue else {})}


def _split(posts: list[dict], r: httpx.Response, out: BatchOutcome) -> list[dict]:
    """Record a 202 batch answer; the posts refused for a full backlog, to send again."""
    again = []
    for res in r.json()["results"]:
        post = posts[res["index"]]
        errors = res.get("errors") or []
        if any(e.get("type") == "backlog_full" for e in errors):
            again.append(post)
        elif res["status"] == "rejected":
            out.rejected[post.get("post_id") or f"#{res['index']}"] = errors
        else:
            out.accepted[res["post_id"]] = res["status"]
    return again


class AsyncFloodgate:
    def __init__(self, base_url: str, api_key: str | None = None, *, timeout: float = 30.0,
                 retries: int = 30, client: httpx.AsyncClient | None = None) -> None:  # fmt: skip
        self.http = client or httpx.AsyncClient(base_url=base_url, timeout=timeout,
                                                headers=_headers(api_key))  # fmt: skip
        self.retries = retries

    async def __aenter__(self) -> AsyncFloodgate:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.aclose()

    async def submit_batch(self, posts: list[dict], on_retry=None) -> BatchOutcome:
        """POST /v1/posts/batch, sending refused posts again after Retry-After, and the
        whole request again after a connection error (the API is idempotent by post id).
        ``on_retry(reason)`` hears of every retry (the replay counts them as errors)."""
        out, todo = BatchOutcome(), list(posts)
        for attempt in range(self.retries + 1):
            out.requests += 1
            try:
                r = await self.http.post("/v1/posts/batch", json={"posts": todo})
            except httpx.TransportError as exc:
                if on_retry:
                    on_retry(type(exc).__name__)
                if attempt == self.retries:
                    raise
                await asyncio.sleep(0.5 * (attempt + 1))
                continue
            if r.status_code != 202 and on_retry:
                on_retry(f"HTTP {r.status_code}")
            if r.status_code == 202:
                todo = _split(todo, r, out)
                if not todo:
                    return out
            elif r.status_code not in RETRYABLE:
                raise FloodgateError(r.status_code, _body(r))
            if attempt < self.retries:
                out.resends += len(todo)
                await asyncio.sleep(retry_after(r))
        out.refused = [p.get("post_id", "") for p in todo]
        return out

    async def _call(self, method: str, path: str, ok: tuple[int, ...], **kw: Any) -> httpx.Response:
        for attempt in range(self.retries + 1):
            r = await self.http.request(method, path, **kw)
            if _settle(r, ok, attempt, self.retries):
                return r
            await asyncio.sleep(retry_after(r))
        raise AssertionError("unreachable")

    async def moderate(self, post: dict) -> dict:
        r = await self.http.post("/v1/moderate", json=post)
        if r.status_code != 200:
            raise FloodgateError(r.status_code, _body(r))
        return r.json()

    async def decision(self, post_id: str) -> dict | None:
        """The decision (with the human side merged in), None while it is pending."""
        r = await self._call("GET", f"/v1/posts/{post_id}/decision", (200, 202))
        return r.json() if r.status_code == 200 else None

    async def policy(self) -> dict:
        """GET /v1/policy: the live (and shadow) policy's name and version."""
        return (await self._call("GET", "/v1/policy", (200,))).json()

    async def policy_version(self, version: str) -> dict:
        """The bundle of a policy version that has been live (admin): its YAML and includes."""
        return (await self._call("GET", f"/v1/policy/versions/{version}", (200,))).json()

    async def review_queues(self) -> dict:
        """GET /v1/review/queues: the queues this key may see, with depth, expected wait, SLA."""
        return (await self._call("GET", "/v1/review/queues", (200,))).json()

    async def claim(self, count: int = 1, queue: str | None = None) -> dict:
        r = await self._call("POST", "/v1/review/claim", (200,), json=_claim_body(count, queue))
        return r.json()

    async def resolve(self, post_id: str, action: str, reason: str) -> dict:
        r = await self._call("POST", f"/v1/review/items/{post_id}/resolve", (200,),
                             json={"action": action, "reason": reason})  # fmt: skip
        return r.json()

    async def review_report(self) -> dict:
        """GET /v1/review/report: measured precision per rule, category and language."""
        return (await self._call("GET", "/v1/review/report", (200,))).json()


class Floodgate:
    """The synchronous client: submit, wait, moderate, moderations, review."""

    def __init__(self, base_url: str, api_key: str | None = None, *, timeout: float = 30.0,
                 retries: int = 30) -> None:  # fmt: skip
        self.http = httpx.Client(base_url=base_url, timeout=timeout, headers=_headers(api_key))
        self.retries = retries

    def __enter__(self) -> Floodgate:
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()

    def _call(self, method: str, path: str, ok: tuple[int, ...], **kw: Any) -> httpx.Response:
        for attempt in range(self.retries + 1):
            r = self.http.request(method, path, **kw)
            if _settle(r, ok, attempt, self.retries):
                return r
            time.sleep(retry_after(r))
        raise AssertionError("unreachable")

    def submit(self, post: dict) -> dict:
        """POST /v1/posts -> {"post_id", "status": "queued" | "duplicate"}."""
        return self._call("POST", "/v1/posts", (202,), json=post).json()

    def submit_batch(self, posts: list[dict]) -> BatchOutcome:
        out, todo = BatchOutcome(), list(posts)
        for attempt in range(self.retries + 1):
            r = self._call("POST", "/v1/posts/batch", (202,), json={"posts": todo})
            todo = _split(todo, r, out)
            if not todo:
                return out
            if attempt < self.retries:
                out.resends += len(todo)
                time.sleep(retry_after(r))
        out.refused = [p.get("post_id", "") for p in todo]
        return out

    def decision(self, post_id: str) -> dict | None:
        """The decision (or failed status), None while it is pending."""
        r = self._call("GET", f"/v1/posts/{post_id}/decision", (200, 202))
        return r.json() if r.status_code == 200 else None

    def wait(self, post_id: str, timeout: float = 60.0, interval: float = 0.1) -> dict:
        deadline = time.monotonic() + timeout
        while (found := self.decision(post_id)) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{post_id} not decided within {timeout} s")
            time.sleep(interval)
        return found

    def moderate(self, post: dict) -> dict:
        return self._call("POST", "/v1/moderate", (200,), json=post).json()

    def moderations(self, texts: str | list[str]) -> dict:
        return self._call("POST", "/v1/moderations", (200,), json={"input": texts}).json()

    def claim(self, count: int = 1, queue: str | None = None) -> dict:
        return self._call("POST", "/v1/review/claim", (200,), json=_claim_body(count, queue)).json()

    def resolve(self, post_id: str, action: str, reason: str) -> dict:
        return self._call("POST", f"/v1/review/items/{post_id}/resolve", (200,),
                          json={"action": action, "reason": reason}).json()  # fmt: skip
