"""Store: decisions in Redis, the audit stream, counters, and the reads the API serves.

A batch of decisions is committed by one Lua script that, per post, sets the decision
only if none exists (``SET NX``), appends it to the audit stream and bumps the counters
only when it was new, and then acknowledges and deletes the stream entry. A post whose
entry is delivered twice (a worker died after deciding but before acknowledging cannot
happen inside one script, but a slow worker whose entry was reclaimed can) is therefore
never decided twice.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import redis
import redis.asyncio as aredis

from service.queue import Keys

COMMIT_LUA = """
-- KEYS: stream, audit, stats, tput, then one decision key per post
-- ARGV: group, ttl, audit_maxlen, then per post: entry_id, post_id, decision_json, stat_field
local written = 0
local n = #KEYS - 4
for i = 1, n do
  local base = 3 + (i - 1) * 4
  local entry, post_id, doc, stat = ARGV[base + 1], ARGV[base + 2], ARGV[base + 3], ARGV[base + 4]
  if redis.call('SET', KEYS[4 + i], doc, 'NX', 'EX', ARGV[2]) then
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'id', post_id, 'decision', doc)
    redis.call('HINCRBY', KEYS[3], stat, 1)
    written = written + 1
  end
  redis.call('XACK', KEYS[1], ARGV[1], entry)
  redis.call('XDEL', KEYS[1], entry)
end
if written > 0 then
  redis.call('INCRBY', KEYS[4], written)
  redis.call('EXPIRE', KEYS[4], 180)
end
return written
"""


@dataclass(frozen=True)
class Committed:
    entry_id: str
    post_id: str
    decision_json: str
    language: str
    action: str


class DecisionWriter:
    """The worker's side: commit a batch of decisions and acknowledge their entries."""

    def __init__(self, client: redis.Redis, keys: Keys, group: str, ttl_s: int, audit_maxlen: int):
        self.client = client
        self.keys = keys
        self.group = group
        self.ttl_s = ttl_s
        self.audit_maxlen = audit_maxlen
        self._commit = client.register_script(COMMIT_LUA)

    def commit(self, items: list[Committed]) -> int:
        """Store the decisions (new ones only) and ack their entries; returns how many were new."""
        if not items:
            return 0
        keys = [self.keys.posts, self.keys.audit, self.keys.stats,
                self.keys.throughput(int(time.time()))]  # fmt: skip
        args: list = [self.group, self.ttl_s, self.audit_maxlen]
        for it in items:
            keys.append(self.keys.decision(it.post_id))
            args += [it.entry_id, it.post_id, it.decision_json, f"{it.language}|{it.action}"]
        return int(self._commit(keys=keys, args=args))


class DecisionReader:
    """The API's side: look a decision up, and the figures behind /v1/stats."""

    def __init__(self, client: aredis.Redis, keys: Keys, group: str) -> None:
        self.client = client
        self.keys = keys
        self.group = group

    async def lookup(self, post_id: str) -> tuple[str, dict | str | None]:
        """("decided", decision) | ("failed", error) | ("pending", None) | ("unknown", None)."""
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.get(self.keys.decision(post_id))
            pipe.get(self.keys.failed(post_id))
            pipe.exists(self.keys.accepted(post_id))
            decision, failed, accepted = await pipe.execute()
        if decision is not None:
            return "decided", json.loads(decision)
        if failed is not None:
            return "failed", failed
        if accepted:
            return "pending", None
        return "unknown", None

    async def stats(self, window_s: int = 60) -> dict:
        now_ms = int(time.time() * 1000)
        now = now_ms // 1000
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.xlen(self.keys.posts)
            pipe.xlen(self.keys.dead)
            pipe.hgetall(self.keys.stats)
            pipe.xlen(self.keys.audit)
            for s in range(now - window_s, now):
                pipe.get(self.keys.throughput(s))
            backlog, dead, by_key, audit_len, *per_second = await pipe.execute()
        pending, consumers, oldest_ms = 0, [], None
        try:
            summary = await self.client.xpending(self.keys.posts, self.group)
            pending = int(summary["pending"])
            consumers = summary.get("consumers") or []
            if pending:
                oldest_ms = max(now_ms - int(summary["min"].split("-")[0]), 0)
        except redis.ResponseError:  # no group yet: no worker has started
            pass
        first = await self.client.xrange(self.keys.posts, count=1)
        by_language: dict[str, dict[str, int]] = {}
        by_action: dict[str, int] = {}
        for key, count in by_key.items():
            lang, _, action = key.partition("|")
            by_language.setdefault(lang, {})[action] = int(count)
            by_action[action] = by_action.get(action, 0) + int(count)
        done = sum(int(x or 0) for x in per_second)
        return {
            "stream": {
                "length": backlog,
                "pending": pending,
                "waiting": max(backlog - pending, 0),
                # age of the oldest post not yet decided: how far behind the workers are
                "lag_ms": max(now_ms - int(first[0][0].split("-")[0]), 0) if first else 0,
                "oldest_pending_ms": oldest_ms,
                "consumers": [{"name": c["name"], "pending": int(c["pending"])} for c in consumers],
            },
            "dead_letters": dead,
            "decisions": {
                "total": sum(by_action.values()),
                "audit_length": audit_len,
                "by_action": by_action,
                "by_language": by_language,
            },
            "throughput": {
                "window_s": window_s,
                "decisions": done,
                "per_s": round(done / window_s, 2),
            },
        }
