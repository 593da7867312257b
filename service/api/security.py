"""Who may call what: API keys with roles, open mode for local use, and rate limits.

Every route names the role it needs (`caller("submit")`, ...; auth.ROLES); the dependency
verifies the `Authorization: Bearer` key, answers 401 (no or unknown key) or 403 (a key
without the role) in the one error shape, charges the key's token bucket (429 with
Retry-After when empty) and returns the Principal, whose name audit entries carry.

Open mode: on a loopback address, while no key is active, every route is open to the local
user (OPEN_PRINCIPAL); creating the first key closes it within `OPEN_RECHECK_S`. On any
other address the API runs open only with `insecure` (`serve` refuses to start otherwise).
"""

from __future__ import annotations

import ipaddress
import logging
import time

from fastapi import Depends, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.api.errors import error_response, validation_errors
from service.api.state import AppState, get_state
from service.auth import OPEN_PRINCIPAL, Access, Principal, authorize, denial
from service.logs import annotate
from service.ratelimit import Bucket, Limit, RateResult

log = logging.getLogger("floodgate.api")

OPEN_RECHECK_S = 5.0
bearer = HTTPBearer(auto_error=False, description="an API key: `floodgate keys create`")


class Denied(Exception):
    """Raised by a dependency; answered by `denied_response` in the one error shape."""

    def __init__(self, status: int, body: dict, headers: dict[str, str]) -> None:
        self.status, self.body, self.headers = status, body, headers


async def denied_response(_: Request, exc: Denied) -> JSONResponse:
    return JSONResponse(exc.body, status_code=exc.status, headers=exc.headers)


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def open_allowed(settings) -> bool:
    return settings.insecure or is_loopback(settings.host)


async def is_open(st: AppState) -> bool:
    """Open while allowed and no key is active (cached for OPEN_RECHECK_S)."""
    if not open_allowed(st.settings):
        return False
    now = time.monotonic()
    if now - st.open_checked >= OPEN_RECHECK_S:
        st.open_checked = now
        st.open_mode = not await st.key_store.any_active()
    return st.open_mode


def rate_limited(result: RateResult, field: str) -> Denied:
    body = {"error": "rate_limited", "detail": [{
        "field": field, "message": f"rate limit reached; retry after {result.retry_after_header} s",
        "type": "rate_limited"}]}  # fmt: skip
    return Denied(429, body, result.headers())


def key_limit(st: AppState) -> Limit | None:
    s = st.settings
    return Limit(s.rate_key_per_s, s.rate_key_burst) if s.rate_key_per_s > 0 else None


def author_limit(st: AppState) -> Limit | None:
    s = st.settings
    return Limit.per_minute(s.rate_author_per_min, s.rate_author_burst) if s.rate_author_per_min > 0 else None  # fmt: skip


def caller(role: str | None):
    """A dependency for a route that needs `role` (None: open route): the Principal."""

    async def dependency(
        credentials: HTTPAuthorizationCredentials | None = Security(bearer),
        st: AppState = Depends(get_state),
    ) -> Principal:
        token = credentials.credentials if credentials else None
        if role is None:
            return OPEN_PRINCIPAL
        if token is None and await is_open(st):
            principal: Principal | None = OPEN_PRINCIPAL
        else:
            principal = await st.key_store.verify(token) if token else None
        access = authorize(principal, role)
        if access is not Access.ALLOW:
            st.metrics.denied.labels(str(401 if access is Access.UNAUTHENTICATED else 403)).inc()
            raise Denied(*denial(access, role, key_given=token is not None))
        assert principal is not None
        annotate(key_name=principal.name)
        limit = key_limit(st)
        if principal.key_id and limit is not None:  # no key (open mode): no key bucket
            result = await st.limiter.check(Bucket("key", principal.key_id, limit))
            if not result.allowed:
                st.metrics.rate_limited.labels("key").inc()
                raise rate_limited(result, "authorization")
        return principal

    dependency.floodgate_role = role  # type: ignore[attr-defined]  # read by route_role
    return dependency


def route_role(route) -> str | None:
    """The role a matched route needs (None: open), from its `caller` dependency."""
    stack = list(getattr(getattr(route, "dependant", None), "dependencies", ()))
    while stack:
        dep = stack.pop()
        if hasattr(dep.call, "floodgate_role"):
            return dep.call.floodgate_role
        stack.extend(dep.dependencies)
    return None


async def access_before_body(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI parses a JSON body before any dependency runs, so a body that is not JSON
    would be a 422 even for a caller without a key. Such a caller gets its 401/403 instead
    (the key checked, and charged, exactly once: no dependency ran); others get the 422."""
    if any(e.get("type") == "json_invalid" for e in exc.errors()):
        role = route_role(request.scope.get("route"))
        if role is not None:
            try:
                await caller(role)(credentials=await bearer(request), st=get_state(request))
            except Denied as denied:
                return await denied_response(request, denied)
    return error_response(422, "validation_error", validation_errors(exc))


async def author_checks(st: AppState, authors: list[str | None]) -> list[RateResult | None]:
    """One token per post from its author's bucket (None: no author or limits off)."""
    limit = author_limit(st)
    todo = [(i, a) for i, a in enumerate(authors) if a and limit is not None]
    out: list[RateResult | None] = [None] * len(authors)
    if todo:
        results = await st.limiter.check_many([([Bucket("author", a, limit)], 1) for _, a in todo])
        for (i, _), r in zip(todo, results, strict=True):
            out[i] = r
            if not r.allowed:
                st.metrics.rate_limited.labels("author").inc()
    return out


async def warn_if_open(st: AppState) -> None:
    if await is_open(st):
        log.warning(
            "THE API IS OPEN: no API key is active, so anyone who can reach %s:%s may post, "
            "read decisions and change the policy. Create keys with `floodgate keys create` "
            "(the API closes within %.0f s).", st.settings.host, st.settings.port, OPEN_RECHECK_S,
        )  # fmt: skip

