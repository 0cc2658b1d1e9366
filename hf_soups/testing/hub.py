"""A small Hub-compatible HTTP server for loopback use: tests, demos and offline pipelines.

It implements the part of the Hub API that `huggingface_hub`'s real client uses to create repos, upload (regular
and LFS files, single commits), tag, resolve revisions, list trees and download with HTTP ranges. Point the client at
it with `HF_ENDPOINT` (or `endpoint=`) and set `HF_HUB_DISABLE_XET=1`.

Example:
    ```python
    >>> from hf_soups.testing.hub import LoopbackHub
    >>> with LoopbackHub(tokens={"hf_write": "alice"}) as hub:
    ...     api = HfApi(endpoint=hub.url, token="hf_write")
    ...     api.create_repo("alice/ft-1")
    ```

Seed it through the client (`create_repo`, `upload_folder`, `create_tag`), never by writing its storage.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["LoopbackHub"]

_SHA_RE = re.compile(r"^[0-9a-f]{40}$")
_LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".gguf", ".png", ".jpg")
_LFS_THRESHOLD = 10 * 1024 * 1024


@dataclass
class _File:
    blob_id: str  # git sha1 of the content (what the Hub calls oid/blobId for regular files)
    sha256: str
    size: int
    lfs: bool


@dataclass
class _Commit:
    sha: str
    files: dict[str, _File]
    parent: str | None
    message: str
    date: float


@dataclass
class _Repo:
    repo_id: str
    repo_type: str
    private: bool
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    commits: dict[str, _Commit] = field(default_factory=dict)


class _HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, extra: dict | None = None):
        self.status, self.message, self.code, self.extra = status, message, code, extra or {}


class LoopbackHub:
    """A Hub-compatible server on `127.0.0.1`, storing blobs content-addressed under `root`.

    Args:
        root (`str`, *optional*):
            Storage folder; a temporary one (deleted on [`stop`]) when omitted.
        tokens (`dict[str, str]`, *optional*):
            Token -> user name. Write operations need a token; private repos need one to be read.
        port (`int`, *optional*, defaults to `0`):
            Port to bind on 127.0.0.1; 0 picks a free one.

    Attributes:
        url (`str`): the endpoint, e.g. `http://127.0.0.1:54321`.
        bytes_served (`dict[str, int]`): response body bytes sent for file downloads, per repo id.
        requests (`list[tuple[str, str, int]]`): `(method, path, status)` of every request.
        fail_commits (`int`): answer the next N commit calls with HTTP 500 (failure injection).
        fail_ranges (`int`): answer the next N ranged file GETs with HTTP 503 (failure injection).
        drop_ranges (`int`): for the next N ranged file GETs, send the headers and half the body, then close the
            connection (a connection lost mid-body).
        stall_ranges (`int`): delay the next N ranged file GETs by `stall_seconds` before answering (timeouts).
    """

    def __init__(self, root: str | None = None, tokens: dict[str, str] | None = None, port: int = 0) -> None:
        self._own_root = root is None
        self.root = root or tempfile.mkdtemp(prefix="hf-soups-hub-")
        os.makedirs(os.path.join(self.root, "blobs"), exist_ok=True)
        self.tokens = dict(tokens or {})
        self.repos: dict[tuple[str, str], _Repo] = {}
        self.bytes_served: dict[str, int] = defaultdict(int)
        self.requests: list[tuple[str, str, int]] = []
        self.fail_commits = 0
        self.fail_ranges = 0
        self.drop_ranges = 0
        self.stall_ranges = 0
        self.stall_seconds = 2.0
        self.lock = threading.RLock()
        self._server = ThreadingHTTPServer(("127.0.0.1", port), _make_handler(self))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------------------------
    def start(self) -> LoopbackHub:
        self._thread = threading.Thread(target=self._server.serve_forever, name="loopback-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> LoopbackHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def reset_counters(self) -> None:
        with self.lock:
            self.bytes_served.clear()
            self.requests.clear()

    # -- storage ----------------------------------------------------------------------------------------------
    def _blob_path(self, sha256: str) -> str:
        return os.path.join(self.root, "blobs", sha256)

    def _store(self, data: bytes) -> _File:
        sha256 = hashlib.sha256(data).hexdigest()
        path = self._blob_path(sha256)
        if not os.path.exists(path):
            tmp = f"{path}.{threading.get_ident()}.tmp"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        blob_id = hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()
        return _File(blob_id, sha256, len(data), False)

    def _repo(self, repo_type: str, repo_id: str, user: str | None, *, write: bool = False) -> _Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None or (repo.private and user is None):
            status = 401 if user is None else 404
            raise _HubError(status, "Repository not found", "RepoNotFound")
        if write:
            if user is None:
                raise _HubError(401, "Invalid credentials in Authorization header")
            if repo_id.split("/")[0] != user:
                raise _HubError(403, f"You don't have the rights to write to {repo_id}")
        return repo

    @staticmethod
    def _resolve(repo: _Repo, revision: str) -> _Commit:
        revision = unquote(revision)
        sha = repo.branches.get(revision) or repo.tags.get(revision)
        if sha is None and _SHA_RE.match(revision) and revision in repo.commits:
            sha = revision
        if sha is None:
            raise _HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return repo.commits[sha]

    def _new_commit(self, repo: _Repo, branch: str, files: dict[str, _File], parent: str | None, message: str) -> _Commit:
        payload = json.dumps({"p": parent, "m": message, "t": time.time_ns(),
                              "f": {k: v.blob_id for k, v in sorted(files.items())}}).encode()
        sha = hashlib.sha1(payload).hexdigest()
        commit = _Commit(sha, files, parent, message, time.time())
        repo.commits[sha] = commit
        repo.branches[branch] = sha
        return commit


def _make_handler(hub: LoopbackHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "LoopbackHub/1.0"

        def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
            pass

        # -- helpers ----------------------------------------------------------------------------------------
        def _user(self) -> str | None:
            auth = self.headers.get("Authorization", "")
            if auth.startswith("Bearer "):
                return hub.tokens.get(auth[7:].strip())
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
            with hub.lock:
                hub.requests.append((self.command, self.path, status))

        def _error(self, err: _HubError, head: bool = False) -> None:
            headers = {"X-Error-Message": err.message}
            if err.code:
                headers["X-Error-Code"] = err.code
            self._send(err.status, {"error": err.message, **err.extra}, headers, head=head)

        def _dispatch(self, method: str) -> None:
            try:
                if method in ("POST", "PUT"):
                    self._request_body = self._body()
                self._route(method)
            except _HubError as e:
                self._error(e, head=method == "HEAD")
            except Exception as e:  # pragma: no cover - surfaced to the client as a 500
                self._error(_HubError(500, f"{type(e).__name__}: {e}"), head=method == "HEAD")

        def do_GET(self) -> None:
            self._dispatch("GET")

        def do_HEAD(self) -> None:
            self._dispatch("HEAD")

        def do_POST(self) -> None:
            self._dispatch("POST")

        def do_PUT(self) -> None:
            self._dispatch("PUT")

        # -- routing ----------------------------------------------------------------------------------------
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
            write = action in ("preupload", "commit", "tag", "branch")
            with hub.lock:
                repo = hub._repo(repo_type, repo_id, user, write=write)
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
            raise _HubError(404, f"no route for {method} /api/{repo_type}s/{rest}")

        # -- repo API ---------------------------------------------------------------------------------------
        def _create_repo(self, user: str | None) -> None:
            if user is None:
                raise _HubError(401, "Invalid credentials in Authorization header")
            body = json.loads(self._request_body or b"{}")
            repo_type = body.get("type") or "model"
            name = body["name"]
            repo_id = f"{body.get('organization') or user}/{name}"
            if repo_id.split("/")[0] != user:
                raise _HubError(403, "You don't have the rights to create a repo in this namespace")
            url = f"{hub.url}/{'' if repo_type == 'model' else repo_type + 's/'}{repo_id}"
            with hub.lock:
                if (repo_type, repo_id) in hub.repos:
                    raise _HubError(409, "You already created this model repo", extra={"url": url})
                private = body.get("visibility") == "private" if "visibility" in body else bool(body.get("private"))
                repo = _Repo(repo_id, repo_type, private)
                hub._new_commit(repo, "main", {}, None, "initial commit")
                hub.repos[(repo_type, repo_id)] = repo
            self._send(200, {"url": url, "name": repo_id, "id": repo_id})

        def _sibling(self, path: str, f: _File) -> dict[str, Any]:
            entry: dict[str, Any] = {"rfilename": path, "size": f.size, "blobId": f.blob_id}
            if f.lfs:
                entry["lfs"] = {"sha256": f.sha256, "size": f.size, "pointerSize": 134}
            return entry

        def _info(self, repo: _Repo, revision: str) -> None:
            commit = hub._resolve(repo, revision)
            files = sorted(commit.files.items())
            self._send(200, {
                "_id": repo.repo_id, "id": repo.repo_id, "modelId": repo.repo_id, "author": repo.repo_id.split("/")[0],
                "sha": commit.sha, "private": repo.private, "disabled": False, "gated": False, "downloads": 0,
                "likes": 0, "tags": [], "library_name": "transformers",
                "lastModified": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(commit.date)),
                "siblings": [self._sibling(p, f) for p, f in files],
            })

        def _tree_entry(self, path: str, f: _File) -> dict[str, Any]:
            entry: dict[str, Any] = {"type": "file", "path": path, "size": f.size, "oid": f.blob_id}
            if f.lfs:
                entry["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": 134}
            return entry

        def _tree(self, repo: _Repo, revision: str, sub: str) -> None:
            commit = hub._resolve(repo, revision)
            recursive = parse_qs(urlsplit(self.path).query).get("recursive", ["false"])[0].lower() == "true"
            prefix = sub.strip("/") + "/" if sub.strip("/") else ""
            out, folders = [], set()
            for path, f in sorted(commit.files.items()):
                if not path.startswith(prefix):
                    continue
                rel = path[len(prefix):]
                if "/" in rel and not recursive:
                    folders.add(prefix + rel.split("/")[0])
                    continue
                if recursive:
                    parts = path.split("/")
                    for i in range(len(prefix.split("/")) if prefix else 1, len(parts)):
                        folders.add("/".join(parts[:i]))
                out.append(self._tree_entry(path, f))
            out += [{"type": "directory", "path": d, "oid": "0" * 40, "size": 0} for d in sorted(folders)]
            self._send(200, out)

        def _paths_info(self, repo: _Repo, revision: str) -> None:
            commit = hub._resolve(repo, revision)
            body = self._request_body.decode()
            try:
                paths = json.loads(body).get("paths", [])
            except ValueError:
                paths = parse_qs(body).get("paths", [])
            self._send(200, [self._tree_entry(p, commit.files[p]) for p in paths if p in commit.files])

        def _preupload(self, repo: _Repo, revision: str) -> None:
            body = json.loads(self._request_body or b"{}")
            out = []
            for f in body.get("files", []):
                lfs = f["path"].endswith(_LFS_SUFFIXES) or int(f.get("size", 0)) >= _LFS_THRESHOLD
                out.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False})
            self._send(200, {"files": out, "commitOid": repo.branches.get(unquote(revision))})

        def _lfs_batch(self, repo_type: str, repo_id: str, user: str | None) -> None:
            with hub.lock:
                hub._repo(repo_type, repo_id, user, write=True)
            body = json.loads(self._request_body or b"{}")
            objects = []
            for obj in body.get("objects", []):
                entry: dict[str, Any] = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
                if not os.path.exists(hub._blob_path(obj["oid"])):
                    entry["actions"] = {"upload": {"href": f"{hub.url}/__lfs/{obj['oid']}", "header": {}}}
                objects.append(entry)
            self._send(200, {"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
                       {"Content-Type": "application/vnd.git-lfs+json"})

        def _lfs_put(self, oid: str) -> None:
            data = self._request_body
            if hashlib.sha256(data).hexdigest() != oid:
                raise _HubError(400, "sha256 mismatch for uploaded LFS object")
            hub._store(data)
            self._send(200, {})

        def _commit(self, repo: _Repo, branch: str) -> None:
            branch = unquote(branch)
            with hub.lock:
                if hub.fail_commits > 0:
                    hub.fail_commits -= 1
                    raise _HubError(500, "Internal Error - injected commit failure")
            lines = [json.loads(line) for line in self._request_body.splitlines() if line.strip()]
            header = next((ln["value"] for ln in lines if ln.get("key") == "header"), {})
            with hub.lock:
                if branch not in repo.branches:
                    raise _HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
                parent = repo.branches[branch]
                files = dict(repo.commits[parent].files)
                for ln in lines:
                    key, value = ln.get("key"), ln.get("value", {})
                    if key == "file":
                        data = base64.b64decode(value["content"]) if value.get("encoding") == "base64" \
                            else value["content"].encode()
                        files[value["path"]] = hub._store(data)
                    elif key == "lfsFile":
                        blob = hub._blob_path(value["oid"])
                        if not os.path.exists(blob):
                            raise _HubError(400, f"LFS object {value['oid']} was never uploaded")
                        with open(blob, "rb") as f:
                            stored = hub._store(f.read())
                        stored.lfs = True
                        files[value["path"]] = stored
                    elif key == "deletedFile":
                        files.pop(value["path"], None)
                    elif key == "deletedFolder":
                        prefix = value["path"].rstrip("/") + "/"
                        files = {k: v for k, v in files.items() if not k.startswith(prefix)}
                commit = hub._new_commit(repo, branch, files, parent, header.get("summary", ""))
            prefix = "" if repo.repo_type == "model" else repo.repo_type + "s/"
            self._send(200, {"success": True, "commitOid": commit.sha,
                             "commitUrl": f"{hub.url}/{prefix}{repo.repo_id}/commit/{commit.sha}",
                             "pullRequestUrl": None})

        def _tag(self, repo: _Repo, revision: str) -> None:
            body = json.loads(self._request_body or b"{}")
            with hub.lock:
                commit = hub._resolve(repo, revision)
                if body["tag"] in repo.tags:
                    raise _HubError(409, f"Tag {body['tag']} already exists")
                repo.tags[body["tag"]] = commit.sha
            self._send(200, {})

        def _branch(self, repo: _Repo, branch: str) -> None:
            body = json.loads(self._request_body or b"{}")
            with hub.lock:
                if branch in repo.branches:
                    raise _HubError(409, f"Branch {branch} already exists")
                start = hub._resolve(repo, body.get("startingPoint") or "main")
                repo.branches[branch] = start.sha
            self._send(200, {})

        # -- downloads --------------------------------------------------------------------------------------
        def _resolve_file(self, method: str, repo_type: str, repo_id: str, revision: str, path: str,
                          user: str | None) -> None:
            with hub.lock:
                repo = hub._repo(repo_type, repo_id, user)
                commit = hub._resolve(repo, revision)
            f = commit.files.get(path)
            if f is None:
                raise _HubError(404, f"Entry not found: {path}", "EntryNotFound",)
            etag = f'"{f.sha256 if f.lfs else f.blob_id}"'
            headers = {"X-Repo-Commit": commit.sha, "ETag": etag, "Accept-Ranges": "bytes",
                       "Content-Type": "application/octet-stream"}
            if f.lfs:
                headers["X-Linked-Etag"] = etag
                headers["X-Linked-Size"] = str(f.size)
            start, end = 0, f.size - 1
            status = 200
            rng = self.headers.get("Range")
            if rng:
                m = re.match(r"bytes=(\d*)-(\d*)$", rng.strip())
                if not m:
                    raise _HubError(416, "bad range")
                if m.group(1):
                    start = int(m.group(1))
                    end = min(int(m.group(2)), f.size - 1) if m.group(2) else f.size - 1
                else:
                    start, end = max(f.size - int(m.group(2)), 0), f.size - 1
                if start > end or start >= f.size:
                    headers["Content-Range"] = f"bytes */{f.size}"
                    return self._send(416, {"error": "range not satisfiable"}, headers)
                headers["Content-Range"] = f"bytes {start}-{end}/{f.size}"
                status = 206
            length = max(end - start + 1, 0)
            if rng and method == "GET" and self._inject_range_fault(headers, status, length, f, start):
                return
            if method == "HEAD":
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(length))
                self.end_headers()
                with hub.lock:
                    hub.requests.append((method, self.path, status))
                return
            with open(hub._blob_path(f.sha256), "rb") as fh:
                fh.seek(start)
                data = fh.read(length)
            with hub.lock:
                hub.bytes_served[repo_id] += len(data)
            self._send(status, raw=data, headers=headers)

        def _inject_range_fault(self, headers: dict[str, str], status: int, length: int, f: _File, start: int) -> bool:
            """Failure injection for ranged reads; returns True when the request was answered (badly) here."""
            with hub.lock:
                fail, drop, stall = hub.fail_ranges > 0, hub.drop_ranges > 0, hub.stall_ranges > 0
                hub.fail_ranges -= fail
                hub.drop_ranges -= drop and not fail
                hub.stall_ranges -= stall and not (fail or drop)
            if fail:
                self._error(_HubError(503, "Service Unavailable - injected range failure"))
                return True
            if drop:
                with open(hub._blob_path(f.sha256), "rb") as fh:
                    fh.seek(start)
                    data = fh.read(length // 2)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(length))
                self.end_headers()
                self.wfile.write(data)
                self.wfile.flush()
                self.close_connection = True
                with hub.lock:
                    hub.requests.append(("GET", self.path, -status))  # negative: the body was cut
                return True
            if stall:
                time.sleep(hub.stall_seconds)
            return False

    return Handler


def main() -> None:  # pragma: no cover - manual use
    import argparse

    parser = argparse.ArgumentParser(description="Run a loopback Hub-compatible server.")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--root", default=None)
    parser.add_argument("--token", action="append", default=[], help="TOKEN=USER (repeatable)")
    args = parser.parse_args()
    tokens = dict(t.split("=", 1) for t in args.token)
    hub = LoopbackHub(args.root, tokens, args.port).start()
    print(f"HF_ENDPOINT={hub.url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        hub.stop()


if __name__ == "__main__":  # pragma: no cover
    main()
