"""Language-mix drift in Redis: counts per time bucket, one judge at a time, the state.

Keys (``fg`` is the deployment's prefix):

* ``fg:langmix:b:<start>``  hash language -> posts decided in the bucket starting at
                            ``<start>`` (epoch seconds; ``FLOODGATE_LANGUAGE_MIX_BUCKET_S``
                            wide), kept for the window and two buckets more
* ``fg:langmix:lock``       who judges now: ``SET NX PX`` for ``FLOODGATE_LANGUAGE_MIX_CHECK_S``
* ``fg:langmix:state``      hash: ``seq`` (bumped by every write), ``raised`` (the raised
                            languages, comma-separated) and ``data`` (JSON: ``drift.snapshot``:
                            shares, marks, raised alerts, profile, history)

Each worker adds its batch's languages and a try at the lock to the batch's one telemetry
round trip (idle, the try alone). The worker that got the lock reads the window and moves
the state with a compare-and-set on ``seq`` (so two judges, should a lock expire mid-way,
cannot both move it), and logs each raise and clear once. Every worker reads ``raised``
before each batch, with the policy versions, and decides the batch under the profile those
languages select in its own policy.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence

import redis
import redis.asyncio as aredis

from service.langmix import drift
from service.policy.model import Policy

log = logging.getLogger("floodgate.langmix")

CAS_LUA = """
-- KEYS[1]: the state hash; ARGV[1]: the seq the new state was computed from, ARGV[2]: it,
-- ARGV[3]: its raised languages
if (redis.call('HGET', KEYS[1], 'seq') or '0') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'seq', tostring(tonumber(ARGV[1]) + 1), 'data', ARGV[2],
           'raised', ARGV[3])
return 1
"""


class MixKeys:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.state = f"{prefix}:langmix:state"
        self.lock = f"{prefix}:langmix:lock"

    def bucket(self, start: int) -> str:
        return f"{self.prefix}:langmix:b:{start}"


class DriftMonitor:
    """A worker's side: count, judge when it holds the lock, follow the state."""

    def __init__(
        self, client: redis.Redis, prefix: str, name: str, bucket_s: int, check_s: float
    ) -> None:
        self.client = client
        self.keys = MixKeys(prefix)
        self.name = name
        self.bucket_s = bucket_s
        self.check_ms = max(int(check_s * 1000), 1)
        self._cas = client.register_script(CAS_LUA)

    def queue(self, pipe, policy: Policy, languages: Sequence[str], now_s: float) -> int:
        """Add to the worker's telemetry pipeline, when the policy watches the mix: the
        batch's new decisions' languages and a try at the judge's lock. Returns how many
        results, at the end of the pipeline's, are this monitor's (0: none; see ``settle``)."""
        spec = policy.language_mix
        if spec is None:
            return 0
        if languages:
            key = self.keys.bucket(drift.bucket_of(now_s, self.bucket_s))
            for code, count in drift.count_languages(languages).items():
                pipe.hincrby(key, code, count)
            pipe.expire(key, drift.bucket_ttl_s(spec.window_minutes * 60, self.bucket_s))
        pipe.set(self.keys.lock, self.name, nx=True, px=self.check_ms)
        return len(set(languages)) + 1 + bool(languages)

    def settle(self, results: Sequence, policy: Policy, version: str, now_s: float) -> None:
        """This monitor's ``results`` of the pipeline: judge the window if the lock was ours."""
        if not results or policy.language_mix is None or results[-1] is not True:
            return
        try:
            self.judge(policy, version, now_s)
        except redis.RedisError:
            raise
        except Exception:  # a bug here must not stop moderation: the state stays
            log.exception("language mix: judging the window failed")

    def current(self) -> frozenset[str]:
        """The raised languages as stored: what the next batch decides under."""
        raw = self.client.hget(self.keys.state, "raised")
        return frozenset(filter(None, (raw or "").split(",")))

    def judge(self, policy: Policy, version: str, now_s: float) -> dict | None:
        """Read the window, assess it, store the new state if nobody moved it meanwhile
        (returned; None when another judge did), and log what moved."""
        spec = policy.language_mix
        assert spec is not None
        now_ms = int(now_s * 1000)
        starts = drift.window_buckets(now_s, spec.window_minutes * 60, self.bucket_s)
        with self.client.pipeline(transaction=False) as pipe:
            for start in starts:
                pipe.hgetall(self.keys.bucket(start))
            pipe.hmget(self.keys.state, "seq", "data")
            *buckets, (seq, raw) = pipe.execute()
        previous = json.loads(raw) if raw else None
        reading = drift.assess(drift.merge_counts(buckets), spec, drift.alerts_of(previous), now_ms)
        profile = policy.drift_profile(reading.raised)
        state = drift.snapshot(reading, spec, previous=previous, now_ms=now_ms,
                               bucket_s=self.bucket_s, profile=profile, policy_version=version,
                               evaluator=self.name)  # fmt: skip
        raised = ",".join(sorted(reading.raised))
        if not self._cas(keys=[self.keys.state], args=[seq or "0", json.dumps(state), raised]):
            return None
        for move in reading.transitions:
            _log(move, state["window_s"], profile)
        return state


def _log(move: drift.Transition, window_s: float, profile: str | None) -> None:
    fields = {"event": f"language_mix_{move.event}", "language": move.language,
              "share": round(move.share, 4), "baseline": move.baseline,
              "mark": round(move.mark, 4), "posts": move.posts, "window_s": window_s,
              "profile": profile}  # fmt: skip
    then = f"decisions use profile {profile}" if profile else "decisions use the policy as written"
    if move.event == "raised":
        log.warning("language mix drift: %s is %.1f %% of the last %d posts (baseline %.1f %%, "
                    "raise mark %.1f %%): alert raised; %s", move.language, move.share * 100,
                    move.posts, move.baseline * 100, move.mark * 100, then, extra=fields)  # fmt: skip
    else:
        log.info("language mix drift: %s is back to %.1f %% of the last %d posts (clear mark "
                 "%.1f %%): alert cleared; %s", move.language, move.share * 100, move.posts,
                 move.mark * 100, then, extra=fields)  # fmt: skip


async def read_state(client: aredis.Redis, prefix: str) -> dict | None:
    """The state as /v1/stats and /metrics show it (None: never judged)."""
    raw = await client.hget(MixKeys(prefix).state, "data")
    return drift.summary(json.loads(raw) if raw else None, int(time.time() * 1000))
