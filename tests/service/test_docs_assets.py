"""/docs and /redoc work offline: every script, style and icon they load is served here."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

EXPECTED_TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}


def _linked(html: str) -> list[str]:
    return re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_doc_pages_load_only_local_assets(client: TestClient, page: str) -> None:
    r = client.get(page)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert not re.search(r"https?://|//[a-z]", r.text, re.IGNORECASE), \
        re.findall(r"\S*(?:https?:)?//\S+", r.text)
    links = _linked(r.text)
    assert any(link.endswith(".js") for link in links), links
    for link in links:
        assert link.startswith("/"), link
        asset = client.get(link)
        assert asset.status_code == 200, link
        suffix = link[link.rindex("."):]
        assert asset.headers["content-type"].split(";")[0] == EXPECTED_TYPES[suffix], link
        assert len(asset.content) > 1000, link
    assert "/openapi.json" in r.text
    assert client.get("/openapi.json").status_code == 200


def test_swagger_ui_bundle_is_the_real_one(client: TestClient) -> None:
    html = client.get("/docs").text
    script = next(link for link in _linked(html) if link.endswith("swagger-ui-bundle.js"))
    body = client.get(script).text
    assert "SwaggerUIBundle" in body
    css = next(link for link in _linked(html) if link.endswith(".css"))
    assert ".swagger-ui" in client.get(css).text
    assert client.get("/docs/oauth2-redirect").status_code == 200


def test_doc_pages_need_no_key(make_client) -> None:  # type: ignore[no-untyped-def]
    """Like /openapi.json, the pages and their assets are public under TABXAI_AUTH."""
    client = make_client(auth="required")
    assert client.get("/v1/datasets").status_code == 401
    for path in ("/docs", "/redoc", "/docs/assets/swagger-ui.css"):
        assert client.get(path).status_code == 200, path
