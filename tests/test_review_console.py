"""The review console (GET /review) in a real browser, and the review figures in /metrics.

Debian's chromium, driven by Playwright's Python package with `executable_path` (never a
browser download), against the real app over real HTTP, real Redis, a real worker and the
real model (the review service of test_review_live). The browser tests are skipped, with the
reason, only where chromium is not installed; `./dev test` installs it when it runs as root.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import tomllib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect, sync_playwright
from prometheus_client import CollectorRegistry, generate_latest

from service.api.metrics import ReviewFamilies
from service.api.routes.console import FILES
from service.config import REPO_ROOT
from tests import test_review_live as live
from tests.test_metrics import samples

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
needs_chromium = pytest.mark.skipif(
    not Path(CHROMIUM).is_file(),
    reason="Debian's chromium is not installed (apt-get install -y chromium; `./dev test` "
    "installs it when it runs as root)",
)
NO_REASON = "no reason given (review console)"
EN2 = "please check this reviewme post <b>too</b>, my friends from Ohio"
review_service = live.review_service  # the fixture: API + worker on a policy with a review pool


@pytest.fixture(scope="module")
def browser() -> Iterator:
    # a loaded CI machine answers slowly: bounded waits, never timed assertions
    expect.set_options(timeout=30_000)
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


class Console:
    """One browser tab on /review, recording every request it makes and what it logs."""

    def __init__(self, browser, url: str) -> None:
        self.context = browser.new_context()
        self.context.set_default_timeout(30_000)
        self.page = self.context.new_page()
        self.requests: list[str] = []
        self.logged: list[str] = []
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("console", lambda m: self.logged.append(m.text))
        self.page.goto(url + "/review")

    def use_key(self, token: str | None) -> None:
        self.page.fill("#key", token or "")
        self.page.click("#key-form button[type=submit]")

    def fact(self, box: str, name: str):
        return self.page.locator(f"{box} dt:text-is('{name}') + dd")

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def console(browser) -> Iterator:
    tabs: list[Console] = []

    def open_tab(url: str) -> Console:
        tabs.append(Console(browser, url))
        return tabs[-1]

    yield open_tab
    for tab in tabs:
        tab.close()


def submit_review_posts(svc: live.Service) -> dict:
    """An earlier post of the author, then two of theirs that go to en/general."""
    author = {"id": "a1", "followers": 50_000}
    earlier = svc.submit("a1-0", "hello everyone, we just moved here from Texas", market="intl",
                         author=author)  # fmt: skip
    first = svc.submit("en-1", live.EN, market="intl", author=author)
    second = svc.submit("en-2", EN2, market="intl", author={"id": "a1", "followers": 10})
    assert first["review"]["queue"] == second["review"]["queue"] == "en/general", (first, second)
    return {"a1-0": earlier, "en-1": first, "en-2": second}


@needs_chromium
def test_claim_read_and_resolve_with_one_key_press(review_service, console):
    svc = review_service
    decisions = submit_review_posts(svc)
    tab = console(svc.api.url)
    page = tab.page
    tab.use_key(svc.tokens["alice"])
    expect(page.locator("#who")).to_have_text("reviewer alice · reads en")
    row = page.locator("#queues tbody tr[data-queue='en/general']")
    expect(row.locator("td").nth(1)).to_have_text("2")  # waiting
    expect(row.locator("td").nth(4)).to_have_text("60 min / 60 min")  # expected wait against the SLA
    expect(row.locator("td").nth(5)).to_have_text("0")  # nothing overflowed into the backlog
    row.click()
    page.keyboard.press("c")

    # the post with its language, scores, rules and the author's other recent posts
    expect(page.locator("#item-id")).to_have_text("en-1")
    expect(page.locator("#item-text")).to_have_text(live.EN)
    expect(tab.fact("#item-facts", "language")).to_have_text("en")
    expect(tab.fact("#item-facts", "automated action")).to_have_text("review")
    expect(tab.fact("#item-language", "script")).to_have_text(decisions["en-1"]["language"]["script"])
    expect(page.locator("#item-rules li", has_text="test-reviewme")).to_have_count(1)
    expect(page.locator("#item-scores tbody tr")).to_have_count(len(decisions["en-1"]["scores"]))
    expect(page.locator("#recent li")).to_have_count(2)
    expect(page.locator("#recent li", has_text="a1-0")).to_contain_text(decisions["a1-0"]["action"])
    # another post's text is shown as text, never as markup
    expect(page.locator("#recent li", has_text="en-2").locator("q")).to_have_text(EN2)

    # a reason, then one key: resolved, and the next item is claimed
    page.keyboard.press("r")
    page.keyboard.type("spam link farm 1234")  # digits in the reason are text, not verdicts
    page.keyboard.press("Escape")
    page.keyboard.press("4")
    expect(page.locator("#done li").first).to_have_text("en-1: remove — spam link farm 1234")
    expect(page.locator("#item-id")).to_have_text("en-2")
    expect(page.locator("#item-text")).to_have_text(EN2)
    page.keyboard.press("1")  # no reason typed: the console says so in the verdict
    expect(page.locator("#done li").first).to_contain_text("en-2: allow")
    expect(page.locator("#notice")).to_have_text("en/general is empty")
    expect(page.locator("#item")).to_be_hidden()
    expect(page.locator("#error")).to_be_hidden()

    # the verdicts were recorded through the API with the reviewer's identity
    one, two = svc.decision("en-1"), svc.decision("en-2")
    assert one["final_action"] == "remove" and two["final_action"] == "allow"
    assert one["review"]["verdict"]["reviewer"] == two["review"]["verdict"]["reviewer"] == "alice"
    assert one["review"]["verdict"]["reason"] == "spam link farm 1234"
    assert two["review"]["verdict"]["reason"] == NO_REASON
    audit = [json.loads(f["verdict"]) for _, f in svc.redis.xrange(svc.keys.audit) if "verdict" in f]
    assert sorted((v["reviewer"], v["action"]) for v in audit) == [("alice", "allow"), ("alice", "remove")]

    # the key stays in this tab's session storage; nothing was asked of another origin
    assert page.evaluate("sessionStorage.getItem('floodgate.review.key')") == svc.tokens["alice"]
    assert page.evaluate("localStorage.length") == 0 and page.input_value("#key") == ""
    assert tab.requests and all(u.startswith(svc.api.url + "/") for u in tab.requests), tab.requests
    assert not [m for m in tab.logged if "Content Security Policy" in m], tab.logged


@needs_chromium
def test_the_reviewer_sees_which_memory_example_a_post_resembles(review_service, console):
    """A post of a wave the policy's memory lists is queued for the Chinese reviewers, and
    the console says which example it resembles, as text."""
    svc = review_service
    decision = svc.submit("zh-wave", "宝妈在家兼职 手机做任务 一单一结 每天轻松赚300", market="cn")
    recalled = decision["memory"]["scam_spam"]
    assert recalled["example"] == live.WAVE and recalled["similarity"] >= 0.85
    assert decision["action"] == "review" and decision["review"]["queue"] == "zh/general"
    tab = console(svc.api.url)
    page = tab.page
    tab.use_key(svc.tokens["li"])
    page.locator("#queues tbody tr[data-queue='zh/general']").click()
    page.keyboard.press("c")
    expect(page.locator("#item-id")).to_have_text("zh-wave")
    line = page.locator("#item-rules li.memory")
    expect(line).to_have_count(1)
    expect(line).to_contain_text(f"scam_spam: resembles the policy's example “{live.WAVE}”")
    expect(line).to_contain_text(f"similarity {recalled['similarity']:.3f}")
    expect(page.locator("#item-rules li", has_text="harmful-zh-review")).to_have_count(1)


@needs_chromium
def test_keys_that_may_not_review_are_refused_in_the_page(review_service, console):
    svc = review_service
    tab = console(svc.api.url)
    page = tab.page
    error = page.locator("#error")
    expect(error).to_contain_text("401 unauthorized")  # closed API, no key yet
    expect(error).to_contain_text("enter an API key")
    tab.use_key(svc.tokens["ingest"])  # submit and read, no review role
    expect(error).to_contain_text("403 forbidden: this API key does not have the 'review' role")
    expect(page.locator("#queues tbody tr")).to_have_count(0)
    tab.use_key(svc.tokens["carol"])  # the review role, but in no reviewer pool
    expect(error).to_contain_text("is not in a reviewer pool")
    page.keyboard.press("c")  # no queue to claim from
    expect(error).to_contain_text("no queue to claim from")
    tab.use_key("fg_not-a-key")
    expect(error).to_contain_text("the API key is not valid")
    tab.use_key(svc.tokens["li"])  # a reviewer of Chinese sees Chinese queues only
    expect(error).to_be_hidden()
    expect(page.locator("#who")).to_have_text("reviewer li · reads zh")
    languages = page.locator("#queues tbody tr").evaluate_all("rows => rows.map(r => r.dataset.queue)")
    assert languages and all(q.startswith("zh/") for q in languages), languages


@needs_chromium
def test_open_local_mode_needs_no_key(api, console):
    tab = console(api.url)
    expect(tab.page.locator("#who")).to_have_text("reviewer (open) · reads every language")
    # the default policy's declared queues, shown while empty
    expect(tab.page.locator("#queues tbody tr[data-queue='en/general']")).to_have_count(1)
    tab.page.keyboard.press("c")
    expect(tab.page.locator("#notice")).to_contain_text("is empty")
    expect(tab.page.locator("#error")).to_be_hidden()


def test_the_page_is_static_same_origin_and_locked_down(api):
    """Public, because it carries no data: the files as shipped, nothing from elsewhere, and
    a Content-Security-Policy without inline script or style."""
    with httpx.Client(base_url=api.url, timeout=10) as http:
        for path, name, kind in (("/review", "index.html", "text/html"),
                                 ("/review/console.js", "console.js", "text/javascript"),
                                 ("/review/console.css", "console.css", "text/css")):  # fmt: skip
            r = http.get(path)
            assert r.status_code == 200 and r.headers["content-type"].startswith(kind), r.text
            assert r.content == (FILES / name).read_bytes()
            csp = r.headers["content-security-policy"]
            assert "default-src 'none'" in csp and "script-src 'self'" in csp, csp
            assert "unsafe" not in csp and "frame-ancestors 'none'" in csp, csp
            assert r.headers["x-content-type-options"] == "nosniff"
            assert not re.search(r"https?:|//[a-z0-9]", r.text.replace("\\/", "")), path
    html = (FILES / "index.html").read_text("utf-8")
    refs = re.findall(r"""(?<![\w-])(?:src|href|action|formaction)\s*=\s*["']([^"']*)""", html)
    assert refs and all(ref.startswith("/review/") for ref in refs), refs
    assert re.findall(r"<script[^>]*>(.*?)</script>", html, re.S) == [""], "inline script"
    assert "<style" not in html and " style=" not in html, "inline style"
    assert not re.search(r"\son[a-z]+\s*=", html), "inline event handler"


def test_the_console_files_are_package_data():
    """An installed wheel carries the files: each matches pyproject's package-data."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text("utf-8"))
    patterns = project["tool"]["setuptools"]["package-data"]["service"]
    files = sorted(p.relative_to(REPO_ROOT / "service").as_posix() for p in FILES.iterdir())
    assert files == ["api/console/console.css", "api/console/console.js", "api/console/index.html"]
    assert all(any(fnmatch.fnmatch(f, pat) for pat in patterns) for f in files), (files, patterns)


def test_the_context_of_an_item(review_service):
    """GET /v1/review/items/{id}/context, which the console shows beside an item."""
    svc = review_service
    decisions = submit_review_posts(svc)
    r = svc.http("alice").get("/v1/review/items/en-1/context")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["language"] == decisions["en-1"]["language"]
    assert body["author"] == {"id": "a1", "followers": 50_000}
    recent = {p["post_id"]: p for p in body["recent_posts"]}
    assert list(recent) == ["en-2", "a1-0"]  # newest first, the item itself left out
    assert recent["en-2"]["text"] == EN2 and recent["en-2"]["review_state"] == "queued"
    assert recent["a1-0"]["text"] is None  # allowed posts' texts are not kept
    assert recent["a1-0"]["final_action"] == decisions["a1-0"]["action"]
    assert [p["post_id"] for p in svc.http("alice").get(
        "/v1/review/items/en-1/context", params={"limit": 1}).json()["recent_posts"]] == ["en-2"]  # fmt: skip
    r = svc.http("li").get("/v1/review/items/en-1/context")  # li reads Chinese only
    assert r.status_code == 403 and r.json()["detail"][0]["type"] == "language_not_read"
    r = svc.http("ops").get("/v1/review/items/en-1/context", params={"limit": 0})
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "query.limit", r.text
    r = svc.http("ops").get("/v1/review/items/a1-0/context")  # allowed: no review item
    assert r.status_code == 404 and r.json()["detail"][0]["field"] == "post_id"


def test_review_figures_in_metrics(review_service):
    svc = review_service
    submit_review_posts(svc)
    third = svc.submit("en-3", live.EN + " the third", market="intl")
    assert third["review"]["fallback"]["applied"] is True  # 2 items fill the SLA
    alice = svc.http("alice")
    [item] = alice.post("/v1/review/claim", json={"queue": "en/general"}).json()["items"]
    r = alice.post(f"/v1/review/items/{item['post_id']}/resolve",
                   json={"action": "remove", "reason": "spam"})  # fmt: skip
    assert r.status_code == 200, r.text
    assert alice.post("/v1/review/claim", json={"queue": "en/general"}).json()["items"]
    m = samples(httpx.get(f"{svc.api.url}/metrics", timeout=30).text)
    q = (("language", "en"), ("queue", "en/general"), ("reason", "general"))
    # the first claim made room: the overflowed third post entered the queue from its backlog
    assert m[("floodgate_review_waiting", q)] == 1
    assert m[("floodgate_review_in_review", q)] == 1
    assert m[("floodgate_review_oldest_age_seconds", q)] >= 0
    assert m[("floodgate_review_expected_wait_seconds", q)] == 1800
    assert m[("floodgate_review_sla_seconds", q)] == 3600
    assert m[("floodgate_review_capacity_per_hour", q)] == 2
    assert m[("floodgate_review_over_sla", q)] == 0
    assert m[("floodgate_review_backlog", q)] == 0
    assert m[("floodgate_review_enqueued_total", q)] == 3
    assert m[("floodgate_review_overflowed_total", q)] == 1
    assert m[("floodgate_review_admitted_total", q)] == 1
    verdict = (("action", "remove"), ("kind", "review"), ("language", "en"))
    assert m[("floodgate_review_verdicts_total", verdict)] == 1
    report = svc.http("ops").get("/v1/review/report").json()
    assert {"language": "en", "kind": "review", "action": "remove", "count": 1} in report["verdicts"]


def test_a_queue_nobody_reads_waits_forever_in_metrics():
    view = {"queue": "fr/general", "language": "fr", "reason": "general", "waiting": 3,
            "in_review": 0, "oldest_age_s": None, "expected_wait_s": None, "sla_s": 3600.0,
            "capacity_per_hour": 0.0, "over_sla": True, "backlog": 0, "enqueued": 3, "overflowed": 0,
            "admitted": 0}  # fmt: skip
    registry = CollectorRegistry()
    registry.register(ReviewFamilies([view], []))
    m = samples(generate_latest(registry).decode())
    labels = (("language", "fr"), ("queue", "fr/general"), ("reason", "general"))
    assert m[("floodgate_review_expected_wait_seconds", labels)] == float("inf")
    assert m[("floodgate_review_over_sla", labels)] == 1
    assert m[("floodgate_review_oldest_age_seconds", labels)] == 0
