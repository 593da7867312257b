"""`floodgate serve` with REDIS_URL unset: starts its own Redis, serves, stops it on exit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import free_port, wait_for_decision


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return (
        Path(f"/proc/{pid}").exists()
        and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]
    )


def test_serve_starts_and_stops_its_embedded_redis(tmp_path, model_dir):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "FLOODGATE_REDIS_URL")}
    env.update(FLOODGATE_DATA_DIR=str(tmp_path), FLOODGATE_MODEL_DIR=str(model_dir),
               FLOODGATE_TORCH_THREADS="1")  # fmt: skip
    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115 (a file, not a pipe: never fills)
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", "serve", "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break  # Redis up and a worker alive
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        else:
            raise AssertionError("serve did not come up")
        redis_pid = int((tmp_path / "redis" / "redis.pid").read_text())
        assert _alive(redis_pid)
        assert (tmp_path / "redis" / "redis.sock").exists()

        r = httpx.post(
            f"{url}/v1/posts", json={"text": "你好 hello from Ohio", "post_id": "serve-1"}
        )
        assert r.status_code == 202
        decision = wait_for_decision(url, "serve-1", timeout=90)
        assert decision.status_code == 200
        assert decision.json()["language"]["mixed"], "a mixed post should report its segments"
        # accepted posts are in the append-only file under the data dir
        aof = list((tmp_path / "redis").glob("appendonly*"))
        assert aof and b"serve-1" in b"".join(p.read_bytes() for p in aof if p.is_file())
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        log.close()
    out = (tmp_path / "serve.log").read_text(errors="replace")
    assert proc.returncode == 0, out[-3000:]
    assert "embedded redis-server stopped" in out
    deadline = time.monotonic() + 10
    while _alive(redis_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(redis_pid), "serve left its redis-server running"
