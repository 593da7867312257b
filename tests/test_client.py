"""The Python client users get (service.client), against the real app over real HTTP."""

from __future__ import annotations

import pytest

from service.client import Floodgate, FloodgateError
from tests.conftest import LiveServer, WorkerThread, make_settings


def test_submit_wait_moderate_and_errors(service):
    with Floodgate(service.url) as fg:
        assert fg.submit({"post_id": "c-1", "text": "hello from Texas"}) == {"post_id": "c-1", "status": "queued"}
        decided = fg.wait("c-1")
        assert decided["status"] == "decided" and decided["language"]["code"] == "en"
        now = fg.moderate({"post_id": "c-2", "text": "I will kill you and your whole family"})
        assert now["action"] != "allow" and fg.decision("c-2") == now
        assert fg.moderations(["hello", "你好"])["results"][1]["floodgate"]["language"]["code"] == "zh"
        with pytest.raises(FloodgateError) as exc:
            fg.submit({"text": "   "})
        assert exc.value.status == 422 and exc.value.body["detail"][0]["field"] == "text"


def test_a_full_backlog_is_sent_again_after_retry_after(redis_url, model_dir, moderator):
    settings = make_settings(redis_url, model_dir, max_backlog=5)
    posts = [{"post_id": f"bp-{i}", "text": f"post number {i}"} for i in range(8)]
    with LiveServer(settings) as api:
        with Floodgate(api.url, retries=1) as fg:  # no worker: the backlog cannot drain
            out = fg.submit_batch(posts)
        assert sorted(out.accepted) == [f"bp-{i}" for i in range(5)]
        assert out.refused == [f"bp-{i}" for i in range(5, 8)] and out.resends == 3
        with WorkerThread(settings, moderator), Floodgate(api.url, retries=30) as fg:
            out = fg.submit_batch(posts[5:])  # refused at first, accepted once drained
            assert sorted(out.accepted) == ["bp-5", "bp-6", "bp-7"] and not out.refused
            for p in posts:
                assert fg.wait(p["post_id"])["status"] == "decided"
