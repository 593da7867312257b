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

import redis
from pydantic import ValidationError

from service.config import Settings
from service.pipeline import Job, Moderator
from service.queue import Consumer, Entry, Keys
from service.redisdb import check_server, connect
from service.schemas import PostIn
from service.store import Committed, DecisionWriter

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
        self.stopping = False
        self.decided = 0
        self._last_claim = 0.0

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
        return self.process(batch) if batch else 0

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
                failures = self.consumer.record_failure(entry)
                error = f"{type(exc).__name__}: {exc}"
                log.warning(
                    "worker %s: post %s failed (%d): %s", self.name, job.post_id, failures, error
                )
                if failures >= s.max_deliveries:
                    self.consumer.dead_letter(
                        entry, f"{error}\n{traceback.format_exc(limit=5)}", s.decision_ttl_s
                    )
                # else: left pending; reclaimed and retried after claim_idle_ms
        return done

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
        new = self.writer.commit(items)
        self.decided += new
        return new


def run_worker(settings: Settings) -> None:
    """Entry point of a worker process (`floodgate worker` and the ones `serve` starts)."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    moderator = Moderator.from_settings(settings)
    moderator.warm_up()
    worker = Worker(settings, moderator)
    worker.install_signal_handlers()
    parent = os.environ.get("FLOODGATE_PARENT_PID")
    # started by `serve`: stop (after the batch in hand) if serve itself is gone
    orphaned = (lambda: os.getppid() != int(parent)) if parent else None
    worker.run(until=orphaned)
