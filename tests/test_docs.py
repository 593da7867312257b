"""/docs works offline: the page and every file it loads come from the API itself."""

from __future__ import annotations

import re

import httpx


def test_docs_page_loads_only_local_assets(api):
    with httpx.Client(base_url=api.url, timeout=30) as http:
        page = http.get("/docs")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        # no CDN, no external URL of any kind in the served HTML
        assert not re.search(r"(?:https?:)?//(?!127\.0\.0\.1|localhost)[\w.-]+\.\w+", page.text)
        refs = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text)
        assert {"/docs/assets/swagger-ui-bundle.js", "/docs/assets/swagger-ui.css"} <= set(refs)
        for ref in refs:
            r = http.get(ref)
            assert r.status_code == 200 and len(r.content) > 100, ref
        assert http.get("/docs/assets/swagger-ui-bundle.js").headers["content-type"].startswith(
            ("application/javascript", "text/javascript")
        )
        spec = http.get("/openapi.json").json()
        assert spec["openapi"].startswith("3.") and "/v1/posts" in spec["paths"]
        # FastAPI's CDN-backed pages are not served
        assert http.get("/redoc").status_code == 404


def test_every_request_body_is_documented_with_examples(api):
    spec = httpx.get(f"{api.url}/openapi.json").json()
    schemas = spec["components"]["schemas"]
    bodies = 0
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            body = op.get("requestBody")
            if not body:
                continue
            schema = body["content"]["application/json"]["schema"]
            refs = [schema.get("$ref"), *(s.get("$ref") for s in schema.get("anyOf", []))]
            for ref in filter(None, refs):
                bodies += 1
                assert schemas[ref.split("/")[-1]].get("examples"), f"{method} {path}: no examples"
    assert bodies >= 8
    # a batch item is documented as a post (each is still validated on its own)
    assert schemas["BatchIn"]["properties"]["posts"]["items"] == {"$ref": "#/components/schemas/PostIn"}
