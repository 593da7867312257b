"""Rate limits: token buckets in Redis, checked and updated atomically by one Lua script.

A bucket holds up to ``burst`` tokens and refills at ``rate`` tokens per second; a request
takes ``cost`` tokens (a batch of 50 posts may cost 50). The script reads the clock with
Redis ``TIME``, so API processes with skewed clocks share one consistent bucket.

One check may cover several buckets (the calling key's and the post author's): the request
passes only if every bucket has the tokens, and then takes them from all; when one is short,
none is charged, so a refused request costs the caller nothing and cannot drain a bucket
that did have room. ``retry_after`` is when the emptiest bucket will have enough.

Redis: ``fg:rl:<scope>:<id>`` hash ``tokens``, ``ts`` (server time, seconds), expiring once
a full refill would have made it indistinguishable from a fresh bucket.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from service.queue import Keys

# KEYS: buckets; ARGV: cost, then rate and burst per bucket.
# Returns {allowed, retry_after, remaining, server time, index of the limiting bucket or 0};
# numbers as strings because Lua numbers become integers in replies.
TOKEN_BUCKET_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local cost = tonumber(ARGV[1])
local n = #KEYS
local tokens, rates, bursts = {}, {}, {}
local allowed, wait, limiting, remaining = 1, 0, 0, math.huge
for i = 1, n do
  local rate, burst = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  local state = redis.call('HMGET', KEYS[i], 'tokens', 'ts')
  local have, ts = tonumber(state[1]), tonumber(state[2])
  if have == nil or ts == nil then
    have = burst
  else
    have = math.min(burst, have + math.max(0, now - ts) * rate)
  end
  tokens[i], rates[i], bursts[i] = have, rate, burst
  if have < cost then
    allowed = 0
    local w = (cost - have) / rate
    if w > wait then wait, limiting = w, i end
  end
end
-- a refusal writes nothing: the stored state already implies the refill computed above
for i = 1, n do
  local left = tokens[i]
  if allowed == 1 and cost > 0 then
    left = left - cost
    redis.call('HSET', KEYS[i], 'tokens', tostring(left), 'ts', tostring(now))
    redis.call('PEXPIRE', KEYS[i], math.ceil(bursts[i] / rates[i] * 1000) + 1000)
  end
  if left < remaining then remaining = left end
end
if n == 0 then remaining = 0 end
return {allowed, tostring(wait), tostring(remaining), tostring(now), limiting}
"""


@dataclass(frozen=True)
class Limit:
    """``rate`` tokens per second, at most ``burst`` saved up (also the largest cost)."""

    rate: float
    burst: int

    def __post_init__(self) -> None:
        if not (self.rate > 0 and math.isfinite(self.rate)):
            raise ValueError(f"rate must be a positive number, not {self.rate!r}")
        if self.burst < 1:
            raise ValueError(f"burst must be >= 1, not {self.burst!r}")

    @classmethod
    def per_minute(cls, count: float, burst: int | None = None) -> Limit:
        return cls(count / 60.0, burst if burst is not None else max(1, math.ceil(count)))


@dataclass(frozen=True)
class Bucket:
    """One bucket to check: e.g. ``Bucket("key", principal.key_id, key_limit)``."""

    scope: str
    ident: str
    limit: Limit


@dataclass(frozen=True)
class RateResult:
    allowed: bool
    retry_after: float  # seconds until the request would pass; 0 when allowed
    remaining: float  # tokens left in the emptiest bucket (after this request, if allowed)
    server_time: float  # Redis TIME when the check ran (seconds)
    limiting: Bucket | None = None  # the bucket that refused, when refused

    @property
    def retry_after_header(self) -> str:
        """``Retry-After`` value: whole seconds, rounded up, at least 1."""
        return str(max(1, math.ceil(self.retry_after)))

    def headers(self) -> dict[str, str]:
        out = {"X-RateLimit-Remaining": str(math.floor(self.remaining))}
        if not self.allowed:
            out["Retry-After"] = self.retry_after_header
        return out


def bucket_key(keys: Keys, bucket: Bucket) -> str:
    ident = bucket.ident
    if len(ident) > 100 or not ident.isprintable():  # author ids come from clients
        ident = "h:" + hashlib.sha256(ident.encode()).hexdigest()
    return keys.rate_bucket(bucket.scope, ident)


def _script_args(keys: Keys, buckets: Sequence[Bucket], cost: int) -> tuple[list, list]:
    if cost < 0:
        raise ValueError("cost must be >= 0")
    for b in buckets:
        if cost > b.limit.burst:
            raise ValueError(f"cost {cost} exceeds the burst of {b.scope} ({b.limit.burst}): "
                             "it could never pass")  # fmt: skip
    args: list[Any] = [cost]
    for b in buckets:
        args += [repr(float(b.limit.rate)), b.limit.burst]
    return [bucket_key(keys, b) for b in buckets], args


def _result(reply: Sequence[Any], buckets: Sequence[Bucket]) -> RateResult:
    allowed, wait, remaining, now, limiting = reply
    return RateResult(allowed=bool(int(allowed)), retry_after=float(wait),
                      remaining=max(0.0, float(remaining)), server_time=float(now),
                      limiting=buckets[int(limiting) - 1] if int(limiting) else None)  # fmt: skip


class RateLimiter:
    """Token buckets on a sync redis client."""

    def __init__(self, client: Any, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self._script = client.register_script(TOKEN_BUCKET_LUA)

    def check(self, *buckets: Bucket, cost: int = 1) -> RateResult:
        """Take ``cost`` tokens from every bucket, or from none; cost 0 only looks."""
        names, args = _script_args(self.keys, buckets, cost)
        return _result(self._script(keys=names, args=args), buckets)

    def check_many(self, requests: Sequence[tuple[Sequence[Bucket], int]]) -> list[RateResult]:
        """Several independent checks in one round trip (e.g. each post of a batch)."""
        with self.client.pipeline(transaction=False) as pipe:
            for buckets, cost in requests:
                names, args = _script_args(self.keys, buckets, cost)
                self._script(keys=names, args=args, client=pipe)
            replies = pipe.execute()
        return [_result(r, b) for r, (b, _) in zip(replies, requests, strict=True)]


class AsyncRateLimiter:
    """The same buckets on a ``redis.asyncio`` client, for the API."""

    def __init__(self, client: Any, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self._script = client.register_script(TOKEN_BUCKET_LUA)

    async def check(self, *buckets: Bucket, cost: int = 1) -> RateResult:
        names, args = _script_args(self.keys, buckets, cost)
        return _result(await self._script(keys=names, args=args), buckets)

    async def check_many(
        self, requests: Sequence[tuple[Sequence[Bucket], int]]
    ) -> list[RateResult]:
        async with self.client.pipeline(transaction=False) as pipe:
            for buckets, cost in requests:
                names, args = _script_args(self.keys, buckets, cost)
                await self._script(keys=names, args=args, client=pipe)
            replies = await pipe.execute()
        return [_result(r, b) for r, (b, _) in zip(replies, requests, strict=True)]
