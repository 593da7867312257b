"""Clients name policies only inside the policy directory, or upload them; never a path.

Once, `POST /v1/policy/shadow {"path": "/etc/shadow"}` returned the file's lines in its
parse errors and `/dev/zero` grew the API without bound. Every way out of the directory is
refused with a 4xx before a byte is read, and no answer quotes a file from outside it.
Real HTTP against the real app on a real Redis (no model needed).
"""

from __future__ import annotations

import os
import shutil

import httpx
import pytest

from service.config import REPO_ROOT
from service.policy.library import PolicyDirectory, PolicyRefused
from tests.conftest import LiveServer, make_settings

DEFAULT = REPO_ROOT / "policies" / "default.yaml"
# a file outside the policy directory whose content must never appear in an answer
SECRET = "TOP-SECRET-LINE: the content of a file outside the policy directory"


@pytest.fixture
def policy_dir(tmp_path):
    root = tmp_path / "policies"
    root.mkdir()
    shutil.copy(DEFAULT, root / "default.yaml")
    shutil.copytree(DEFAULT.parent / "lists", root / "lists")
    (root / "sub").mkdir()
    shutil.copy(DEFAULT, root / "sub" / "candidate.yaml")
    shutil.copytree(DEFAULT.parent / "lists", root / "sub" / "lists")
    (tmp_path / "secret.yaml").write_text(f"name: x\n{SECRET}\n: [\n", "utf-8")
    (root / "link-out.yaml").symlink_to(tmp_path / "secret.yaml")
    (root / "zero.yaml").symlink_to("/dev/zero")
    (root / "link-in.yaml").symlink_to(root / "default.yaml")
    os.mkfifo(root / "fifo.yaml")
    (root / "big.yaml").write_bytes(b"#" * (1024 * 1024 + 1))
    (root / "broken.yaml").write_text("name: broken\nrules: [\n", "utf-8")
    # a policy inside whose keyword list is a link to the secret
    (root / "lists" / "leak.txt").symlink_to(tmp_path / "secret.yaml")
    leaky = DEFAULT.read_text("utf-8").replace("keywords:\n", "keywords:\n  leak:\n    files: [lists/leak.txt]\n", 1)
    (root / "leaky.yaml").write_text(leaky, "utf-8")
    return root


@pytest.fixture
def http(redis_url, model_dir, policy_dir):
    settings = make_settings(redis_url, model_dir, policy_path=policy_dir / "default.yaml",
                             policy_watch=False)  # fmt: skip
    with LiveServer(settings) as api, httpx.Client(base_url=api.url, timeout=30) as client:
        yield client


REFUSED = [
    # (case, body, status, field)
    ("server-path-field", {"path": "/etc/shadow"}, 422, "path"),
    ("absolute-name", {"name": "/etc/passwd"}, 422, "name"),
    ("traversal", {"name": "../secret.yaml"}, 422, "name"),
    ("deep-traversal", {"name": "sub/../../secret.yaml"}, 422, "name"),
    ("backslash", {"name": "..\\secret.yaml"}, 422, "name"),
    ("link-out", {"name": "link-out.yaml"}, 403, "name"),
    ("device", {"name": "zero.yaml"}, 403, "name"),
    ("fifo", {"name": "fifo.yaml"}, 422, "name"),
    ("directory", {"name": "sub"}, 422, "name"),
    ("oversized", {"name": "big.yaml"}, 413, "name"),
    ("missing", {"name": "nope.yaml"}, 404, "name"),
    ("both", {"name": "default.yaml", "text": "name: x"}, 422, "body"),
    ("neither", {}, 422, "body"),
    ("oversized-text", {"text": "#" * (1024 * 1024 + 1)}, 413, "text"),
]


@pytest.mark.parametrize("route", ["/v1/policy/shadow", "/v1/policy/reload"])
@pytest.mark.parametrize("body, status, field", [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_a_policy_outside_the_directory_is_refused_and_nothing_changes(http, route, body, status, field):
    before = http.get("/v1/policy").json()
    r = http.post(route, json=body)
    assert r.status_code == status, r.text
    assert SECRET not in r.text and "root:" not in r.text
    err = r.json()
    assert err["error"] in {"policy_refused", "validation_error"}
    assert field in {d["field"] for d in err["detail"]}, err
    assert http.get("/v1/policy").json() == before


def test_an_include_that_links_out_is_an_error_that_quotes_nothing(http):
    r = http.post("/v1/policy/shadow", json={"name": "leaky.yaml"})
    assert r.status_code == 422
    assert SECRET not in r.text
    assert any("lists/leak.txt" in d["message"] and "leads out" in d["message"]
               for d in r.json()["detail"])  # fmt: skip
    # uploaded text reaches its includes through the same door
    r = http.post("/v1/policy/shadow", json={"text": (DEFAULT.parent / "default.yaml").read_text()
                                             .replace("keywords:\n", "keywords:\n  leak:\n    files: [lists/leak.txt]\n", 1)})  # fmt: skip
    assert r.status_code == 422 and SECRET not in r.text


def test_named_and_uploaded_policies_inside_the_directory_work(http, policy_dir):
    r = http.post("/v1/policy/shadow", json={"name": "sub/candidate.yaml"})
    assert r.status_code == 200, r.text
    assert r.json()["role"] == "shadow"
    # a link that stays inside the directory is fine
    assert http.post("/v1/policy/shadow", json={"name": "link-in.yaml"}).status_code == 200
    # an uploaded candidate, its lists read from the policy directory
    text = DEFAULT.read_text("utf-8").replace("name: ", "name: uploaded-", 1)
    r = http.post("/v1/policy/shadow", json={"text": text})
    assert r.status_code == 200, r.text
    assert http.get("/v1/policy").json()["shadow"]["version"] == r.json()["version"]
    # an invalid upload: file:line errors about the upload itself
    r = http.post("/v1/policy/shadow", json={"text": "name: x\nrules: [\n"})
    assert r.status_code == 422 and r.json()["error"] == "invalid_policy"
    assert r.json()["detail"][0]["message"].startswith("<uploaded>:")
    # reload by name publishes a live version; without a body it re-reads the configured file
    r = http.post("/v1/policy/reload", json={"name": "sub/candidate.yaml"})
    assert r.status_code == 200 and r.json()["role"] == "live"
    r = http.post("/v1/policy/reload", json={"name": "broken.yaml"})
    assert r.status_code == 422 and r.json()["detail"][0]["message"].startswith("broken.yaml:")
    assert http.post("/v1/policy/reload").status_code == 200


def test_policy_directory_refuses_without_reading(tmp_path):
    root = tmp_path / "p"
    root.mkdir()
    (root / "ok.yaml").write_text("x", "utf-8")
    d = PolicyDirectory(root, max_bytes=10)
    assert d.read("ok.yaml") == b"x"
    assert d.read("./ok.yaml") == b"x"
    for name, status in [("", 422), (" ok.yaml", 422), ("a\0b", 422), ("x/../ok.yaml", 422),
                         ("missing.yaml", 404), ("ok.yaml/x", 422)]:  # fmt: skip
        with pytest.raises(PolicyRefused) as exc:
            d.read(name)
        assert exc.value.status == status, name
    (root / "big.yaml").write_bytes(b"1" * 11)
    with pytest.raises(PolicyRefused) as exc:
        d.read("big.yaml")
    assert exc.value.status == 413
