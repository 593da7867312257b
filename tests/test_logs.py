"""Structured logs (service/logs.py): the formatters, the request context, and a real uvicorn
server whose own access and error lines come out in the app's format with the request id."""

from __future__ import annotations

import contextvars
import io
import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time

import httpx
import pytest

from service.config import REPO_ROOT
from service.logs import (
    JsonFormatter,
    TextFormatter,
    annotate,
    begin_request,
    configure_logging,
    current_request_id,
    end_request,
    log_config,
    resolve_format,
)

from .conftest import free_port


def record(name="floodgate.test", msg="hello %s", args=("world",), level=logging.INFO, **extra):
    rec = logging.LogRecord(name, level, __file__, 1, msg, args, None)
    rec.__dict__.update(extra)
    return rec


def as_json(rec: logging.LogRecord) -> dict:
    return json.loads(JsonFormatter().format(rec))


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = saved
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers.clear()


def test_json_line_outside_a_request():
    line = as_json(record(version="v1", 中文="是"))
    assert line["message"] == "hello world" and line["level"] == "info"
    assert line["logger"] == "floodgate.test" and line["ts"].endswith("+00:00")
    assert line["version"] == "v1" and line["中文"] == "是"  # extra= fields, unescaped
    assert "request_id" not in line


def test_json_line_inside_a_request_carries_its_fields():
    token = begin_request("req-1")
    try:
        annotate(key_name="alice", route="/v1/posts")
        line = as_json(record(status=202))
    finally:
        end_request(token)
    assert (line["request_id"], line["key_name"], line["route"], line["status"]) == (
        "req-1", "alice", "/v1/posts", 202)  # fmt: skip
    assert list(line)[4] == "request_id"  # context fields come right after the message
    assert current_request_id() is None


def test_annotations_from_a_worker_thread_reach_the_request():
    """FastAPI runs sync dependencies in a thread on a copy of the context."""
    token = begin_request("req-2")
    try:
        ctx = contextvars.copy_context()
        t = threading.Thread(target=ctx.run, args=(annotate,), kwargs={"key_name": "bob"})
        t.start()
        t.join()
        assert as_json(record())["key_name"] == "bob"
    finally:
        end_request(token)


@pytest.mark.parametrize(
    ("incoming", "kept"),
    [("abc-123", True), ("a" * 64, True), ("a" * 65, False), ("bad id", False),
     ("x\r\ny", False), ("", False), (None, False)],
)  # fmt: skip
def test_client_request_ids_are_kept_only_when_plain(incoming, kept):
    token = begin_request(incoming)
    try:
        rid = current_request_id()
    finally:
        end_request(token)
    assert (rid == incoming) is kept
    assert rid and len(rid) <= 64


def test_uvicorn_access_records_become_fields():
    rec = record("uvicorn.access", '%s - "%s %s HTTP/%s" %d',
                 ("127.0.0.1:5000", "GET", "/v1/stats?x=1", "1.1", 200))  # fmt: skip
    line = as_json(rec)
    assert (line["client"], line["method"], line["path"], line["status"]) == (
        "127.0.0.1:5000", "GET", "/v1/stats?x=1", 200)  # fmt: skip
    assert "color_message" not in as_json(record(color_message="\x1b[1mx"))


def test_exceptions_are_one_json_line():
    try:
        raise ValueError("boom")
    except ValueError:
        rec = record(msg="failed", args=())
        rec.exc_info = sys.exc_info()
    text = JsonFormatter().format(rec)
    assert "\n" not in text
    assert "ValueError: boom" in json.loads(text)["exc_info"]


def test_text_lines_show_request_and_key():
    token = begin_request("req-3")
    try:
        annotate(key_name="carol")
        inside = TextFormatter().format(record())
    finally:
        end_request(token)
    assert inside.endswith("INFO floodgate.test [req-3 carol]: hello world")
    assert TextFormatter().format(record()).endswith("INFO floodgate.test: hello world")


@pytest.mark.parametrize(
    ("fmt", "terminal", "expected"),
    [(None, True, "text"), (None, False, "json"), ("auto", True, "text"),
     ("auto", False, "json"), ("json", True, "json"), ("text", False, "text"),
     ("JSON", False, "json")],
)  # fmt: skip
def test_format_choice(fmt, terminal, expected):
    if terminal:
        leader, follower = os.openpty()  # a real terminal
        stream = os.fdopen(follower, "w")
        try:
            assert resolve_format(fmt, stream) == expected
        finally:
            stream.close()
            os.close(leader)
    else:
        assert resolve_format(fmt, io.StringIO()) == expected


def test_unknown_format_is_refused():
    with pytest.raises(ValueError):
        resolve_format("xml")


def test_configure_logging_sends_app_and_uvicorn_loggers_to_one_format(capsys, restore_logging):
    assert configure_logging("json") == "json"
    logging.getLogger("floodgate.api").info("app line")
    logging.getLogger("uvicorn.error").info("server line")
    lines = [json.loads(x) for x in capsys.readouterr().err.splitlines()]
    assert [(x["logger"], x["message"]) for x in lines] == [
        ("floodgate.api", "app line"), ("uvicorn.error", "server line")]  # fmt: skip
    cfg = log_config("text")
    assert cfg["formatters"]["default"]["()"] == "service.logs.TextFormatter"
    assert set(cfg["formatters"]) == {"default", "access"}  # the names uvicorn adjusts


SERVER = textwrap.dedent("""
    import logging, sys
    import uvicorn
    from fastapi import FastAPI
    from service.logs import RequestContextMiddleware, annotate, log_config

    app = FastAPI()
    log = logging.getLogger("floodgate.api")

    @app.get("/items/{item_id}")
    def item(item_id: str):
        annotate(key_name="alice")  # as the auth dependency will
        log.info("item read", extra={"item": item_id})
        return {"item": item_id}

    @app.get("/crash")
    async def crash():
        raise RuntimeError("crash for the test")

    uvicorn.run(RequestContextMiddleware(app), host="127.0.0.1", port=int(sys.argv[1]),
                log_config=log_config(sys.argv[2]))
""")


def run_server(fmt: str, requests) -> tuple[list, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(port), fmt], cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(url + "/docs", timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise AssertionError("server did not start: " + proc.stderr.read()) from None
                time.sleep(0.1)
        responses = [httpx.get(url + path, headers=headers, timeout=10)
                     for path, headers in requests]  # fmt: skip
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    return responses, err


def test_uvicorn_lines_carry_the_request_in_json():
    responses, err = run_server(
        "json", [("/items/7", {"X-Request-ID": "client-id-1"}), ("/items/8", {}), ("/crash", {})]
    )
    assert [r.status_code for r in responses] == [200, 200, 500]
    assert responses[0].headers["x-request-id"] == "client-id-1"
    generated = responses[1].headers["x-request-id"]
    assert generated and generated != "client-id-1"
    lines = [json.loads(x) for x in err.splitlines()]  # every line is JSON
    by = {(x["logger"], x.get("request_id")): x for x in lines}

    access = by[("uvicorn.access", "client-id-1")]
    assert (access["method"], access["path"], access["status"]) == ("GET", "/items/7", 200)
    assert access["route"] == "/items/{item_id}" and access["key_name"] == "alice"
    assert access["latency_ms"] >= 0
    app_line = by[("floodgate.api", "client-id-1")]
    assert app_line["message"] == "item read" and app_line["item"] == "7"
    assert by[("uvicorn.access", generated)]["path"] == "/items/8"

    crash_id = responses[2].headers.get("x-request-id")
    errors = [x for x in lines if x["level"] == "error"]
    assert errors and "crash for the test" in errors[0]["exc_info"]
    assert errors[0].get("request_id") == crash_id is not None
    assert any(x["logger"] == "uvicorn.error" and "Started server" in x["message"] for x in lines)


def test_uvicorn_lines_in_text():
    responses, err = run_server("text", [("/items/1", {"X-Request-ID": "tid"})])
    assert responses[0].status_code == 200
    assert any("uvicorn.access [tid alice]:" in x and '"GET /items/1 HTTP/1.1" 200' in x
               for x in err.splitlines())  # fmt: skip
    assert not any(x.startswith("{") for x in err.splitlines())
