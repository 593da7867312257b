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

Overlap: ``run`` takes a batch forward (language, the model, category scores: all of torch)
in its own thread and hands it to a finisher thread for the policy, the commit and the
telemetry round trip, then reads and forwards the next batch meanwhile (torch releases the
GIL). At most one batch waits in the finisher: two batches are in hand at most.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace

import redis
from pydantic import ValidationError

from service import telemetry
from service.config import Settings
from service.heartbeat import Heartbeat, WorkerState, live_workers
from service.langmix.store import DriftMonitor
from service.pipeline import Forward, Job, Moderator
from service.policy import LoadedPolicy, PolicyError
from service.policy.parse import load_bundle
from service.queue import Consumer, Entry, Keys
from service.redisdb import UNAVAILABLE, check_server, connect
from service.review.rules import plan as review_plan
from service.schemas import PostIn
from service.store import AuthorActivity, Committed, DecisionWriter, PolicyRegistry, ShadowStats

log = logging.getLogger("floodgate.worker")


def redelivery_limit(s: Settings) -> int:
    """Deliveries after which an entry is dead-lettered whatever happened (a safety net):
    an innocent entry is redelivered once per crash of a culprit decided before it, and a
    culprit crashes at most ``max_deliveries`` times, so twice that plus one is generous."""
    return 2 * s.max_deliveries + 1


class Worker:
    def __init__(
        self,
        settings: Settings,
        moderator: Moderator,
        name: str | None = None,
        client: redis.Redis | None = None,
    ) -> None:
        if client is None and not settings.redis_url:
            raise ValueError("the worker needs a Redis URL")
        self.settings = settings
        self.moderator = moderator
        # the loop, the finisher and the heartbeat thread: a few connections are enough
        self.client = client or connect(
            settings.redis_url or "", max_connections=6,
            pool_timeout_s=settings.redis_pool_timeout_s,
            socket_timeout_s=settings.redis_socket_timeout_s,
        )  # fmt: skip
        check_server(self.client)
        keys = Keys(settings.key_prefix)
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.state = WorkerState(self.name)
        self._note_versions()
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
        self.langmix = DriftMonitor(self.client, settings.key_prefix, self.name,
                                    settings.language_mix_bucket_s, settings.language_mix_check_s)  # fmt: skip
        self.stopping = False
        self._last_claim = 0.0
        self._last_prune = time.monotonic()
        self._shadow_version: str | None = None
        self._finisher: ThreadPoolExecutor | None = None  # set while run() runs
        self._pending: Future | None = None  # the batch in the finisher

    # ------------------------------------------------------------------ policy

    def sync_policy(self) -> None:
        """Follow the live and shadow versions published in Redis (checked every batch), and
        the languages whose language-mix alert is raised (service/langmix: they select the
        profile the batch is decided under).

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
        self.moderator.use_drift(self.langmix.current())

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

    def _note_versions(self) -> None:
        """What the heartbeat reports: the model and the policy this worker decides with."""
        self.state.model_version = self.moderator.classifier.version
        self.state.policy_version = self.moderator.policy.version

    @property
    def decided(self) -> int:
        return self.state.decided

    def run(self, until: Callable[[], bool] | None = None) -> None:
        heartbeat = Heartbeat(self.client, self.consumer.keys, self.state,
                              self.settings.heartbeat_interval_s).start()  # fmt: skip
        try:
            self._loop(until)
        finally:
            heartbeat.stop()
        log.info("worker %s: stopped after %d decisions", self.name, self.decided)

    def _loop(self, until: Callable[[], bool] | None) -> None:
        while True:  # Redis may be away at start as well as later
            try:
                self.consumer.ensure_group()
                self.sync_policy()
                break
            except UNAVAILABLE as exc:
                log.warning("worker %s: Redis unavailable (%s), retrying in 1 s", self.name, exc)
                time.sleep(1)
        log.info("worker %s: reading %s", self.name, ", ".join(self.consumer.streams))
        with ThreadPoolExecutor(1, thread_name_prefix=f"finish-{self.name}") as self._finisher:
            try:
                self._steps(until)
            finally:  # the batch in the finisher is stored before the worker stops
                try:
                    self._settle()
                except Exception:  # not acked: its entries stay pending and are reclaimed
                    log.exception("worker %s: the last batch was not stored", self.name)
                self._finisher = None

    def _steps(self, until: Callable[[], bool] | None) -> None:
        while not self.stopping and not (until and until()):
            try:
                self.step()
                self._prune_consumers()
            except redis.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                # the server lost the stream or group (restarted without persistence)
                log.warning("worker %s: consumer group missing, recreating it", self.name)
                self.consumer.ensure_group()
            except UNAVAILABLE as exc:
                # nothing was acked: entries in hand stay pending and are retried
                log.warning("worker %s: Redis unavailable (%s), retrying in 1 s", self.name, exc)
                time.sleep(1)
            except Exception:
                # a bug outside the per-post steps must not end moderation: the entries in
                # hand stay pending, are reclaimed, and fail per post until dead-lettered
                log.exception("worker %s: batch failed; its entries stay pending", self.name)
                time.sleep(1)

    def _prune_consumers(self) -> None:
        """Now and then (a quarter of the idle limit, at most a minute): remove consumers of
        the group that hold nothing and have been idle ``consumer_idle_remove_s`` (workers
        gone for good), never a live one."""
        if time.monotonic() - self._last_prune < min(60.0, self.settings.consumer_idle_remove_s / 4):
            return
        self._last_prune = time.monotonic()
        raw = self.client.hgetall(self.consumer.keys.workers)
        alive = {w["name"] for w in live_workers(raw, self.settings.heartbeat_ttl_s)}
        idle_ms = self.settings.consumer_idle_remove_s * 1000
        for c in self.consumer.consumers():
            if (c["name"] != self.name and c["name"] not in alive and int(c["pending"]) == 0
                    and int(c["idle"]) >= idle_ms):  # fmt: skip
                self.consumer.remove(c["name"])
                log.info("worker %s: removed idle consumer %s", self.name, c["name"])

    def step(self) -> int:
        """One batch: reclaim abandoned entries if due, else read new ones. Inside ``run``
        a batch of fresh entries goes forward here and the finisher concludes and stores it
        while the next one is read; returns the decisions stored meanwhile."""
        s = self.settings
        self._note_versions()
        batch: list[Entry] = []
        now = time.monotonic()
        if now - self._last_claim >= s.claim_idle_ms / 2000:
            self._last_claim = now
            batch = self.consumer.reclaim(s.claim_idle_ms, s.batch_size)
        if not batch:
            batch = self.consumer.read_batch(s.batch_size, s.batch_max_wait_ms, first_block_ms=500)
        if not batch:
            done = self._settle()
            if self.state.batch_size:  # idle after work: the forward buffers go back
                self.moderator.release_memory()
            self.state.holding(0)
            self.sync_policy()
            if self.moderator.policy.policy.language_mix is not None:
                with self.client.pipeline(transaction=False) as pipe:  # idle: judged on
                    self._follow_drift(pipe, [])
            return done
        if self._finisher is None or any(e.deliveries > 1 for e in batch):
            # redelivered entries are decided one at a time, each stored before the next
            done = self._settle()
            self.sync_policy()
            return done + self.process(batch)
        self.sync_policy()  # read after the batch: never decided under an older state
        return self._overlap(batch)

    def _overlap(self, batch: list[Entry]) -> int:
        """Forward ``batch`` here, then hand it to the finisher once the previous one is
        stored; returns the decisions stored meanwhile."""
        assert self._finisher is not None
        self.state.holding(len(batch))
        jobs = self._with_author_activity(self._jobs_of(batch))
        self._inject_crash(jobs)
        fw = None
        try:
            fw = self.moderator.forward([j for _, j in jobs]) if jobs else None
        except Exception:  # the finisher decides them again, one by one if need be
            log.exception("worker %s: forward pass of %d failed", self.name, len(jobs))
        done = self._settle()
        if jobs:
            # the finisher's part: policy and commit, no torch (of the Moderator only ``fw``)
            self._pending = self._finisher.submit(self._decide_jobs, jobs, False, fw)
        return done

    def _settle(self) -> int:
        """Wait for the batch in the finisher; the decisions it stored (its errors raise)."""
        pending, self._pending = self._pending, None
        return pending.result() if pending is not None else 0

    # ------------------------------------------------------------------ batch

    def process(self, entries: list[Entry]) -> int:
        """Decide a batch; returns how many decisions were new.

        Entries delivered before were in hand when a worker died or stalled (a post that
        segfaults a native library or runs out of memory takes its whole batch down). They
        are decided one at a time, each stored before the next, so the innocent ones are
        decided and the culprit is cornered at once (one crash per attempt, where halving
        the batch would cost log2(batch) more crashes, each a worker restart). Alone, every
        attempt counts as one of the post's failures before it starts, so a crash counts
        too, and ``max_deliveries`` of them dead-letter it.
        """
        self.state.holding(len(entries))
        try:
            fresh, suspects = [], []
            for entry in entries:
                if entry.deliveries > redelivery_limit(self.settings):
                    self.consumer.dead_letter(
                        entry,
                        f"delivered {entry.deliveries} times without a decision "
                        "(workers died or stalled on it)",
                        self.settings.decision_ttl_s,
                    )
                else:
                    (fresh if entry.deliveries <= 1 else suspects).append(entry)
            done = self._decide_group(fresh) if fresh else 0
            for entry in self._one_by_one(suspects):
                done += self._decide_group([entry], alone=True)
            return done
        finally:
            self.state.holding(0)

    def _one_by_one(self, suspects: list[Entry]) -> list[Entry]:
        """Redelivered entries in the order to decide them alone: those that never failed
        first, so the innocent ones of a crashed batch are stored before the culprit runs."""
        if not suspects:
            return []
        failures = self.consumer.failures_of(suspects)
        order = sorted(range(len(suspects)), key=lambda i: failures[i])
        return [suspects[i] for i in order]

    def _jobs_of(self, entries: list[Entry]) -> list[tuple[Entry, Job]]:
        """The entries as jobs; a malformed one is dead-lettered (it will never parse)."""
        jobs: list[tuple[Entry, Job]] = []
        for entry in entries:
            try:
                post = PostIn.model_validate(entry.post())
                if not entry.post_id:
                    raise ValueError("entry has no post id")
            except (KeyError, ValueError, ValidationError) as exc:
                self.consumer.dead_letter(entry, f"malformed entry: {exc}",
                                          self.settings.decision_ttl_s)  # fmt: skip
                continue
            jobs.append((entry, Job(entry.post_id, post, entry.enqueued_ms)))
        return jobs

    def _decide_group(self, entries: list[Entry], alone: bool = False) -> int:
        s = self.settings
        jobs = self._jobs_of(entries)
        if alone and jobs:
            [(entry, job)] = jobs
            attempts = self.consumer.record_failure(entry)  # counted before: a crash counts
            if attempts > s.max_deliveries:
                self.consumer.dead_letter(
                    entry,
                    f"failed or crashed the worker while decided alone ({attempts - 1} attempts)",
                    s.decision_ttl_s,
                )
                return 0
        jobs = self._with_author_activity(jobs)
        if not jobs:
            return 0
        self._inject_crash(jobs)
        return self._decide_jobs(jobs, alone)

    def _decide_jobs(self, jobs: list[tuple[Entry, Job]], alone: bool = False,
                     fw: Forward | None = None) -> int:  # fmt: skip
        """Decide and store ``jobs`` (concluding ``fw``, their forward pass, when given); a
        batch that fails is decided again one post at a time."""
        try:
            started, earlier = time.perf_counter(), fw.seconds if fw is not None else 0.0
            if fw is None:
                fw = self.moderator.forward([j for _, j in jobs])
            decisions = self.moderator.conclude(fw)
            spent = earlier + time.perf_counter() - started
            return self._commit(list(zip((e for e, _ in jobs), decisions, strict=True)),
                                (len(jobs), spent), fw.policy)  # fmt: skip
        except Exception as exc:
            if alone:
                self._post_failed(jobs[0][0], jobs[0][1].post_id, exc, counted=True)
                return 0
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

    def _inject_crash(self, jobs: list[tuple[Entry, Job]]) -> None:
        """Fault-injection suites only (``fault_crash_marker``): die as a native crash would."""
        marker = self.settings.fault_crash_marker
        if marker and any(marker in j.post.text for _, j in jobs):
            log.error("worker %s: fault injection: crashing on a marked post", self.name)
            os.kill(os.getpid(), signal.SIGKILL)

    def _post_failed(
        self, entry: Entry, post_id: str, exc: Exception, counted: bool = False
    ) -> None:
        """Count a failure of this post alone; dead-letter it after ``max_deliveries``."""
        s = self.settings
        failures = self.consumer.failures(entry) if counted else self.consumer.record_failure(entry)
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

    def _commit(self, pairs, batch: tuple[int, float] | None = None,
                judged_by: LoadedPolicy | None = None) -> int:  # fmt: skip
        """Store the decisions (judged by ``judged_by``, default the policy in force); ``batch``
        (posts, seconds in the decide path) is observed in the same telemetry round trip."""
        # review outcomes enter their queue (or take the overflow fallback) in the commit itself
        policy, now = (judged_by or self.moderator.judging).policy, time.time()
        planned = [review_plan(d, e.post(), policy, now) for e, d in pairs]
        items = [
            Committed(
                entry_id=e.entry_id,
                post_id=d.post_id,
                decision_json=p.decision_json,
                language=d.language.code,
                action=d.action,
                review=p.review,
            )
            for (e, d), p in zip(pairs, planned, strict=True)
        ]
        # one commit per stream the entries came from (synchronous callers' stream first)
        flags = [False] * len(items)
        for stream in self.consumer.streams:
            idx = [i for i, (e, _) in enumerate(pairs) if (e.stream or self.consumer.keys.posts) == stream]
            if idx:
                done = self.writer.commit([items[i] for i in idx], stream=stream)
                for i, new in zip(idx, done, strict=True):
                    flags[i] = new
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
        self.state.decided += sum(flags)
        self._observe([d for (_, d), new in zip(pairs, flags, strict=True) if new], batch)
        return sum(flags)

    def _observe(self, decisions: list, batch: tuple[int, float] | None) -> None:
        """One pipeline per batch: its size and decide time, and for new decisions only the
        enqueue -> decision latency, the decision counters and their languages (language-mix
        drift: and this worker's try at judging the window)."""
        if not decisions and batch is None:
            return
        labels = [(d.language.code, d.action, c) for d in decisions
                  for c in ({c for r in d.reasons for c in r.categories} or {"none"})]  # fmt: skip
        with self.client.pipeline(transaction=False) as pipe:
            if batch is not None:
                telemetry.observe(pipe, self.consumer.keys, telemetry.BATCH, [batch[0]])
                telemetry.observe(pipe, self.consumer.keys, telemetry.MODEL_TIME, [batch[1]])
            telemetry.observe(pipe, self.consumer.keys, telemetry.LATENCY,
                              [(d.timings.queue_wait_ms + d.timings.processing_ms) / 1000
                               for d in decisions])  # fmt: skip
            telemetry.count_decisions(pipe, self.consumer.keys, labels)
            self._follow_drift(pipe, [d.language.code for d in decisions])

    def _follow_drift(self, pipe, languages: list[str]) -> None:
        """Language-mix drift, in the caller's pipeline (executed here): count the languages,
        and judge the window when this worker's turn has come (service/langmix)."""
        lp, now = self.moderator.policy, time.time()
        mine = self.langmix.queue(pipe, lp.policy, languages, now)
        results = pipe.execute()
        self.langmix.settle(results[len(results) - mine :], lp.policy, lp.version, now)
