"""The loopback Hub's request handling: body reading, answers and errors, and the dispatcher that sends each
path to its route method."""

from __future__ import annotations

import json
import re
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from .records import _HubError, _commit_history

__all__ = ["BaseHandler"]


class BaseHandler(BaseHTTPRequestHandler):
    """Reads requests, writes JSON or raw answers, maps `_HubError` to the Hub's error headers, and routes
    each request to a route method of the mixins in `hub_routes` (see [`make_handler`])."""

    protocol_version = "HTTP/1.1"
    server_version = "LoopbackHub/1.0"
    hub: Any = None  # the LoopbackHub served (set by make_handler)

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    def _user(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            return self.hub.tokens.get(auth[7:].strip())
        return None

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size_line = self.rfile.readline().strip()
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline().strip():
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: Any = None, headers: dict[str, str] | None = None,
              raw: bytes | None = None, head: bool = False) -> None:
        data = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
        self.send_response(status)
        if raw is None:
            self.send_header("Content-Type", "application/json")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if not head:
            self.wfile.write(data)
        with self.hub.lock:
            self.hub.requests.append((self.command, self.path, status))

    def _error(self, err: _HubError, head: bool = False) -> None:
        headers = {"X-Error-Message": err.message}
        if err.code:
            headers["X-Error-Code"] = err.code
        self._send(err.status, {"error": err.message, **err.extra}, headers, head=head)

    def _dispatch(self, method: str) -> None:
        with self.hub.lock:
            self.hub.in_flight += 1
            self.hub.max_in_flight = max(self.hub.max_in_flight, self.hub.in_flight)
        try:
            if method in ("POST", "PUT", "PATCH", "DELETE"):
                self._request_body = self._body()
            self._route(method)
        except _HubError as e:
            self._error(e, head=method == "HEAD")
        except Exception as e:  # pragma: no cover - surfaced to the client as a 500
            self._error(_HubError(500, f"{type(e).__name__}: {e}"), head=method == "HEAD")
        finally:
            with self.hub.lock:
                self.hub.in_flight -= 1

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def _route(self, method: str) -> None:
        parts = urlsplit(self.path)
        path, query = unquote(parts.path), parse_qs(parts.query)
        raw_path = parts.path
        user = self._user()
        if path == "/api/whoami-v2":
            if user is None:
                raise _HubError(401, "Invalid user token")
            return self._send(200, {"type": "user", "name": user, "fullname": user, "orgs": [],
                                    "auth": {"type": "access_token", "accessToken": {"displayName": "test",
                                                                                     "role": "write"}}})
        if path == "/api/validate-yaml":
            return self._send(200, {"errors": [], "warnings": []})
        if path == "/api/repos/create" and method == "POST":
            return self._create_repo(user)
        if path.startswith("/__lfs/") and method == "PUT":
            return self._lfs_put(path[len("/__lfs/"):])
        if path == "/api/models" and method == "GET":
            return self._list_models(user, query)
        if path.startswith("/api/collections"):
            return self._collections(method, path[len("/api/collections"):].strip("/"), user)
        m = re.match(r"^/api/(models|datasets|spaces)/(.+)$", raw_path)
        if m:
            return self._api(method, m.group(1)[:-1], m.group(2), user, query)
        m = re.match(r"^/(?:(datasets|spaces)/)?([^/]+/[^/]+?)\.git/info/lfs/objects/batch$", path)
        if m and method == "POST":
            return self._lfs_batch((m.group(1) or "models")[:-1], m.group(2), user)
        m = re.match(r"^/(?:(datasets|spaces)/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", raw_path)
        if m and method in ("GET", "HEAD"):
            repo_type = (m.group(1) or "models")[:-1]
            return self._resolve_file(method, repo_type, unquote(m.group(2)), unquote(m.group(3)),
                                      unquote(m.group(4)), user)
        raise _HubError(404, f"no route for {method} {path}")

    def _api(self, method: str, repo_type: str, rest: str, user: str | None, query: dict) -> None:
        # rest = "<ns>/<name>[/<action>/<revision...>]" (revision and paths URL-quoted)
        segs = rest.split("/")
        repo_id = unquote("/".join(segs[:2]))
        action = segs[2] if len(segs) > 2 else ""
        arg = unquote("/".join(segs[3:])) if len(segs) > 3 else ""
        write = action in ("preupload", "commit", "tag", "branch", "settings")
        with self.hub.lock:
            repo = self.hub._repo(repo_type, repo_id, user, write=write)
        if method == "GET" and action in ("", "revision"):
            return self._info(repo, arg or "main")
        if method == "GET" and action == "tree":
            rev, _, sub = arg.partition("/")
            return self._tree(repo, rev, sub)
        if method == "GET" and action == "refs":
            return self._send(200, {
                "branches": [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": s} for b, s in repo.branches.items()],
                "tags": [{"name": t, "ref": f"refs/tags/{t}", "targetCommit": s} for t, s in repo.tags.items()],
                "converts": [], "pullRequests": []})
        if method == "GET" and action == "commits":
            return self._send(200, _commit_history(repo, self.hub._resolve(repo, arg or "main")))
        if method == "POST" and action == "paths-info":
            return self._paths_info(repo, arg)
        if method == "POST" and action == "preupload":
            return self._preupload(repo, arg)
        if method == "POST" and action == "commit":
            return self._commit(repo, arg or "main")
        if method == "POST" and action == "tag":
            return self._tag(repo, arg or "main")
        if method == "POST" and action == "branch":
            return self._branch(repo, arg)
        if method == "PUT" and action == "settings":
            return self._settings(repo)
        raise _HubError(404, f"no route for {method} /api/{repo_type}s/{rest}")
