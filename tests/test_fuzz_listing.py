"""Fuzz target "listing pages" (issue #24): arbitrary listing and collection answers from a loopback endpoint.

Each example scripts a few pages (any JSON or raw bytes, any status, a `Link: rel="next"` to the same origin, to
another origin, relative or garbage, redirects to either origin) and runs discovery against them. Only `SoupError`
may escape; every example ends within the wall-clock limit; the second ("foreign") server on another port must
never receive a request, so the token cannot have gone there.

Budget: HF_SOUPS_FUZZ_EXAMPLES (as tests/test_fuzz.py) divided by 60 examples per target, at least 30; every example
runs under HF_SOUPS_FUZZ_TIMEOUT seconds.
"""

from __future__ import annotations

import json
import os
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_fuzz import _time_limit

from hf_soups import SoupError, find_ingredients

EXAMPLES = int(os.environ.get("HF_SOUPS_FUZZ_EXAMPLES", 6000))
_SETTINGS = settings(max_examples=max(EXAMPLES // 60, 30), deadline=None, derandomize=True, database=None,
                     suppress_health_check=list(HealthCheck))
TOKEN = "hf_fuzz_listing_secret_0123456789"


class _Server:
    """Serves `self.pages[k]` for `?cursor=k` (or the collection route); records every request."""

    def __init__(self) -> None:
        self.pages: list[dict[str, Any]] = []
        self.requests: list[tuple[str, str | None]] = []
        self.other = ""
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                outer.requests.append((self.path, self.headers.get("authorization")))
                try:
                    outer.answer(self)
                except OSError:
                    pass

            do_HEAD = do_GET

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def answer(self, h: BaseHTTPRequestHandler) -> None:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(h.path).query)
        listing = h.path.startswith(("/api/models?", "/api/collections/"))
        if not listing or not self.pages:
            return self._send(h, 401, b'{"error": "Invalid credentials"}', {})
        try:
            k = min(int(query.get("cursor", ["0"])[0]), len(self.pages) - 1)
        except ValueError:
            k = 0
        page = self.pages[k]
        headers = {}
        nxt = f"/api/models?cursor={k + 1}"
        link = {"none": None, "same": f"{self.url}{nxt}", "relative": nxt, "foreign": f"{self.other}{nxt}",
                "garbage": page["garbage"]}[page["link"]]
        if link is not None and k + 1 < len(self.pages):
            headers["Link"] = link if page["link"] == "garbage" else f'<{link}>; rel="next"'
        if page["status"] in (301, 302, 307):
            headers["Location"] = {"same": self.url + nxt, "foreign": self.other + nxt,
                                   "garbage": page["garbage"]}[page["redirect"]]
        self._send(h, page["status"], page["body"], headers)

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict[str, str]) -> None:
        h.send_response(status)
        for k, v in {"Content-Type": "application/json", "Content-Length": str(len(body)), **headers}.items():
            h.send_header(k, v)
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(body)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def servers():
    home, foreign = _Server(), _Server()
    home.other = foreign.url
    yield home, foreign
    home.close()
    foreign.close()


@pytest.fixture
def quick(monkeypatch):
    from hf_soups import constants

    for name, value in (("HUB_TIMEOUT", 2.0), ("LISTING_DEADLINE", 5.0), ("LISTING_MAX_PAGES", 5), ("HTTP_RETRIES", 0)):
        monkeypatch.setattr(constants, name, value, raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")


_ids = st.one_of(st.sampled_from(["org/ft-1", "org/ft-2", "bert-a", "a/b/c", "org/ft-1\n", "x" * 200, "../etc"]),
                 st.text(max_size=20), st.integers(), st.none())
_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=20))
_entry = st.one_of(
    st.fixed_dictionaries({"id": _ids}, optional={"sha": st.one_of(st.just("a" * 40), _scalars),
                                                  "tags": st.one_of(st.lists(st.one_of(st.text(max_size=30),
                                                                                       _scalars), max_size=3),
                                                                    _scalars),
                                                  "type": st.sampled_from(["model", "dataset", 3]),
                                                  "position": _scalars}),
    _scalars, st.lists(_scalars, max_size=2))
_json = st.one_of(st.lists(_entry, max_size=4),
                  st.fixed_dictionaries({"items": st.one_of(st.lists(_entry, max_size=4), _scalars)}),
                  _scalars, st.dictionaries(st.text(max_size=5), _scalars, max_size=3))
_page = st.fixed_dictionaries({
    "body": st.one_of(_json.map(lambda v: json.dumps(v).encode()), st.binary(max_size=40)),
    "status": st.sampled_from([200, 200, 200, 200, 302, 307, 404, 429, 500]),
    "redirect": st.sampled_from(["same", "foreign", "garbage"]),
    "link": st.sampled_from(["none", "same", "relative", "foreign", "garbage"]),
    "garbage": st.one_of(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40),
                         st.sampled_from(["http://[::1", "file:///etc/passwd", "//evil.example/x", "http://:0/",
                                          "javascript:alert(1)"])),
})


def _run(servers: Any, pages: list[dict[str, Any]], **kw: Any) -> None:
    home, foreign = servers
    home.pages, home.requests[:], foreign.requests[:] = pages, [], []
    with _time_limit():
        try:
            found = find_ingredients(endpoint=home.url, token=TOKEN, progress=False, arch_check=False, max_workers=2,
                                     **kw)
        except SoupError:
            pass
        else:
            assert all(isinstance(c.repo_id, str) for c in found.rejected + found.ingredients)
            assert not found.ingredients  # the endpoint serves no repo: nothing can be compatible
    assert foreign.requests == [], foreign.requests  # never a request to another origin, token or not
    assert all(auth == f"Bearer {TOKEN}" for _, auth in home.requests)


@_SETTINGS
@given(pages=st.lists(_page, min_size=1, max_size=3), limit=st.one_of(st.none(), st.integers(1, 5)))
def test_fuzz_listing_pages(servers, quick, pages, limit):
    _run(servers, pages, base_model="org/base", limit=limit)


@_SETTINGS
@given(page=_page, author=st.one_of(st.none(), st.just("org")))
def test_fuzz_collection_answer(servers, quick, page, author):
    _run(servers, [page], collection="user/sweep-0123", author=author)
