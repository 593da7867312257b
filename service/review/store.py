"""Review queues in Redis: claim with a lease, resolve, appeal, and the reads behind the API.

Keys (``fg`` is the deployment's prefix; written first by ``store.COMMIT_LUA`` with the
decision itself):

* ``fg:review:q:<queue>``        sorted set of post ids waiting, by priority then age
* ``fg:review:backlog:<queue>``  sorted set of overflowed post ids (limited by the fallback
                                 meanwhile), by priority then age: a claim moves the best of
                                 them into the queue while it holds fewer than its admission
                                 limit; it expires with the newest decision put into it, and
                                 an id whose item expired is dropped when a claim reaches it
* ``fg:review:age:<queue>``      sorted set of the queue's unresolved post ids by entry time
* ``fg:review:queues``           set of queue names that ever held an item
* ``fg:review:item:<post_id>``   hash: data (JSON: text, language, rules, scores, ...), state
                                 (decided | overflowed | queued | leased | resolved), kind
                                 (review | appeal), queue, score, holder, lease_until,
                                 verdict, first_reviewer, appeal, appeal_verdict
* ``fg:review:history:<post_id>`` list of JSON events (queued, claimed, lease_expired, ...)
* ``fg:review:leases``           sorted set of leased post ids by lease expiry (ms)
* ``fg:review:counts``           hash ``<queue>|enqueued|overflowed|in_review|resolved``
* ``fg:review:feedback``         hash of verdict counters (review.rules.feedback_fields)

Every state change is one Lua script on Redis time; expired leases go back into their queue
at the start of each script (claim, resolve, appeal, listing), so a reviewer who goes away
holds nothing for longer than the lease.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping

import redis
import redis.asyncio as aredis

from service.queue import Keys
from service.review.rules import APPEALABLE, merge

_NOW = """
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function requeue_expired(prefix)
  local leases = prefix .. ':review:leases'
  local n = 0
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', leases, '-inf', now_ms)) do
    redis.call('ZREM', leases, id)
    local ikey = prefix .. ':review:item:' .. id
    local f = redis.call('HMGET', ikey, 'state', 'queue', 'score', 'holder')
    if f[1] == 'leased' then
      redis.call('ZADD', prefix .. ':review:q:' .. f[2], f[3], id)
      redis.call('HSET', ikey, 'state', 'queued', 'holder', '', 'lease_until', '')
      redis.call('HINCRBY', prefix .. ':review:counts', f[2] .. '|in_review', -1)
      redis.call('RPUSH', prefix .. ':review:history:' .. id, cjson.encode(
        {event = 'lease_expired', reviewer = f[4], queue = f[2], at = now_ms}))
      n = n + 1
    end
  end
  return n
end
"""

REQUEUE_LUA = _NOW + "return requeue_expired(ARGV[1])"

CLAIM_LUA = _NOW + """
-- ARGV: prefix, reviewer, count, lease_ms, then per queue the reviewer may take from: its
-- name and its admission limit (-1: none, nothing is admitted from its backlog)
local prefix, reviewer, count, lease_ms = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local limits = {}
for j = 5, #ARGV, 2 do limits[ARGV[j]] = tonumber(ARGV[j + 1]) end
-- Posts that overflowed wait, limited, in the queue's backlog; while the queue holds fewer
-- than its admission limit, the best of them (priority, then age) enter it.
local function admit(q)
  local limit = limits[q]
  if limit == nil or limit < 0 then return end
  local qkey = prefix .. ':review:q:' .. q
  local bkey = prefix .. ':review:backlog:' .. q
  while redis.call('ZCARD', qkey) < limit do
    local top = redis.call('ZPOPMAX', bkey)
    if #top == 0 then return end
    local id, sc = top[1], top[2]
    local ikey = prefix .. ':review:item:' .. id
    local f = redis.call('HMGET', ikey, 'state', 'at')
    if f[1] == 'overflowed' then  -- not appealed, not expired with its decision
      redis.call('ZADD', qkey, sc, id)
      redis.call('ZADD', prefix .. ':review:age:' .. q, tonumber(f[2]) or now_ms, id)
      redis.call('HSET', ikey, 'state', 'queued')
      redis.call('HINCRBY', prefix .. ':review:counts', q .. '|enqueued', 1)
      redis.call('HINCRBY', prefix .. ':review:counts', q .. '|admitted', 1)
      redis.call('RPUSH', prefix .. ':review:history:' .. id, cjson.encode(
        {event = 'admitted', queue = q, at = now_ms}))
    end
  end
end
requeue_expired(prefix)
for q, _ in pairs(limits) do admit(q) end
local out = {}
while #out < count do
  local best_id, best_score, best_q = nil, nil, nil
  for j = 5, #ARGV, 2 do
    local q = ARGV[j]
    local qkey = prefix .. ':review:q:' .. q
    local cands = redis.call('ZREVRANGE', qkey, 0, 49, 'WITHSCORES')
    for k = 1, #cands, 2 do
      local id, sc = cands[k], tonumber(cands[k + 1])
      local ikey = prefix .. ':review:item:' .. id
      if redis.call('EXISTS', ikey) == 0 then  -- expired with its decision
        redis.call('ZREM', qkey, id)
        redis.call('ZREM', prefix .. ':review:age:' .. q, id)
      else
        local f = redis.call('HMGET', ikey, 'kind', 'first_reviewer')
        -- an appeal goes to a reviewer other than the one who gave the first verdict
        if f[1] ~= 'appeal' or f[2] ~= reviewer then
          if best_score == nil or sc > best_score then best_id, best_score, best_q = id, sc, q end
          break
        end
      end
    end
  end
  if best_id == nil then break end
  local until_ms = now_ms + lease_ms
  redis.call('ZREM', prefix .. ':review:q:' .. best_q, best_id)
  redis.call('ZADD', prefix .. ':review:leases', until_ms, best_id)
  redis.call('HSET', prefix .. ':review:item:' .. best_id, 'state', 'leased', 'holder', reviewer,
             'lease_until', until_ms)
  redis.call('HINCRBY', prefix .. ':review:counts', best_q .. '|in_review', 1)
  redis.call('RPUSH', prefix .. ':review:history:' .. best_id, cjson.encode(
    {event = 'claimed', reviewer = reviewer, queue = best_q, at = now_ms, lease_until = until_ms}))
  table.insert(out, best_id)
  admit(best_q)
end
return out
"""

RESOLVE_LUA = _NOW + """
-- ARGV: prefix, post_id, reviewer, verdict_json, audit key, audit maxlen, feedback fields...
local prefix, id, reviewer, verdict = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
requeue_expired(prefix)
local ikey = prefix .. ':review:item:' .. id
local f = redis.call('HMGET', ikey, 'state', 'holder', 'queue', 'kind', 'first_reviewer')
if not f[1] then return 'missing' end
if f[1] ~= 'leased' or f[2] ~= reviewer then return 'not_holder' end
if f[4] == 'appeal' and f[5] == reviewer then return 'same_reviewer' end
redis.call('ZREM', prefix .. ':review:leases', id)
redis.call('ZREM', prefix .. ':review:age:' .. f[3], id)
redis.call('HINCRBY', prefix .. ':review:counts', f[3] .. '|in_review', -1)
redis.call('HINCRBY', prefix .. ':review:counts', f[3] .. '|resolved', 1)
if f[4] == 'appeal' then
  redis.call('HSET', ikey, 'state', 'resolved', 'holder', '', 'appeal_verdict', verdict)
else
  redis.call('HSET', ikey, 'state', 'resolved', 'holder', '', 'verdict', verdict,
             'first_reviewer', reviewer)
end
redis.call('RPUSH', prefix .. ':review:history:' .. id, cjson.encode(
  {event = (f[4] == 'appeal') and 'appeal_resolved' or 'resolved', reviewer = reviewer,
   queue = f[3], at = now_ms, verdict = cjson.decode(verdict)}))
redis.call('XADD', ARGV[5], 'MAXLEN', '~', ARGV[6], '*', 'id', id, 'verdict', verdict)
for j = 7, #ARGV do redis.call('HINCRBY', prefix .. ':review:feedback', ARGV[j], 1) end
return 'ok'
"""

APPEAL_LUA = _NOW + """
-- ARGV: prefix, post_id, appeal_json, queue, score, audit key, audit maxlen
local prefix, id, appeal, queue, score = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
requeue_expired(prefix)
local ikey = prefix .. ':review:item:' .. id
local f = redis.call('HMGET', ikey, 'state', 'kind', 'queue')
if not f[1] then return 'missing' end
if f[2] == 'appeal' then return 'already' end
if f[1] == 'queued' or f[1] == 'leased' then return 'pending' end
if f[1] == 'overflowed' then redis.call('ZREM', prefix .. ':review:backlog:' .. f[3], id) end
redis.call('ZADD', prefix .. ':review:q:' .. queue, score, id)
redis.call('ZADD', prefix .. ':review:age:' .. queue, now_ms, id)
redis.call('SADD', prefix .. ':review:queues', queue)
redis.call('HINCRBY', prefix .. ':review:counts', queue .. '|enqueued', 1)
redis.call('HSET', ikey, 'state', 'queued', 'kind', 'appeal', 'queue', queue, 'score', score,
           'appeal', appeal)
redis.call('RPUSH', prefix .. ':review:history:' .. id, cjson.encode(
  {event = 'appealed', queue = queue, at = now_ms, appeal = cjson.decode(appeal)}))
redis.call('XADD', ARGV[6], 'MAXLEN', '~', ARGV[7], '*', 'id', id, 'appeal', appeal)
return 'ok'
"""


class ReviewKeys:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.queues = f"{prefix}:review:queues"
        self.leases = f"{prefix}:review:leases"
        self.counts = f"{prefix}:review:counts"
        self.feedback = f"{prefix}:review:feedback"
        self.audit = Keys(prefix).audit

    def queue(self, name: str) -> str:
        return f"{self.prefix}:review:q:{name}"

    def age(self, name: str) -> str:
        return f"{self.prefix}:review:age:{name}"

    def backlog(self, name: str) -> str:
        return f"{self.prefix}:review:backlog:{name}"

    def item(self, post_id: str) -> str:
        return f"{self.prefix}:review:item:{post_id}"

    def history(self, post_id: str) -> str:
        return f"{self.prefix}:review:history:{post_id}"


def _loads(raw: str | None) -> dict | None:
    return json.loads(raw) if raw else None


def _item(post_id: str, raw: dict[str, str]) -> dict | None:
    """An item hash as the API shows it (None: no item)."""
    if not raw:
        return None
    return {
        **(_loads(raw.get("data")) or {}),
        "post_id": post_id, "state": raw.get("state"), "kind": raw.get("kind") or "review",
        "queue": raw.get("queue") or None, "holder": raw.get("holder") or None,
        "lease_until": int(raw["lease_until"]) if raw.get("lease_until") else None,
        "verdict": _loads(raw.get("verdict")), "first_reviewer": raw.get("first_reviewer"),
        "appeal": _loads(raw.get("appeal")), "appeal_verdict": _loads(raw.get("appeal_verdict")),
    }  # fmt: skip


class ReviewStore:
    """The API's side of the review queues (redis.asyncio)."""

    def __init__(self, client: aredis.Redis, prefix: str, audit_maxlen: int = 1_000_000) -> None:
        self.client = client
        self.keys = ReviewKeys(prefix)
        self.audit_maxlen = audit_maxlen
        self._requeue = client.register_script(REQUEUE_LUA)
        self._claim = client.register_script(CLAIM_LUA)
        self._resolve = client.register_script(RESOLVE_LUA)
        self._appeal = client.register_script(APPEAL_LUA)

    async def requeue_expired(self) -> int:
        return int(await self._requeue(args=[self.keys.prefix]))

    async def queue_names(self) -> set[str]:
        return set(await self.client.smembers(self.keys.queues))

    async def queue_figures(self, names: Iterable[str]) -> dict[str, dict]:
        """waiting, in_review, oldest entry (ms), backlog, and the enqueued, overflowed and
        admitted (from the backlog) counts per queue."""
        names = sorted(names)
        await self.requeue_expired()
        counters = ("enqueued", "overflowed", "admitted")
        async with self.client.pipeline(transaction=False) as pipe:
            for q in names:
                pipe.zcard(self.keys.queue(q))
                pipe.zrange(self.keys.age(q), 0, 0, withscores=True)
                pipe.zcard(self.keys.backlog(q))
                pipe.hmget(self.keys.counts, [f"{q}|in_review", *(f"{q}|{c}" for c in counters)])
            raw = await pipe.execute()
        out = {}
        for i, q in enumerate(names):
            waiting, oldest, backlog, (in_review, *counts) = raw[4 * i : 4 * i + 4]
            out[q] = {"waiting": int(waiting), "in_review": int(in_review or 0),
                      "oldest_ms": int(oldest[0][1]) if oldest else None,
                      "backlog": int(backlog),
                      "counters": {c: int(n or 0) for c, n in zip(counters, counts, strict=True)}}  # fmt: skip
        return out

    async def claim(
        self, reviewer: str, queues: Mapping[str, int | None], count: int, lease_s: float
    ) -> list[dict]:
        """Lease the next ``count`` items of ``queues`` (highest priority first) to ``reviewer``.
        ``queues`` maps each queue to its admission limit: first, and after each item taken,
        the queue is refilled up to it from its backlog (None: no limit, nothing admitted)."""
        if not queues:
            return []
        pairs = [x for q, limit in queues.items() for x in (q, -1 if limit is None else limit)]
        ids = await self._claim(args=[self.keys.prefix, reviewer, count, int(lease_s * 1000), *pairs])
        return [await self.item(i) for i in ids]

    async def item(self, post_id: str) -> dict | None:
        return _item(post_id, await self.client.hgetall(self.keys.item(post_id)))

    async def items(self, post_ids: list[str]) -> list[dict | None]:
        """Several items at once (None where a post has none)."""
        async with self.client.pipeline(transaction=False) as pipe:
            for post_id in post_ids:
                pipe.hgetall(self.keys.item(post_id))
            raw = await pipe.execute()
        return [_item(p, r) for p, r in zip(post_ids, raw, strict=True)]

    async def history(self, post_id: str) -> list[dict]:
        return [json.loads(x) for x in await self.client.lrange(self.keys.history(post_id), 0, -1)]

    async def resolve(self, post_id: str, reviewer: str, verdict: dict, feedback: list[str]) -> str:
        """ok | missing | not_holder (no lease, or another's, or expired) | same_reviewer."""
        return await self._resolve(args=[
            self.keys.prefix, post_id, reviewer, json.dumps(verdict, ensure_ascii=False),
            self.keys.audit, self.audit_maxlen, *feedback,
        ])  # fmt: skip

    async def appeal(self, post_id: str, appeal: dict, queue: str, score: int) -> str:
        """ok | missing (nothing to appeal) | already (appealed once) | pending (in review)."""
        return await self._appeal(args=[
            self.keys.prefix, post_id, json.dumps(appeal, ensure_ascii=False), queue, score,
            self.keys.audit, self.audit_maxlen,
        ])  # fmt: skip

    async def with_review(self, decision: dict) -> dict:
        """A stored decision with the human side merged in (state, verdicts, history) and
        ``final_action``: the latest verdict's action, else the automated one."""
        item = None
        if decision.get("review") is not None or decision.get("action") in APPEALABLE:
            item = await self.item(decision["post_id"])
        history = await self.history(decision["post_id"]) if item else []
        return merge(decision, item, history)

    async def feedback(self) -> dict[str, str]:
        return await self.client.hgetall(self.keys.feedback)

    async def counts(self) -> dict[str, str]:
        return await self.client.hgetall(self.keys.counts)


def read_report(client: redis.Redis, prefix: str) -> tuple[dict[str, str], dict[str, str]]:
    """The feedback and queue counters, from a synchronous client (the CLI)."""
    keys = ReviewKeys(prefix)
    with client.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.feedback)
        pipe.hgetall(keys.counts)
        feedback, counts = pipe.execute()
    return feedback, counts


def now_ms() -> int:
    return int(time.time() * 1000)
