"""Queue: posts travel from the API to the workers on a Redis Stream with a consumer group.

Keys (``fg`` is the configurable prefix):

* ``fg:posts``          stream of accepted, not yet decided posts (entries are deleted once
                        their decision is stored, so its length is the backlog)
* ``fg:post:<id>``      idempotency key: the post was accepted (value: its stream entry id)
* ``fg:dead``           dead-letter stream: entries that could not be decided, with the error
* ``fg:posts:sync``     the priority stream: posts of synchronous calls (/v1/moderate,
                        /v1/moderations), read before ``fg:posts`` by the same workers
* ``fg:reply:<id>``     list a worker pushes to once a synchronous post's decision is stored
* ``fg:failures``       hash entry id -> processing failures so far (``:sync`` for the
                        priority stream: entry ids are per stream)
* ``fg:workers``        hash worker name -> its last heartbeat (JSON; see heartbeat.py)

Accepting a post is one Lua script (check the idempotency key, XADD, set the key), so a
re-submitted post_id can never be queued twice, even by concurrent requests.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass

import redis
import redis.asyncio as aredis

# returns 1 queued, 0 duplicate, -1 refused: the backlog is at its bound (ARGV[5], 0 = none);
# a duplicate of an accepted post is still a duplicate when the queue is full
ENQUEUE_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local bound = tonumber(ARGV[5])
if bound > 0 and redis.call('XLEN', KEYS[2]) >= bound then return -1 end
local entry = redis.call('XADD', KEYS[2], '*', 'id', ARGV[2], 'post', ARGV[3], 't', ARGV[4])
redis.call('SET', KEYS[1], entry, 'EX', ARGV[1])
return 1
"""

DEAD_LETTER_LUA = """
-- KEYS: stream, dead stream, failures hash, failed marker; ARGV: group, entry, post_id, raw, error, ttl
redis.call('XADD', KEYS[2], 'MAXLEN', '~', 100000, '*', 'entry', ARGV[2], 'id', ARGV[3],
           'raw', ARGV[4], 'error', ARGV[5], 'at', ARGV[7])
if ARGV[3] ~= '' then redis.call('SET', KEYS[4], ARGV[5], 'EX', ARGV[6]) end
redis.call('HDEL', KEYS[3], ARGV[2])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
return 1
"""


@dataclass(frozen=True)
class Keys:
    prefix: str = "fg"

    @property
    def posts(self) -> str:
        return f"{self.prefix}:posts"

    @property
    def dead(self) -> str:
        return f"{self.prefix}:dead"

    @property
    def failures(self) -> str:
        return f"{self.prefix}:failures"

    @property
    def sync_posts(self) -> str:
        return f"{self.prefix}:posts:sync"

    def failures_of(self, stream: str) -> str:
        return self.failures if stream == self.posts else f"{self.failures}:sync"

    def reply(self, post_id: str) -> str:
        return f"{self.prefix}:reply:{post_id}"

    @property
    def workers(self) -> str:
        return f"{self.prefix}:workers"

    @property
    def audit(self) -> str:
        return f"{self.prefix}:decisions"

    @property
    def stats(self) -> str:
        return f"{self.prefix}:stats:decisions"

    def accepted(self, post_id: str) -> str:
        return f"{self.prefix}:post:{post_id}"

    def decision(self, post_id: str) -> str:
        return f"{self.prefix}:decision:{post_id}"

    def failed(self, post_id: str) -> str:
        return f"{self.prefix}:failed:{post_id}"

    def throughput(self, second: int) -> str:
        return f"{self.prefix}:tput:{second}"

    def author(self, author_id: str) -> str:
        return f"{self.prefix}:author:{author_id}"

    # policy versions: every version that has been live or shadow, by version hash
    @property
    def policy_versions(self) -> str:
        return f"{self.prefix}:policy:versions"

    @property
    def policy_history(self) -> str:
        return f"{self.prefix}:policy:history"

    def policy_role(self, role: str) -> str:
        return f"{self.prefix}:policy:{role}"

    def shadow_counts(self, version: str) -> str:
        return f"{self.prefix}:shadow:{version}:counts"

    def shadow_examples(self, version: str) -> str:
        return f"{self.prefix}:shadow:{version}:examples"

    # API keys (service/auth.py): one hash per active key, found by the sha256 of its token;
    # every key ever created (id -> JSON record); active names -> id; id -> last use (ms)
    def api_key(self, digest: str) -> str:
        return f"{self.prefix}:apikey:{digest}"

    @property
    def api_keys(self) -> str:
        return f"{self.prefix}:apikeys"

    @property
    def api_key_names(self) -> str:
        return f"{self.prefix}:apikeys:names"

    @property
    def api_key_used(self) -> str:
        return f"{self.prefix}:apikeys:used"

    # token buckets (service/ratelimit.py), e.g. scope "key" or "author"
    def rate_bucket(self, scope: str, ident: str) -> str:
        return f"{self.prefix}:rl:{scope}:{ident}"


@dataclass(frozen=True)
class Entry:
    """One stream entry as the worker reads it."""

    entry_id: str
    fields: dict[str, str]
    deliveries: int = 1
    stream: str = ""  # the stream it was read from (Keys.posts or Keys.sync_posts)

    @property
    def post_id(self) -> str:
        return self.fields.get("id", "")

    @property
    def enqueued_ms(self) -> int:
        try:
            return int(self.fields.get("t", "0"))
        except ValueError:
            return 0

    def post(self) -> dict:
        return json.loads(self.fields["post"])


QUEUED, DUPLICATE, FULL = "queued", "duplicate", "full"
POLL_S = 0.005  # how often a batch that waits for queued posts looks for more
_OUTCOME = {1: QUEUED, 0: DUPLICATE, -1: FULL}


class AsyncProducer:
    """The API's side of the queue."""

    def __init__(
        self, client: aredis.Redis, keys: Keys, retention_s: int, max_backlog: int = 0
    ) -> None:
        self.client = client
        self.keys = keys
        self.retention_s = retention_s
        self.max_backlog = max_backlog
        self._enqueue = client.register_script(ENQUEUE_LUA)

    async def known(self, post_ids: Sequence[str | None]) -> list[bool]:
        """Per id, whether a post with it was accepted (and is still retained); None: no."""
        ids = [(i, pid) for i, pid in enumerate(post_ids) if pid]
        out = [False] * len(post_ids)
        if ids:
            async with self.client.pipeline(transaction=False) as pipe:
                for _, pid in ids:
                    pipe.exists(self.keys.accepted(pid))
                found = await pipe.execute()
            for (i, _), n in zip(ids, found, strict=True):
                out[i] = bool(n)
        return out

    async def enqueue_many(
        self, posts: Sequence[tuple[str, dict]], priority: bool = False
    ) -> list[str]:
        """Queue (post_id, post) pairs; per post QUEUED, DUPLICATE or FULL (refused: the
        backlog is at ``max_backlog``; nothing was written for it). ``priority`` puts them
        on the stream workers read first (synchronous callers wait for these).

        Returns only once Redis has replied, i.e. the entries are in the stream (and, with
        the embedded server's ``appendfsync always``, on disk).
        """
        if not posts:
            return []
        now_ms = str(int(time.time() * 1000))
        stream = self.keys.sync_posts if priority else self.keys.posts
        calls = [([self.keys.accepted(post_id), stream],
                  [self.retention_s, post_id, json.dumps(post, ensure_ascii=False), now_ms,
                   self.max_backlog]) for post_id, post in posts]  # fmt: skip
        if len(calls) == 1:  # one EVALSHA: a pipeline would first ask SCRIPT EXISTS
            [(keys, args)] = calls
            return [_OUTCOME[int(await self._enqueue(keys=keys, args=args))]]
        async with self.client.pipeline(transaction=False) as pipe:
            for keys, args in calls:
                await self._enqueue(keys=keys, args=args, client=pipe)
            results = await pipe.execute()
        return [_OUTCOME[int(r)] for r in results]


class Consumer:
    """A worker's side of the queue: read, reclaim, dead-letter."""

    def __init__(self, client: redis.Redis, keys: Keys, group: str, name: str) -> None:
        self.client = client
        self.keys = keys
        self.group = group
        self.name = name
        self._dead_letter = client.register_script(DEAD_LETTER_LUA)

    @property
    def streams(self) -> tuple[str, str]:
        """Both streams, in the order they are served: synchronous callers first."""
        return (self.keys.sync_posts, self.keys.posts)

    def ensure_group(self) -> None:
        for stream in self.streams:
            try:
                self.client.xgroup_create(stream, self.group, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    def read(self, count: int, block_ms: int | None, streams: Sequence[str] = ()) -> list[Entry]:
        """New entries (``block_ms`` None: do not wait); COUNT applies per stream."""
        reply = self.client.xreadgroup(self.group, self.name, {s: ">" for s in streams or self.streams},
                                       count=count, block=block_ms)  # fmt: skip
        return [Entry(eid, fields, stream=s) for s, entries in reply or [] for eid, fields in entries]

    def read_batch(self, size: int, max_wait_ms: int, first_block_ms: int = 1000) -> list[Entry]:
        """Synchronous posts first (without waiting), else block for the first entries of
        either stream; then top the batch up.

        A batch that holds synchronous posts takes only what is there already: their
        callers are waiting, and the worker forwards one batch while the next gathers (the
        callers answered by one batch come back while the next goes forward). Queued posts
        alone wait up to ``max_wait_ms`` to fill the batch, polled here: Redis ends a BLOCK
        only at its ``hz`` tick (100 ms by default), so a short BLOCK waits far longer."""
        batch = self.read(size, None, [self.keys.sync_posts])
        if not batch:
            batch = self.read(size, first_block_ms)
        deadline = time.monotonic() + max_wait_ms / 1000
        while batch and len(batch) < size:
            more = self.read(size - len(batch), None)
            batch += more
            if any(e.stream == self.keys.sync_posts for e in batch):
                break
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if not more:
                time.sleep(min(left, POLL_S))
        return batch

    def reclaim(self, min_idle_ms: int, count: int) -> list[Entry]:
        """Take over entries another (dead or stuck) consumer left pending too long."""
        out: list[Entry] = []
        for stream in self.streams:
            reply = self.client.xautoclaim(
                stream, self.group, self.name, min_idle_ms, start_id="0-0", count=count
            )
            claimed = [(eid, fields) for eid, fields in reply[1] if fields is not None]
            if not claimed:
                continue
            with self.client.pipeline(transaction=False) as pipe:
                for eid, _ in claimed:
                    pipe.xpending_range(stream, self.group, min=eid, max=eid, count=1)
                pending = pipe.execute()
            for (eid, fields), info in zip(claimed, pending, strict=True):
                deliveries = info[0]["times_delivered"] if info else 1
                out.append(Entry(eid, fields, deliveries, stream=stream))
        return out

    def consumers(self) -> list[dict]:
        """The group's consumers over both streams: name, pending (summed), idle (least)."""
        merged: dict[str, dict] = {}
        for stream in self.streams:
            for c in self.client.xinfo_consumers(stream, self.group):
                m = merged.setdefault(c["name"], {"name": c["name"], "pending": 0, "idle": c["idle"]})
                m["pending"] += int(c["pending"])
                m["idle"] = min(int(m["idle"]), int(c["idle"]))
        return list(merged.values())

    def remove(self, consumer: str) -> None:
        """XGROUP DELCONSUMER on both streams; callers check that it holds nothing pending."""
        for stream in self.streams:
            self.client.xgroup_delconsumer(stream, self.group, consumer)

    def record_failure(self, entry: Entry) -> int:
        return int(self.client.hincrby(self.keys.failures_of(entry.stream), entry.entry_id, 1))

    def failures(self, entry: Entry) -> int:
        return int(self.client.hget(self.keys.failures_of(entry.stream), entry.entry_id) or 0)

    def failures_of(self, entries: Sequence[Entry]) -> list[int]:
        with self.client.pipeline(transaction=False) as pipe:
            for e in entries:
                pipe.hget(self.keys.failures_of(e.stream), e.entry_id)
            return [int(v or 0) for v in pipe.execute()]

    def dead_letter(self, entry: Entry, error: str, retention_s: int) -> None:
        post_id = entry.post_id
        self._dead_letter(
            keys=[entry.stream or self.keys.posts, self.keys.dead,
                  self.keys.failures_of(entry.stream or self.keys.posts),
                  self.keys.failed(post_id) if post_id else self.keys.failed("-")],
            args=[self.group, entry.entry_id, post_id, json.dumps(entry.fields, ensure_ascii=False),
                  error[:2000], retention_s, int(time.time() * 1000)],
        )  # fmt: skip
