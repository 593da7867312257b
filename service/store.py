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
from service.review.rules import ReviewEntry
from service.review.rules import summary as review_summary
from service.review.store import ReviewKeys

_NO_REVIEW = ReviewEntry(item_json="")

COMMIT_LUA = """
-- KEYS: stream, audit, stats, tput, failures, then one decision key per post
-- ARGV: group, ttl, audit_maxlen, key prefix, notify ('1': push to each post's reply list,
--   for the synchronous callers waiting on it), then per post (10): entry_id, post_id,
--   decision_json, stat_field, and for human review (service/review): item_json (''
--   when the post has no review item), queue ('' when it is not for review), queue score,
--   admission limit, fallback decision_json, fallback stat_field
-- A review decision enters its queue here, with the decision, or -- when the queue already
-- holds its admission limit (expected wait over its SLA) -- the fallback decision is stored
-- instead and the post waits in the queue's backlog until a claim makes room. Both happen
-- only for a new decision: a redelivered post finds its decision and changes nothing.
local written = 0
local flags = {}
local n = #KEYS - 5
local prefix = ARGV[4]
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 1, n do
  local base = 5 + (i - 1) * 10
  local entry, post_id, doc, stat = ARGV[base + 1], ARGV[base + 2], ARGV[base + 3], ARGV[base + 4]
  local item, queue = ARGV[base + 5], ARGV[base + 6]
  redis.call('HDEL', KEYS[5], entry)
  if redis.call('EXISTS', KEYS[5 + i]) == 0 then
    if item ~= '' then
      local state = 'decided'
      if queue ~= '' then
        local qkey = prefix .. ':review:q:' .. queue
        if redis.call('ZCARD', qkey) >= tonumber(ARGV[base + 8]) then
          state, doc, stat = 'overflowed', ARGV[base + 9], ARGV[base + 10]
          redis.call('HINCRBY', prefix .. ':review:counts', queue .. '|overflowed', 1)
          -- limited meanwhile, it waits in the queue's backlog for room (review.store CLAIM_LUA)
          local backlog = prefix .. ':review:backlog:' .. queue
          redis.call('ZADD', backlog, ARGV[base + 7], post_id)
          redis.call('EXPIRE', backlog, ARGV[2])  -- gone with its last item's decision
        else
          state = 'queued'
          redis.call('ZADD', qkey, ARGV[base + 7], post_id)
          redis.call('ZADD', prefix .. ':review:age:' .. queue, now_ms, post_id)
          redis.call('SADD', prefix .. ':review:queues', queue)
          redis.call('HINCRBY', prefix .. ':review:counts', queue .. '|enqueued', 1)
        end
      end
      local ikey = prefix .. ':review:item:' .. post_id
      redis.call('HSET', ikey, 'data', item, 'state', state, 'queue', queue,
                 'score', ARGV[base + 7], 'at', now_ms)
      redis.call('EXPIRE', ikey, ARGV[2])
      local hkey = prefix .. ':review:history:' .. post_id
      redis.call('RPUSH', hkey, cjson.encode({event = state, queue = queue, at = now_ms}))
      redis.call('EXPIRE', hkey, ARGV[2])
    end
    redis.call('SET', KEYS[5 + i], doc, 'EX', ARGV[2])
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'id', post_id, 'decision', doc)
    redis.call('HINCRBY', KEYS[3], stat, 1)
    written = written + 1
    flags[i] = 1
  else
    flags[i] = 0
  end
  redis.call('XACK', KEYS[1], ARGV[1], entry)
  redis.call('XDEL', KEYS[1], entry)
  if ARGV[5] == '1' then
    local reply = prefix .. ':reply:' .. post_id
    redis.call('RPUSH', reply, '1')
    redis.call('EXPIRE', reply, 60)
  end
end
if written > 0 then
  redis.call('INCRBY', KEYS[4], written)
  redis.call('EXPIRE', KEYS[4], 180)
end
return flags
"""


@dataclass(frozen=True)
class Committed:
    entry_id: str
    post_id: str
    decision_json: str
    language: str
    action: str
    # human review: the item and queue entry committed with the decision (review.rules.plan)
    review: ReviewEntry | None = None


class DecisionWriter:
    """The worker's side: commit a batch of decisions and acknowledge their entries."""

    def __init__(self, client: redis.Redis, keys: Keys, group: str, ttl_s: int, audit_maxlen: int):
        self.client = client
        self.keys = keys
        self.group = group
        self.ttl_s = ttl_s
        self.audit_maxlen = audit_maxlen
        self._commit = client.register_script(COMMIT_LUA)

    def commit(self, items: list[Committed], stream: str | None = None) -> list[bool]:
        """Store the decisions (new ones only) and ack their entries (all read from
        ``stream``, default the posts stream); True where new. Entries of the priority
        stream also signal the synchronous callers waiting for them."""
        if not items:
            return []
        stream = stream or self.keys.posts
        keys = [stream, self.keys.audit, self.keys.stats,
                self.keys.throughput(int(time.time())), self.keys.failures_of(stream)]  # fmt: skip
        notify = "1" if stream == self.keys.sync_posts else "0"
        args: list = [self.group, self.ttl_s, self.audit_maxlen, self.keys.prefix, notify]
        for it in items:
            keys.append(self.keys.decision(it.post_id))
            args += [it.entry_id, it.post_id, it.decision_json, f"{it.language}|{it.action}"]
            r = it.review or _NO_REVIEW
            args += [r.item_json, r.queue, r.score, r.limit, r.fallback_json, r.fallback_stat]
        return [bool(f) for f in self._commit(keys=keys, args=args)]


class DecisionReader:
    """The API's side: look a decision up, and the figures behind /v1/stats."""

    def __init__(self, client: aredis.Redis, keys: Keys, group: str) -> None:
        self.client = client
        self.keys = keys
        self.group = group
        self.review_keys = ReviewKeys(keys.prefix)

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

    async def decisions(self, post_ids: list[str]) -> list[dict | None]:
        """The stored decisions of these posts (None: not decided, or no longer kept)."""
        if not post_ids:
            return []
        raw = await self.client.mget([self.keys.decision(p) for p in post_ids])
        return [json.loads(r) if r is not None else None for r in raw]

    async def author_posts(self, author_id: str, limit: int) -> list[tuple[str, int]]:
        """(post_id, time_ms) of the author's latest posts, newest first: what
        AuthorActivity keeps (only while the live policy counts posts per author, and only
        over its longest window)."""
        raw = await self.client.zrevrange(self.keys.author(author_id), 0, limit - 1, withscores=True)
        return [(post_id, int(at)) for post_id, at in raw]

    async def feed(self, after: str, limit: int) -> tuple[list[dict], str]:
        """Decisions stored after the cursor `after` (an audit-stream id), oldest first. The
        stream also records reviewers' verdicts and authors' appeals (entries with `verdict`
        or `appeal` instead of `decision`); the feed lists decisions only."""
        start = "-" if after in ("", "0", "0-0") else f"({after}"
        entries = await self.client.xrange(self.keys.audit, min=start, count=limit)
        items = [json.loads(f["decision"]) for _, f in entries if "decision" in f]
        return items, (entries[-1][0] if entries else after)

    async def recent_rate(self, window_s: int = 10) -> float:
        """Decisions per second over the last ``window_s`` whole seconds."""
        now = int(time.time())
        values = await self.client.mget([self.keys.throughput(s) for s in range(now - window_s, now)])
        return sum(int(v or 0) for v in values) / window_s

    async def stats(self, window_s: int = 60) -> dict:
        now_ms = int(time.time() * 1000)
        now = now_ms // 1000
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.xlen(self.keys.posts)
            pipe.xlen(self.keys.dead)
            pipe.hgetall(self.keys.stats)
            pipe.xlen(self.keys.audit)
            pipe.hgetall(self.review_keys.feedback)
            pipe.hgetall(self.review_keys.counts)
            pipe.xlen(self.keys.sync_posts)
            for s in range(now - window_s, now):
                pipe.get(self.keys.throughput(s))
            (backlog, dead, by_key, audit_len, feedback, counts, priority,
             *per_second) = await pipe.execute()  # fmt: skip
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
                # synchronous callers' posts waiting on the priority stream
                "priority_length": priority,
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
            # human review: queue counters, measured precision per rule / category / language
            "review": review_summary(feedback, counts),
        }


class AuthorActivity:
    """Posts per author over sliding windows (a sorted set per author, scored by time).

    Members are post ids, so a post delivered twice is counted once.
    """

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys

    def record_and_count(
        self, posts: list[tuple[str, str, int]], windows: list[int]
    ) -> list[dict[int, int]]:
        """For (author_id, post_id, time_ms) items: record them, then count per window."""
        if not posts or not windows:
            return [{} for _ in posts]
        horizon = max(windows) * 60_000
        with self.client.pipeline(transaction=False) as pipe:
            for author, post_id, at in posts:
                key = self.keys.author(author)
                pipe.zadd(key, {post_id: at})
                pipe.zremrangebyscore(key, "-inf", at - horizon - 60_000)
                pipe.pexpire(key, horizon + 120_000)
            pipe.execute()
            for author, _, at in posts:
                for w in windows:
                    pipe.zcount(self.keys.author(author), at - w * 60_000, at)
            counts = pipe.execute()
        out = []
        for i in range(len(posts)):
            row = counts[i * len(windows) : (i + 1) * len(windows)]
            out.append({w: int(c) for w, c in zip(windows, row, strict=True)})
        return out

    def count(self, author: str, at: int, windows: list[int]) -> dict[int, int]:
        """Counts without recording (for synchronous calls), this post included."""
        with self.client.pipeline(transaction=False) as pipe:
            for w in windows:
                pipe.zcount(self.keys.author(author), at - w * 60_000, at)
            return {w: int(c) + 1 for w, c in zip(windows, pipe.execute(), strict=True)}


class PolicyRegistry:
    """Which policy version is live (and which is shadow), and every version ever published.

    A version is stored once, as its bundle (the YAML and the files it includes), so any
    decision can be explained against the exact policy that made it.
    """

    ROLES = ("live", "shadow")

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys

    def publish(
        self, bundle: dict, version: str, name: str, role: str = "live", actor: str = "(server)"
    ) -> bool:
        """Make `version` the live (or shadow) one; True when it changed. ``actor`` (the API
        key's name, or "(server)" for the file watcher) is recorded in the history."""
        if role not in self.ROLES:
            raise ValueError(role)
        self.client.hsetnx(self.keys.policy_versions, version,
                           json.dumps({**bundle, "name": name, "version": version}))  # fmt: skip
        previous = self.client.set(self.keys.policy_role(role), version, get=True)
        if previous != version:
            self.client.xadd(
                self.keys.policy_history,
                {"role": role, "version": version, "name": name, "previous": previous or "",
                 "source": bundle.get("source", ""), "at": int(time.time() * 1000),
                 "actor": actor},
                maxlen=10_000, approximate=True,
            )  # fmt: skip
        return previous != version

    def clear(self, role: str, actor: str = "(server)") -> bool:
        previous = self.client.getdel(self.keys.policy_role(role))
        if previous:
            self.client.xadd(self.keys.policy_history,
                             {"role": role, "version": "", "previous": previous,
                              "at": int(time.time() * 1000), "actor": actor})  # fmt: skip
        return previous is not None

    def current(self) -> dict[str, str | None]:
        live, shadow = self.client.mget(
            self.keys.policy_role("live"), self.keys.policy_role("shadow")
        )
        return {"live": live, "shadow": shadow}

    def bundle(self, version: str) -> dict | None:
        raw = self.client.hget(self.keys.policy_versions, version)
        return json.loads(raw) if raw else None

    def history(self, count: int = 100) -> list[dict]:
        return [
            dict(f, id=i) for i, f in self.client.xrevrange(self.keys.policy_history, count=count)
        ]


class ShadowStats:
    """How often, and where, the shadow policy disagrees with the live one."""

    EXAMPLES = 200

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys

    def record(self, version: str, items: list[dict]) -> None:
        """items: {post_id, text, language, live, shadow, live_rules, shadow_rules}."""
        if not items:
            return
        counts, examples = self.keys.shadow_counts(version), self.keys.shadow_examples(version)
        with self.client.pipeline(transaction=False) as pipe:
            for it in items:
                pipe.hincrby(counts, "total", 1)
                if it["live"] != it["shadow"]:
                    pipe.hincrby(counts, "differ", 1)
                    pipe.hincrby(counts, f"{it['language']}|{it['live']}>{it['shadow']}", 1)
                    pipe.lpush(examples, json.dumps(it, ensure_ascii=False))
            pipe.ltrim(examples, 0, self.EXAMPLES - 1)
            pipe.execute()

    def report(self, version: str, examples: int = 20) -> dict:
        counts = self.client.hgetall(self.keys.shadow_counts(version))
        total, differ = int(counts.pop("total", 0)), int(counts.pop("differ", 0))
        transitions = []
        for key, n in counts.items():
            lang, _, change = key.partition("|")
            live, _, shadow = change.partition(">")
            transitions.append({"language": lang, "live": live, "shadow": shadow, "count": int(n)})
        transitions.sort(key=lambda t: -t["count"])
        raw = self.client.lrange(self.keys.shadow_examples(version), 0, examples - 1)
        return {
            "version": version,
            "total": total,
            "differ": differ,
            "differ_rate": round(differ / total, 4) if total else 0.0,
            "transitions": transitions,
            "examples": [json.loads(x) for x in raw],
        }
