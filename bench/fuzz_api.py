"""Fuzz the API through its own OpenAPI document with schemathesis, with and without a key.

    python bench/fuzz_api.py --examples 25

Starts the real app (uvicorn, 127.0.0.1, a free port) and a worker against Redis on
127.0.0.1:6379 (or ``--redis-url``) under a private key prefix with one admin key, so the
API is closed (not in open mode). For every operation of /openapi.json, for valid (positive) and invalid
(negative) requests, once without a key and once with the admin key, schemathesis draws up
to ``--examples`` requests (Hypothesis, fixed seed) and each answer is judged by its checks:

  server errors        not_a_server_error: no 5xx
  schema violations    response_schema_conformance: the body matches the documented schema
  undocumented status  status_code_conformance: the status is documented for the operation
  content type         content_type_conformance: the documented media type

Prints the counts and one example per distinct failure; ``--json`` writes them to a file.
Exit status 1 when any check failed. The private keys are deleted afterwards. The key's
token bucket is raised for this run (the fuzz explores routes; bench/ratelimit_load.py
drives the limiter). A real worker (`python -m service worker`, the built model) runs on
the same prefix, so /healthz is ok and synchronous moderation calls are decided; with
``--no-worker`` /healthz answers its documented "degraded" 503 (counted apart, not as a
server error) and synchronous calls wait ``sync_deadline_s`` (1 s then) in vain.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path

import requests
import uvicorn
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis import openapi as st_openapi
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service.api import create_app
from service.auth import KeyStore
from service.config import Settings
from service.processes import free_port
from service.queue import Keys
from service.redisdb import connect

CHECKS = {
    "server_errors": not_a_server_error,
    "schema_violations": response_schema_conformance,
    "undocumented_status": status_code_conformance,
    "content_type": content_type_conformance,
}


class Server:
    def __init__(self, app_settings: Settings) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(create_app(app_settings), host="127.0.0.1", port=self.port,
                                log_level="error")  # fmt: skip
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if requests.get(self.url + "/livez", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                time.sleep(0.05)
        raise RuntimeError("the API did not start")

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(15)


def start_worker(prefix: str, redis_url: str) -> subprocess.Popen:
    """A real worker (`python -m service worker`) on the bench's prefix: synchronous calls
    are decided and /healthz is ok, as in a deployment."""
    env = {**os.environ, "REDIS_URL": redis_url, "FLOODGATE_KEY_PREFIX": prefix,
           "FLOODGATE_POLICY_WATCH": "false", "FLOODGATE_TORCH_THREADS": "1",
           "FLOODGATE_LOG_LEVEL": "WARNING"}  # fmt: skip
    return subprocess.Popen([sys.executable, "-m", "service", "worker"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip


def wait_healthy(url: str, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if requests.get(url + "/healthz", timeout=5).status_code == 200:
            return
        time.sleep(0.5)
    raise RuntimeError("no worker became alive (is the model built? ./dev setup)")


class Tally:
    def __init__(self) -> None:
        self.examples = 0
        self.no_invalid = 0  # operations with no invalid request to draw
        self.healthz_degraded = 0
        self.failures: Counter[str] = Counter()
        self.statuses: Counter[int] = Counter()
        self.by_operation: defaultdict[str, Counter[int]] = defaultdict(Counter)
        self.samples: dict[tuple[str, str, str], str] = {}  # (check, operation, title) -> repro

    def judge(self, case, response, headers: dict[str, str]) -> None:
        self.examples += 1
        self.statuses[response.status_code] += 1
        self.by_operation[case.operation.label][response.status_code] += 1
        # no worker runs in this bench: /healthz's "degraded" 503 is the documented answer
        degraded = (case.operation.label == "GET /healthz" and response.status_code == 503
                    and response.json().get("status") == "degraded")  # fmt: skip
        self.healthz_degraded += degraded
        for name, check in CHECKS.items():
            if name == "server_errors" and degraded:
                continue
            try:
                case.validate_response(response, checks=[check], headers=headers)
            except (AssertionError, BaseExceptionGroup) as exc:  # Failure / FailureGroup
                self.failures[name] += 1
                failures = getattr(exc, "exceptions", None) or [exc]
                for f in failures:
                    title = getattr(f, "title", type(f).__name__)
                    key = (name, case.operation.label, title)
                    if key not in self.samples:
                        body = response.text[:300].replace("\n", " ")
                        self.samples[key] = (f"{response.status_code} {case.method} "
                                             f"{case.formatted_path} -> {body}")  # fmt: skip


def fuzz(schema, base_url: str, who: dict[str, dict[str, str]], examples: int,
         run_seed: int, tally: Tally) -> int:  # fmt: skip
    operations = 0
    session = requests.Session()
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            for headers in who.values():
                _run_one(operation, mode, headers, base_url, session, examples, run_seed, tally)
    return operations


def _run_one(operation, mode, headers, base_url, session, examples, run_seed, tally) -> None:
    @seed(run_seed)
    @settings(max_examples=examples, database=None, deadline=None,
              phases=[Phase.explicit, Phase.generate],
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(case=operation.as_strategy(generation_mode=mode))
    def one(case) -> None:
        sent = {**(case.headers or {}), **headers}
        response = case.call(base_url=base_url, session=session, headers=sent, timeout=120)
        tally.judge(case, response, sent)

    try:
        one()
    except Unsatisfiable:  # nothing invalid to send (an operation without inputs)
        tally.no_invalid += 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--examples", type=int, default=25,
                    help="examples per operation, mode (valid/invalid) and caller")  # fmt: skip
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--json", type=Path, help="write the counts here")
    ap.add_argument("--no-worker", action="store_true",
                    help="no worker: /healthz is degraded and synchronous calls time out")
    args = ap.parse_args()

    prefix = f"fgfuzz-{uuid.uuid4().hex[:10]}"
    # without a worker, a synchronous call waits for one only briefly (where configurable)
    sync = {}
    if args.no_worker and "sync_deadline_s" in Settings.model_fields:
        sync = {"sync_deadline_s": 1.0}
    app_settings = Settings(redis_url=args.redis_url, key_prefix=prefix, policy_watch=False,
                            rate_key_per_s=1e6, rate_key_burst=1_000_000, **sync)  # fmt: skip
    client = connect(args.redis_url)
    started = time.monotonic()
    worker = None if args.no_worker else start_worker(prefix, args.redis_url)
    try:
        token = KeyStore(client, Keys(prefix)).create("fuzz-admin", ["admin"]).token
        who = {"no key": {}, "admin key": {"Authorization": f"Bearer {token}"}}
        with Server(app_settings) as server:
            if worker is not None:
                wait_healthy(server.url)
            schema = st_openapi.from_url(server.url + "/openapi.json")
            tallies = {name: Tally() for name in who}
            operations = 0
            for name, headers in who.items():
                operations = fuzz(schema, server.url, {name: headers}, args.examples,
                                  args.seed, tallies[name])  # fmt: skip
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(60)
        keys = list(client.scan_iter(f"{prefix}:*", count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i : i + 500])

    report = {
        "operations": operations,
        "examples_per_operation_mode_caller": args.examples,
        "seconds": round(time.monotonic() - started, 1),
        "worker": not args.no_worker,
        "callers": {
            name: {"examples": t.examples, **{k: t.failures[k] for k in CHECKS},
                   "healthz_degraded_503": t.healthz_degraded,
                   "statuses": dict(sorted(t.statuses.items())),
                   "by_operation": {op: dict(sorted(c.items()))
                                    for op, c in sorted(t.by_operation.items())}}  # fmt: skip
            for name, t in tallies.items()
        },
    }
    print(json.dumps(report, indent=2))
    failed = False
    for name, t in tallies.items():
        for (check, op, title), sample in sorted(t.samples.items()):
            failed = True
            print(f"[{name}] {check}: {op}: {title}\n    {sample}", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
