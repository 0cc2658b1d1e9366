"""Issue #24, items 1, 4, 5 and 6: hostile Hub endpoints on loopback.

The token goes only to the endpoint's origin; listing and collection items are Hub ids, never local paths; invalid
repo ids are rejected rows (discovery) or exit 3 (CLI); a listing that never ends or never answers ends in a
HubConnectionError naming the endpoint. Every hostile server here counts its requests and every test is bounded
in time, so each can fail.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import pathlib
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

import pytest

from hf_soups import HubConnectionError, IngredientNotFoundError, SoupError, find_ingredients
from hf_soups.hub import _http
from hf_soups.hub.stream import HttpRangeSource

TOKEN = "hf_r3hub_secret_token_0123456789"
SHA = "a" * 40


class Hostile:
    """A loopback HTTP server answering by `answer(handler, server)`; records (method, path, authorization)."""

    def __init__(self, answer: Callable[[BaseHTTPRequestHandler, Hostile], None]) -> None:
        self.answer = answer
        self.requests: list[tuple[str, str, str | None]] = []
        self.stop = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                outer.requests.append(("GET", self.path, self.headers.get("authorization")))
                with contextlib.suppress(OSError):
                    outer.answer(self, outer)

            do_HEAD = do_GET

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> Hostile:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


def send(handler: BaseHTTPRequestHandler, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    handler.send_response(status)
    for k, v in {"Content-Type": "application/json", "Content-Length": str(len(data)), **(headers or {})}.items():
        handler.send_header(k, v)
    handler.end_headers()
    if handler.command != "HEAD":
        handler.wfile.write(data)


def not_found(handler: BaseHTTPRequestHandler) -> None:
    send(handler, 404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})


@pytest.fixture(autouse=True)
def _bounded():
    """Every test here fails (rather than hangs) past 30 s, also on code without the limits under test."""
    from test_fuzz import _time_limit

    with _time_limit(30):
        yield


@pytest.fixture
def fast_limits(monkeypatch):
    """Small limits so that every hostile case ends within seconds."""
    from hf_soups import constants

    for name, value in (("HUB_TIMEOUT", 1.0), ("LISTING_DEADLINE", 4.0), ("LISTING_MAX_PAGES", 20),
                        ("LISTING_MAX_BYTES", 64 * 1024 * 1024), ("HTTP_RETRIES", 1), ("HTTP_BACKOFF", 0.05)):
        monkeypatch.setattr(constants, name, value, raising=False)  # raising=False: the test also runs on old code
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    return constants


def _resolve(endpoint: str) -> Any:
    from hf_soups.hub.client import resolve
    from hf_soups.refs import IngredientRef

    return resolve(IngredientRef.hub("org/ft"), token=TOKEN, endpoint=endpoint)


def _call(route: str, endpoint: str) -> Any:
    """Discovery by listing or collection, or pinning one repo (model info)."""
    if route == "model-info":
        return _resolve(endpoint)
    return _find(endpoint, **({"collection": "user/sweep-0123", "base_model": None} if route == "collection" else {}))


def _find(endpoint: str, **kw: Any):
    kw.setdefault("base_model", "org/base")
    return find_ingredients(endpoint=endpoint, token=TOKEN, progress=False, arch_check=False, **kw)


# -- item 1: the token stays on the endpoint's origin ---------------------------------------------------------------

def _next_to(target: str) -> Callable[[BaseHTTPRequestHandler, Hostile], None]:
    def answer(h: BaseHTTPRequestHandler, s: Hostile) -> None:
        if h.path.startswith("/api/models?"):
            send(h, 200, [{"id": "org/ft-1", "sha": SHA, "tags": ["base_model:finetune:org/base"]}],
                 {"Link": f'<{target}>; rel="next"'})
        else:
            not_found(h)
    return answer


@pytest.mark.parametrize("shape", ["other-port", "other-host-name", "scheme-relative", "downgrade-to-other-port"])
def test_a_next_page_on_another_origin_is_refused_and_gets_nothing(fast_limits, shape):
    with Hostile(lambda h, s: send(h, 200, [])) as foreign:
        port = foreign.server.server_address[1]
        with Hostile(_next_to("")) as home:
            home_port = home.server.server_address[1]
            target = {"other-port": f"{foreign.url}/api/models?cursor=2",
                      "other-host-name": f"http://localhost:{home_port}/api/models?cursor=2",  # same port, other host
                      "scheme-relative": f"//127.0.0.1:{port}/api/models?cursor=2",
                      "downgrade-to-other-port": f"http://127.0.0.1:{port}/api/models?cursor=2"}[shape]
            home.answer = _next_to(target)
            start = time.monotonic()
            with pytest.raises(HubConnectionError) as err:
                _find(home.url)
            assert time.monotonic() - start < 10
        assert "another origin" in str(err.value) and target.lstrip("/").split("?")[0].split("//")[-1] in str(err.value)
        assert TOKEN not in str(err.value)
        assert foreign.requests == []  # not even one request, with or without the token
        assert [r[1].split("?")[0] for r in home.requests] == ["/api/models"]  # the next page was never asked for
        assert home.requests[0][2] == f"Bearer {TOKEN}"


def test_origin_is_scheme_host_and_port():
    assert _http.same_origin("https://huggingface.co:443/api/models?cursor=x", "https://huggingface.co")
    assert _http.same_origin("HTTPS://HuggingFace.co/api", "https://huggingface.co/")
    assert not _http.same_origin("http://huggingface.co/api/models", "https://huggingface.co")  # downgrade
    assert not _http.same_origin("https://huggingface.co:8443/api", "https://huggingface.co")
    assert not _http.same_origin("https://huggingface.co.evil.example/api", "https://huggingface.co")
    assert not _http.same_origin("https://huggingface.co@evil.example/api", "https://huggingface.co")
    assert not _http.same_origin("https://huggingface.co:99999/api", "https://huggingface.co")
    assert not _http.same_origin("file:///etc/passwd", "https://huggingface.co")


@pytest.mark.parametrize("route", ["listing", "collection", "listing-second-page", "model-info"])
def test_a_redirect_to_another_origin_is_refused_and_gets_nothing(fast_limits, route):
    with Hostile(lambda h, s: send(h, 200, {"items": []} if "collections" in h.path else [])) as foreign:
        def answer(h: BaseHTTPRequestHandler, s: Hostile) -> None:
            if route == "listing-second-page" and "cursor" not in h.path:
                send(h, 200, [], {"Link": f'<{s.url}/api/models?cursor=2>; rel="next"'})
            else:
                send(h, 302, b"", {"Location": f"{foreign.url}{h.path}"})

        with Hostile(answer) as home:
            with pytest.raises(HubConnectionError, match="redirect to another origin") as err:
                _call(route, home.url)
        assert foreign.url in str(err.value)
        assert foreign.requests == []
        assert len(home.requests) == (2 if route == "listing-second-page" else 1)


def test_a_same_origin_redirect_is_followed(fast_limits):
    """The control: a redirect on the endpoint's own origin is followed, with the token."""
    def answer(h: BaseHTTPRequestHandler, s: Hostile) -> None:
        if h.path.startswith("/api/collections/user/old-0123"):
            send(h, 307, b"", {"Location": "/api/collections/user/new-0123"})
        elif h.path.startswith("/api/collections/user/new-0123"):
            send(h, 200, {"items": [{"type": "model", "id": "org/ft-1", "position": 0}]})
        else:
            not_found(h)

    with Hostile(answer) as home:
        found = _find(home.url, collection="user/old-0123", base_model=None)
    assert [c.repo_id for c in found.rejected] == ["org/ft-1"] and not found.ingredients
    assert [r[2] for r in home.requests[:2]] == [f"Bearer {TOKEN}"] * 2
    assert any(p.startswith("/api/models/org/ft-1") for _, p, _ in home.requests)


def test_a_range_read_redirected_to_another_origin_goes_there_without_the_token(fast_limits):
    """The Hub sends file bytes from its CDN: the redirect is followed, the token stays home."""
    payload = bytes(range(256)) * 4

    def cdn(h: BaseHTTPRequestHandler, s: Hostile) -> None:
        first, last = (int(x) for x in h.headers["Range"].split("=")[1].split("-"))
        send(h, 206, payload[first:last + 1], {"Content-Type": "application/octet-stream"})

    with Hostile(cdn) as foreign:
        def home_answer(h: BaseHTTPRequestHandler, s: Hostile) -> None:  # a chain: same origin, then the CDN
            target = f"{foreign.url}/blob" if h.path == "/hop" else "/hop"
            send(h, 302, b"", {"Location": target})

        with Hostile(home_answer) as home:
            source = HttpRangeSource(f"{home.url}/org/ft/resolve/{SHA}/model.safetensors", len(payload),
                                     "model.safetensors", token=TOKEN, window=1, ingredient="org/ft")
            assert source.read(100, 50) == payload[100:150]
        assert [r[2] for r in home.requests] == [f"Bearer {TOKEN}"] * 2
        assert [r[2] for r in foreign.requests] == [None]


def test_a_range_read_redirect_loop_ends(fast_limits):
    with Hostile(lambda h, s: send(h, 302, b"", {"Location": "/again"})) as home:
        source = HttpRangeSource(f"{home.url}/f", 10, "model.safetensors", token=TOKEN, window=1, ingredient="org/ft")
        with pytest.raises(HubConnectionError, match="redirected more than"):
            source.read(0, 5)
    assert len(home.requests) == _http.MAX_REDIRECTS + 1


@pytest.mark.parametrize("body", [b"null", b"[1, 2]", b"\xff\xfe", b'{"error": 3}'])
def test_a_malformed_error_answer_is_a_typed_error(fast_limits, body):
    """huggingface_hub reads an error body of `null` as a dict: the AttributeError must not escape."""
    with Hostile(lambda h, s: send(h, 404, body)) as home:
        with pytest.raises(SoupError):
            _resolve(home.url)
        with pytest.raises(IngredientNotFoundError, match="collection does not exist"):
            _find(home.url, collection="user/sweep-0123", base_model=None)
    assert len(home.requests) == 2


@pytest.mark.parametrize("location", ["file:///etc/passwd", "http://[::1", "ftp://127.0.0.1/x"])
def test_a_range_read_redirect_to_a_non_http_url_is_refused(fast_limits, location):
    with Hostile(lambda h, s: send(h, 302, b"", {"Location": location})) as home:
        source = HttpRangeSource(f"{home.url}/f", 10, "model.safetensors", token=TOKEN, window=1, ingredient="org/ft")
        with pytest.raises(HubConnectionError, match="not an http"):
            source.read(0, 5)
    assert len(home.requests) == 1


# -- items 4 and 5: listed items are Hub ids, validated -------------------------------------------------------------

BAD_IDS = ["bért/model", "x" * 3000, "user/model\n", "a/b/c", "user/mo del", "user/../etc", "user/model.git", ""]


def test_listed_ids_are_hub_ids_never_local_folders(fast_limits, tmp_path, monkeypatch):
    from hf_soups.testing import make_tiny_bert

    monkeypatch.chdir(tmp_path)
    make_tiny_bert(tmp_path / "bert-a", num_labels=2)
    make_tiny_bert(tmp_path / "org" / "ft-b", num_labels=2)

    def answer(h: BaseHTTPRequestHandler, s: Hostile) -> None:
        if h.path.startswith("/api/collections/"):
            send(h, 200, {"items": [{"type": "model", "id": "bert-a", "position": 0},
                                    {"type": "model", "id": "org/ft-b", "position": 1}]})
        else:
            not_found(h)

    with Hostile(answer) as home:
        found = _find(home.url, collection="user/sweep-0123", base_model=None)
        refs = found.write_refs(tmp_path / "refs.txt")
    assert not found.ingredients
    assert sorted(c.repo_id for c in found.rejected) == ["bert-a", "org/ft-b"]
    assert all(c.sha is None for c in found.rejected)
    asked = [p.split("?")[0] for _, p, _ in home.requests]
    assert any(p.startswith("/api/models/bert-a/") for p in asked)  # asked of the Hub, not read from ./bert-a
    assert any(p.startswith("/api/models/org/ft-b/") for p in asked)
    assert pathlib.Path(refs).read_text().count("\n") == 2  # the header only: no local folder became a ref


def test_invalid_listed_ids_are_rejected_rows_and_discovery_goes_on(fast_limits):
    entries = [{"id": i, "sha": SHA, "tags": ["base_model:finetune:org/base"]} for i in BAD_IDS]
    entries.append({"id": "org/ft-1", "sha": "not-a-sha\nevil/model", "tags": ["base_model:finetune:org/base"]})

    def answer(h: BaseHTTPRequestHandler, s: Hostile) -> None:
        send(h, 200, entries) if h.path.startswith("/api/models?") else not_found(h)

    with Hostile(answer) as home:
        found = _find(home.url)
    by_id = {c.repo_id: c for c in found.rejected}
    assert len(by_id) == len(BAD_IDS) + 1 and not found.ingredients
    bad_rows = [c for c in found.rejected if c.repo_id != "org/ft-1"]
    for row in bad_rows:  # a rejected row shows the id printable and short: it can open no fence or line in a card
        assert "not a valid Hub repo id" in row.reason
        assert row.repo_id.isprintable() and len(row.repo_id) <= 200 and row.sha == SHA
    assert "bért/model" in by_id and "a/b/c" in by_id and "user/model?" in by_id
    assert by_id["org/ft-1"].sha is None  # a listed sha that is not a commit sha is never used
    asked = [p for _, p, _ in home.requests if not p.startswith(("/api/models?", "/api/whoami"))]  # not suggestions
    assert asked and all(p.startswith("/api/models/org/ft-1/") for p in asked)  # only the valid id was asked for


def _cli(*args: str, cwd: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
           "HF_SOUPS_HUB_TIMEOUT": "2", "HF_SOUPS_HTTP_RETRIES": "0"}
    return subprocess.run([sys.executable, "-m", "hf_soups", *args], capture_output=True, text=True, timeout=60,
                          env=env, cwd=cwd)


@pytest.mark.parametrize("bad", ["a/b/c", "x" * 3000, "user/model\n"])
def test_cli_invalid_repo_id_exits_3_with_one_line(bad, tmp_path):
    for args in (["check", bad, "org/ok"], ["find", "--base", bad]):
        proc = _cli(*args, cwd=str(tmp_path))
        assert proc.returncode == 3, (args, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr
        assert proc.stderr.startswith("hf-soups: error: ") and "valid Hub repo id" in proc.stderr.splitlines()[0]


# -- item 6: a listing that never ends or never answers -------------------------------------------------------------

def test_endless_empty_pages_end_at_the_page_cap_even_with_a_limit(fast_limits):
    def answer(h: BaseHTTPRequestHandler, s: Hostile) -> None:
        send(h, 200, [], {"Link": f'<{s.url}/api/models?cursor={len(s.requests)}>; rel="next"'})

    with Hostile(answer) as home:
        with pytest.raises(HubConnectionError, match="HF_SOUPS_LISTING_MAX_PAGES") as err:
            _find(home.url, limit=5)
    assert home.url in str(err.value)
    assert len(home.requests) == fast_limits.LISTING_MAX_PAGES


def test_slow_endless_pages_end_at_the_total_deadline(fast_limits):
    fast_limits.LISTING_MAX_PAGES = 10_000

    def answer(h: BaseHTTPRequestHandler, s: Hostile) -> None:
        time.sleep(0.2)
        send(h, 200, [{"id": f"org/ft-{len(s.requests)}", "sha": SHA, "tags": []}],
             {"Link": f'<{s.url}/api/models?cursor={len(s.requests)}>; rel="next"'})

    with Hostile(answer) as home:
        start = time.monotonic()
        with pytest.raises(HubConnectionError, match="HF_SOUPS_LISTING_DEADLINE") as err:
            _find(home.url)
        took = time.monotonic() - start
    assert home.url in str(err.value)
    assert fast_limits.LISTING_DEADLINE - 0.5 < took < fast_limits.LISTING_DEADLINE + 2
    assert 5 < len(home.requests) < 30


def _silent(h: BaseHTTPRequestHandler, s: Hostile) -> None:
    s.stop.wait(30)


def _trickle_headers(h: BaseHTTPRequestHandler, s: Hostile) -> None:
    for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 10_000:
        if s.stop.wait(0.2):
            return
        h.wfile.write(bytes([byte]))
        h.wfile.flush()


def _trickle_body(h: BaseHTTPRequestHandler, s: Hostile) -> None:
    h.send_response(200)
    h.send_header("Content-Type", "application/json")
    h.send_header("Content-Length", "100000")
    h.end_headers()
    h.wfile.write(b"[")
    while not s.stop.wait(0.2):
        h.wfile.write(b" ")
        h.wfile.flush()


@pytest.mark.parametrize("answer", [_silent, _trickle_headers, _trickle_body], ids=["silent", "trickle-headers",
                                                                                     "trickle-body"])
@pytest.mark.parametrize("route", ["listing", "collection", "model-info"])
def test_a_silent_or_trickling_endpoint_ends_in_time(fast_limits, answer, route):
    with Hostile(answer) as home:
        start = time.monotonic()
        with pytest.raises(HubConnectionError) as err:
            _call(route, home.url)
        took = time.monotonic() - start
    assert home.url in str(err.value)
    assert took < fast_limits.HUB_TIMEOUT * (fast_limits.HTTP_RETRIES + 1) + 2
    assert len(home.requests) == fast_limits.HTTP_RETRIES + 1  # one request a try, then the typed error


def test_limits_are_read_from_the_environment():
    code = ("from hf_soups import constants as c; "
            "print(c.HUB_TIMEOUT, c.LISTING_DEADLINE, c.LISTING_MAX_PAGES, c.LISTING_MAX_BYTES)")
    env = {**os.environ, "HF_SOUPS_HUB_TIMEOUT": "7.5", "HF_SOUPS_LISTING_DEADLINE": "42",
           "HF_SOUPS_LISTING_MAX_PAGES": "3", "HF_SOUPS_LISTING_MAX_BYTES": "1000"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.stdout.split() == ["7.5", "42.0", "3", "1000"], out.stderr


def test_an_oversized_page_is_refused(fast_limits):
    fast_limits.LISTING_MAX_BYTES = 10_000
    with Hostile(lambda h, s: send(h, 200, [{"id": f"org/m{i}", "tags": []} for i in range(2000)])) as home:
        with pytest.raises(HubConnectionError, match="HF_SOUPS_LISTING_MAX_BYTES"):
            _find(home.url)
    assert len(home.requests) == 1


# -- no `assert` does validation in the package ---------------------------------------------------------------------

def test_the_package_has_no_assert_statement():
    """`python -O` strips asserts: none may stand between untrusted input and a decision."""
    root = pathlib.Path(__file__).resolve().parent.parent / "hf_soups"
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Assert):
                found.append(f"{path.relative_to(root.parent)}:{node.lineno}")
    assert len(list(root.rglob("*.py"))) > 20
    assert found == [], f"replace these asserts with typed errors: {found}"
