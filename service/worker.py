"""Worker: read batches from the posts stream, decide them, store the decisions, acknowledge.

Delivery is at least once; decisions are written at most once (see store.COMMIT_LUA), so
every accepted post ends with exactly one decision or one dead letter:

* a batch is read with XREADGROUP (size and max wait configurable);
* entries another consumer left pending longer than ``claim_idle_ms`` (a crashed or stuck
  worker) are taken over with XAUTOCLAIM before new ones are read;
* an entry that cannot be parsed goes straight to the dead-letter stream; one whose
  processing fails is retried on its own, and after ``max_deliveries`` attempts (failures
  here, or deliveries to workers that died on it) it is dead-lettered too, with the error,
  and the worker goes on;
* SIGTERM / SIGINT finish the batch in hand (decide, store, ack), then exit.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
import traceback
from collections.abc import Callable
from dataclasses import replace

import redis
from pydantic import ValidationError

from service.config import Settings
from service.pipeline import Job, Moderator
from service.policy import PolicyError, load_policy
from service.policy.parse import load_bundle
from service.queue import Consumer, Entry, Keys
from service.redisdb import check_server, connect
from service.schemas import PostIn
from service.store import AuthorActivity, Committed, DecisionWriter, PolicyRegistry, ShadowStats

log = logging.getLogger("floodgate.worker")


class Worker:
    def __init__(self, settings: Settings, moderator: Moderator, name: str | None = None) -> None:
        if not settings.redis_url:
            raise ValueError("the worker needs a Redis URL")
        self.settings = settings
        self.moderator = moderator
        self.client = connect(settings.redis_url)
        check_server(self.client)
        keys = Keys(settings.key_prefix)
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.consumer = Consumer(self.client, keys, settings.consumer_group, self.name)
        self.writer = DecisionWriter(
            self.client,
            keys,
            settings.consumer_group,
            settings.decision_ttl_s,
            settings.audit_maxlen,
        )
        self.registry = PolicyRegistry(self.client, keys)
        self.activity = AuthorActivity(self.client, keys)
        self.shadow_stats = ShadowStats(self.client, keys)
        self.stopping = False
        self.decided = 0
        self._last_claim = 0.0
        self._shadow_version: str | None = None

    # ------------------------------------------------------------------ policy

    def sync_policy(self) -> None:
        """Follow the live and shadow versions published in Redis (checked every batch).

        Swapping happens between batches, so no post is dropped or decided twice; a
        version that fails to load (it never should: it was validated before publishing)
        is logged and the current one stays.
        """
        current = self.registry.current()
        if current["live"] is None:
            lp = self.moderator.policy
            self.registry.publish(lp.bundle(), lp.version, lp.name)
        elif current["live"] != self.moderator.policy.version:
            self._swap("live", current["live"])
        if current["shadow"] != self._shadow_version:
            if current["shadow"] is None:
                self.moderator.use_shadow(None)
                self._shadow_version = None
                log.info("worker %s: shadow policy cleared", self.name)
            else:
                self._swap("shadow", current["shadow"])

    def _swap(self, role: str, version: str) -> None:
        bundle = self.registry.bundle(version)
        try:
            if bundle is None:
                raise ValueError(f"version {version} is not in the registry")
            lp = load_bundle(bundle)
        except (PolicyError, ValueError) as exc:
            log.error("worker %s: cannot load %s policy %s: %s", self.name, role, version, exc)
            return
        if role == "live":
            self.moderator.use_policy(lp)
        else:
            self.moderator.use_shadow(lp)
            self._shadow_version = lp.version
        log.info("worker %s: %s policy is now %s (%s)", self.name, role, lp.version, lp.name)

    def request_stop(self, *_: object) -> None:
        if not self.stopping:
            log.info("worker %s: stop requested, finishing the batch in hand", self.name)
        self.stopping = True

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)

    # ------------------------------------------------------------------ loop

    def run(self, until: Callable[[], bool] | None = None) -> None:
        self.consumer.ensure_group()
        self.sync_policy()
        log.info("worker %s: reading %s", self.name, self.consumer.keys.posts)
        while not self.stopping and not (until and until()):
            try:
                self.step()
            except redis.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                # the server lost the stream or group (restarted without persistence)
                log.warning("worker %s: consumer group missing, recreating it", self.name)
                self.consumer.ensure_group()
            except redis.ConnectionError as exc:
                # nothing was acked: entries in hand stay pending and are retried
                log.warning("worker %s: Redis unavailable (%s), retrying in 1 s", self.name, exc)
                time.sleep(1)
            except Exception:
                # a bug outside the per-post steps must not end moderation: the entries in
                # hand stay pending, are reclaimed, and fail per post until dead-lettered
                log.exception("worker %s: batch failed; its entries stay pending", self.name)
                time.sleep(1)
        log.info("worker %s: stopped after %d decisions", self.name, self.decided)

    def step(self) -> int:
        """One batch: reclaim abandoned entries if due, else read new ones; returns decided."""
        s = self.settings
        batch: list[Entry] = []
        now = time.monotonic()
        if now - self._last_claim >= s.claim_idle_ms / 2000:
            self._last_claim = now
            batch = self.consumer.reclaim(s.claim_idle_ms, s.batch_size)
        if not batch:
            batch = self.consumer.read_batch(s.batch_size, s.batch_max_wait_ms, first_block_ms=500)
        if not batch:
            self.sync_policy()
            return 0
        self.sync_policy()
        return self.process(batch)

    # ------------------------------------------------------------------ batch

    def process(self, entries: list[Entry]) -> int:
        s = self.settings
        jobs: list[tuple[Entry, Job]] = []
        for entry in entries:
            if entry.deliveries > s.max_deliveries:
                self.consumer.dead_letter(
                    entry,
                    f"delivered {entry.deliveries} times without a decision "
                    "(workers died or stalled on it)",
                    s.decision_ttl_s,
                )
                continue
            try:
                post = PostIn.model_validate(entry.post())
                if not entry.post_id:
                    raise ValueError("entry has no post id")
            except (KeyError, ValueError, ValidationError) as exc:
                # a malformed entry will never parse: retrying it is pointless
                self.consumer.dead_letter(entry, f"malformed entry: {exc}", s.decision_ttl_s)
                continue
            jobs.append((entry, Job(entry.post_id, post, entry.enqueued_ms)))
        jobs = self._with_author_activity(jobs)
        if not jobs:
            return 0
        try:
            decisions = self.moderator.decide([j for _, j in jobs])
            return self._commit(list(zip((e for e, _ in jobs), decisions, strict=True)))
        except Exception:
            log.exception(
                "worker %s: batch of %d failed, retrying one by one", self.name, len(jobs)
            )
        done = 0
        for entry, job in jobs:
            try:
                done += self._commit([(entry, self.moderator.decide([job])[0])])
            except Exception as exc:
                self._post_failed(entry, job.post_id, exc)
        return done

    def _post_failed(self, entry: Entry, post_id: str, exc: Exception) -> None:
        """Count a failure of this post alone; dead-letter it after ``max_deliveries``."""
        s = self.settings
        failures = self.consumer.record_failure(entry)
        error = f"{type(exc).__name__}: {exc}"
        log.warning("worker %s: post %s failed (%d): %s", self.name, post_id, failures, error)
        if failures >= s.max_deliveries:
            self.consumer.dead_letter(
                entry, f"{error}\n{traceback.format_exc(limit=5)}", s.decision_ttl_s
            )
        # else: left pending; reclaimed and retried after claim_idle_ms

    def _with_author_activity(self, jobs: list[tuple[Entry, Job]]) -> list[tuple[Entry, Job]]:
        """Count each author's recent posts; a post whose time cannot be used fails alone."""
        windows = self.moderator.policy.policy.author_windows()
        if not windows or not any(j.post.author is not None for _, j in jobs):
            return jobs
        kept, items = [], []
        for entry, job in jobs:
            if job.post.author is not None:
                try:
                    at = job.post.created_at
                    at_ms = int(at.timestamp() * 1000) if at is not None else entry.enqueued_ms
                except (ValueError, OverflowError, OSError) as exc:
                    self._post_failed(entry, job.post_id, exc)
                    continue
                items.append((job.post.author.id, job.post_id, at_ms))
            kept.append((entry, job))
        counts = dict(zip((pid for _, pid, _ in items),
                          self.activity.record_and_count(items, windows), strict=True))  # fmt: skip
        return [
            (e, replace(j, author_posts=counts[j.post_id]) if j.post_id in counts else j)
            for e, j in kept
        ]

    def _commit(self, pairs) -> int:
        items = [
            Committed(
                entry_id=e.entry_id,
                post_id=d.post_id,
                decision_json=d.model_dump_json(),
                language=d.language.code,
                action=d.action,
            )
            for e, d in pairs
        ]
        flags = self.writer.commit(items)
        # shadow comparisons count each post once, like the decisions themselves
        shadowed = [
            (d.shadow.policy.version, {
                "post_id": d.post_id, "text": e.post().get("text", "")[:280],
                "language": d.language.code, "live": d.action, "shadow": d.shadow.action,
                "live_rules": [r.rule for r in d.reasons], "shadow_rules": d.shadow.rules,
            })
            for (e, d), new in zip(pairs, flags, strict=True)
            if new and d.shadow is not None
        ]  # fmt: skip
        for version in {v for v, _ in shadowed}:
            self.shadow_stats.record(version, [it for v, it in shadowed if v == version])
        self.decided += sum(flags)
        return sum(flags)


def run_worker(settings: Settings) -> None:
    """Entry point of a worker process (`floodgate worker` and the ones `serve` starts)."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    registry = PolicyRegistry(connect(settings.redis_url or ""), Keys(settings.key_prefix))
    live = registry.current()["live"]
    bundle = registry.bundle(live) if live else None
    # the live version in Redis wins over the file: the file may be mid-edit
    policy = load_bundle(bundle) if bundle else load_policy(settings.policy_path)
    moderator = Moderator.from_settings(settings, policy=policy)
    moderator.warm_up()
    worker = Worker(settings, moderator)
    worker.install_signal_handlers()
    parent = os.environ.get("FLOODGATE_PARENT_PID")
    # started by `serve`: stop (after the batch in hand) if serve itself is gone
    orphaned = (lambda: os.getppid() != int(parent)) if parent else None
    worker.run(until=orphaned)
