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
