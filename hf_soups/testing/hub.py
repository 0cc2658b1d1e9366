"""A small Hub-compatible HTTP server for loopback use: tests, demos and offline pipelines.

It implements the part of the Hub API that `huggingface_hub`'s real client uses to create repos, upload (regular
and LFS files, single commits), tag, resolve revisions, list trees and download with HTTP ranges; list models
(`list_models`: `filter`, `author`, `search`, `pipeline_tag`, `sort`, `limit`, `expand`/`full`, cursor pages in a
`Link: <...>; rel="next"` header, with tags derived from each repo's card as the Hub does); gate repos
(`update_repo_settings`); and collections (`create_collection`, `add_collection_item`, `get_collection`). Point the
client at it with `HF_ENDPOINT` (or `endpoint=`) and set `HF_HUB_DISABLE_XET=1`.

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
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

from ..atomic_file import write_atomic

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
    gated: str | bool = False  # False, "auto" or "manual"
    created: float = field(default_factory=time.time)


@dataclass
class _Collection:
    slug: str
    title: str
    namespace: str
    private: bool
    description: str | None
    object_id: str
    items: list[dict[str, Any]] = field(default_factory=list)
    updated: float = field(default_factory=time.time)


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
        page_size (`int`, *optional*, defaults to `1000`):
            Models per page of `GET /api/models` when no smaller `limit` is asked (the Hub's own default is 1000).

    Attributes:
        url (`str`): the endpoint, e.g. `http://127.0.0.1:54321`.
        bytes_served (`dict[str, int]`): response body bytes sent for file downloads, per repo id.
        requests (`list[tuple[str, str, int]]`): `(method, path, status)` of every request.
        fail_commits (`int`): answer the next N commit calls with HTTP 500 (failure injection).
        fail_ranges (`int`): answer the next N ranged file GETs with HTTP 503 (failure injection).
        drop_ranges (`int`): for the next N ranged file GETs, send the headers and half the body, then close the
            connection (a connection lost mid-body).
        stall_ranges (`int`): delay the next N ranged file GETs by `stall_seconds` before answering (timeouts).
        max_in_flight (`int`): the most requests served at the same time since the last [`reset_counters`].
        rate_limit_listings (`int`): answer the next N model listings with HTTP 429 and `Retry-After: 0`.
    """

    def __init__(self, root: str | None = None, tokens: dict[str, str] | None = None, port: int = 0,
                 page_size: int = 1000) -> None:
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
        self.page_size = page_size
        self.rate_limit_listings = 0
        self.collections: dict[str, _Collection] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self._card_cache: dict[str, dict[str, Any]] = {}
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
            self.max_in_flight = self.in_flight

    # -- storage ----------------------------------------------------------------------------------------------
    def _blob_path(self, sha256: str) -> str:
        return os.path.join(self.root, "blobs", sha256)

    def _store(self, data: bytes) -> _File:
        sha256 = hashlib.sha256(data).hexdigest()
        path = self._blob_path(sha256)
        if not os.path.exists(path):
            write_atomic(path, data)
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

    def _read_small(self, f: _File | None, limit: int = 1_000_000) -> bytes | None:
        if f is None or f.size > limit:
            return None
        with open(self._blob_path(f.sha256), "rb") as fh:
            return fh.read()

    def _card(self, repo: _Repo) -> dict[str, Any]:
        """What the Hub derives from a repo's main head: card data, config, tags, pipeline tag (cached per commit)."""
        commit = repo.commits[repo.branches["main"]] if "main" in repo.branches else None
        if commit is None:
            return {"cardData": None, "config": None, "tags": [], "pipeline_tag": None, "library_name": None}
        cached = self._card_cache.get(commit.sha)
        if cached is None:
            cached = self._card_cache[commit.sha] = _derive_card(
                self._read_small(commit.files.get("README.md")), self._read_small(commit.files.get("config.json")),
                list(commit.files))
        return cached

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
            with hub.lock:
                hub.in_flight += 1
                hub.max_in_flight = max(hub.max_in_flight, hub.in_flight)
            try:
                if method in ("POST", "PUT", "PATCH", "DELETE"):
                    self._request_body = self._body()
                self._route(method)
            except _HubError as e:
                self._error(e, head=method == "HEAD")
            except Exception as e:  # pragma: no cover - surfaced to the client as a 500
                self._error(_HubError(500, f"{type(e).__name__}: {e}"), head=method == "HEAD")
            finally:
                with hub.lock:
                    hub.in_flight -= 1

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
            if method == "GET" and action == "commits":
                return self._send(200, _commit_history(repo, hub._resolve(repo, arg or "main")))
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
                "sha": commit.sha, "private": repo.private, "disabled": False, "gated": repo.gated, "downloads": 0,
                "likes": 0, "tags": hub._card(repo)["tags"], "library_name": hub._card(repo)["library_name"],
                "pipeline_tag": hub._card(repo)["pipeline_tag"], "cardData": hub._card(repo)["cardData"],
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

        def _settings(self, repo: _Repo) -> None:
            body = json.loads(self._request_body or b"{}")
            with hub.lock:
                if "gated" in body:
                    if body["gated"] not in ("auto", "manual", False):
                        raise _HubError(400, "gated must be 'auto', 'manual' or false")
                    repo.gated = body["gated"]
                if "visibility" in body or "private" in body:
                    repo.private = (body.get("visibility") == "private" if "visibility" in body
                                    else bool(body["private"]))
            self._send(200, {})

        # -- listing ----------------------------------------------------------------------------------------
        def _model_entry(self, repo: _Repo, fields: set[str] | None) -> dict[str, Any]:
            """One model as `GET /api/models` returns it: the default fields, or `_id`, `id` and the expanded ones."""
            card = hub._card(repo)
            commit = repo.commits[repo.branches["main"]]
            every = {
                "_id": _object_id(repo.repo_id), "id": repo.repo_id, "modelId": repo.repo_id,
                "author": repo.repo_id.split("/")[0], "sha": commit.sha, "private": repo.private,
                "gated": repo.gated, "disabled": False, "downloads": 0, "likes": 0, "trendingScore": 0,
                "tags": card["tags"], "pipeline_tag": card["pipeline_tag"], "library_name": card["library_name"],
                "createdAt": _iso(repo.created), "lastModified": _iso(commit.date), "cardData": card["cardData"],
                "config": card["config"], "siblings": [{"rfilename": p} for p in sorted(commit.files)],
            }
            if fields is None:  # the Hub's default listing
                fields = {"likes", "trendingScore", "private", "downloads", "tags", "pipeline_tag", "library_name",
                          "createdAt", "modelId"}
            keep = {"_id", "id"} | fields
            return {k: v for k, v in every.items() if k in keep and (v is not None or k in fields)}

        def _list_models(self, user: str | None, query: dict[str, list[str]]) -> None:
            with hub.lock:
                if hub.rate_limit_listings > 0:
                    hub.rate_limit_listings -= 1
                    return self._send(429, {"error": "Too many requests"}, {"Retry-After": "0",
                                                                            "X-Error-Message": "Too many requests"})
            one = {k: v[-1] for k, v in query.items()}
            filters = query.get("filter", [])
            expand = query.get("expand", []) + query.get("expand[]", [])
            unknown = [e for e in expand if e not in _EXPANDABLE]
            if unknown:
                raise _HubError(400, f"Invalid expand value(s): {unknown}")
            fields: set[str] | None = set(expand) if expand else None
            if one.get("full", "").lower() == "true":
                fields = (fields or set()) | {"author", "sha", "lastModified", "private", "gated", "disabled",
                                              "siblings", "tags", "pipeline_tag", "library_name", "createdAt",
                                              "downloads", "likes", "modelId", "trendingScore"}
            for flag, name in (("cardData", "cardData"), ("config", "config")):
                if one.get(flag, "").lower() == "true":
                    base = fields if fields is not None else {"likes", "trendingScore", "private", "downloads",
                                                              "tags", "pipeline_tag", "library_name", "createdAt",
                                                              "modelId"}
                    fields = base | {name}
            search = one.get("search", "").lower()
            with hub.lock:
                repos = [r for (t, _), r in hub.repos.items() if t == "model" and "main" in r.branches
                         and (not r.private or r.repo_id.split("/")[0] == user)]
                rows = []
                for repo in repos:
                    card = hub._card(repo)
                    if "author" in one and repo.repo_id.split("/")[0] != one["author"]:
                        continue
                    if search and search not in repo.repo_id.lower():
                        continue
                    if "pipeline_tag" in one and card["pipeline_tag"] != one["pipeline_tag"]:
                        continue
                    if any(f not in card["tags"] for f in filters):
                        continue
                    rows.append(repo)
                sort = one.get("sort")
                if sort in ("lastModified", "createdAt", "id"):
                    key = {"lastModified": lambda r: r.commits[r.branches["main"]].date,
                           "createdAt": lambda r: r.created, "id": lambda r: r.repo_id}[sort]
                    rows.sort(key=key, reverse=one.get("direction", "-1") == "-1")
                elif sort not in (None, "downloads", "likes", "trendingScore"):
                    raise _HubError(400, f"Invalid sort: {sort}")
                try:
                    cursor = json.loads(base64.urlsafe_b64decode(one["cursor"])) if "cursor" in one else {}
                    offset = int(cursor.get("offset", 0))
                except (ValueError, KeyError, TypeError, AttributeError):
                    raise _HubError(400, "Invalid cursor") from None
                size = min(int(one["limit"]), hub.page_size) if one.get("limit") else hub.page_size
                page = [self._model_entry(r, fields) for r in rows[offset:offset + size]]
            headers = {}
            if offset + size < len(rows):
                cursor = base64.urlsafe_b64encode(json.dumps({"offset": offset + size}).encode()).decode()
                params = [(k, v) for k, vs in query.items() if k != "cursor" for v in vs] + [("cursor", cursor)]
                headers["Link"] = f'<{hub.url}/api/models?{urlencode(params)}>; rel="next"'
            self._send(200, page, headers)

        # -- collections ------------------------------------------------------------------------------------
        def _collection_json(self, c: _Collection, user: str | None) -> dict[str, Any]:
            items = []
            for item in c.items:
                repo = hub.repos.get(("model", item["id"])) if item["type"] == "model" else None
                if repo is not None and repo.private and repo.repo_id.split("/")[0] != user:
                    continue
                entry = dict(item)
                if repo is not None and "main" in repo.branches:
                    card = hub._card(repo)
                    entry.update({"author": repo.repo_id.split("/")[0], "downloads": 0, "likes": 0,
                                  "gated": repo.gated, "private": repo.private, "isLikedByUser": False,
                                  "lastModified": _iso(repo.commits[repo.branches["main"]].date),
                                  "pipeline_tag": card["pipeline_tag"], "repoType": "model"})
                items.append(entry)
            return {"slug": c.slug, "title": c.title, "description": c.description, "gating": False,
                    "owner": {"_id": _object_id(c.namespace), "name": c.namespace, "fullname": c.namespace,
                              "type": "user", "avatarUrl": "", "isPro": False},
                    "items": items, "lastUpdated": _iso(c.updated), "position": 0, "private": c.private,
                    "theme": "default", "upvotes": 0, "isUpvotedByUser": False}

        def _collections(self, method: str, rest: str, user: str | None) -> None:
            if method == "POST" and not rest:  # create
                if user is None:
                    raise _HubError(401, "Invalid credentials in Authorization header")
                body = json.loads(self._request_body or b"{}")
                namespace = body.get("namespace") or user
                if namespace != user:
                    raise _HubError(403, f"You don't have the rights to create a collection in {namespace}")
                with hub.lock:
                    for c in hub.collections.values():
                        if c.namespace == namespace and c.title == body["title"]:
                            raise _HubError(409, "A collection with this title already exists", extra={"slug": c.slug})
                    oid = _object_id(f"collection:{namespace}/{body['title']}")
                    slug = f"{namespace}/{re.sub(r'[^a-z0-9]+', '-', body['title'].lower()).strip('-')}-{oid}"
                    c = hub.collections[slug] = _Collection(slug, body["title"], namespace, bool(body.get("private")),
                                                            body.get("description"), oid)
                    return self._send(200, self._collection_json(c, user))
            m = re.match(r"^([^/]+/[^/]+?)(/items)?$", rest)
            with hub.lock:
                c = hub.collections.get(m.group(1)) if m else None
                if c is None or (c.private and user != c.namespace):
                    raise _HubError(404, "Collection not found")
                if method == "GET" and not m.group(2):
                    return self._send(200, self._collection_json(c, user))
                if method == "POST" and m.group(2):
                    if user != c.namespace:
                        raise _HubError(401 if user is None else 403,
                                        "You don't have the rights to edit this collection")
                    body = json.loads(self._request_body or b"{}")
                    item_id, item_type = body["item"]["id"], body["item"]["type"]
                    if item_type in ("model", "dataset", "space"):
                        hub._repo(item_type, item_id, user)
                    if any(i["id"] == item_id and i["type"] == item_type for i in c.items):
                        raise _HubError(409, "Item already in the collection")
                    entry: dict[str, Any] = {"_id": _object_id(f"{c.slug}:{item_type}:{item_id}"), "id": item_id,
                                             "type": item_type, "position": len(c.items)}
                    if body.get("note"):
                        entry["note"] = {"html": body["note"], "text": body["note"]}
                    c.items.append(entry)
                    c.updated = time.time()
                    return self._send(200, self._collection_json(c, user))
            raise _HubError(404, f"no route for {method} /api/collections/{rest}")

        # -- downloads --------------------------------------------------------------------------------------
        def _resolve_file(self, method: str, repo_type: str, repo_id: str, revision: str, path: str,
                          user: str | None) -> None:
            with hub.lock:
                repo = hub._repo(repo_type, repo_id, user)
                commit = hub._resolve(repo, revision)
            if repo.gated and user != repo_id.split("/")[0]:
                raise _HubError(401 if user is None else 403, f"Access to model {repo_id} is restricted. You must "
                                "have access to it and be authenticated to access it. Please log in.", "GatedRepo")
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


_EXPANDABLE = {"author", "baseModels", "cardData", "config", "createdAt", "disabled", "downloads", "gated",
               "lastModified", "library_name", "likes", "pipeline_tag", "private", "sha", "siblings", "tags",
               "trendingScore"}
_PIPELINES = (("ForSequenceClassification", "text-classification"), ("ForImageClassification", "image-classification"),
              ("ForTokenClassification", "token-classification"), ("ForQuestionAnswering", "question-answering"),
              ("ForCausalLM", "text-generation"), ("ForMaskedLM", "fill-mask"))


def _commit_history(repo: _Repo, head: _Commit) -> list[dict[str, Any]]:
    """`GET /api/models/<repo>/commits/<rev>`: the commits reachable from `head`, newest first (one page)."""
    out, commit = [], head
    while commit is not None:
        title, _, body = commit.message.partition("\n")
        out.append({"id": commit.sha, "title": title, "message": body, "authors": [], "date": _iso(commit.date)})
        commit = repo.commits.get(commit.parent) if commit.parent else None
    return out


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(t))


def _object_id(key: str) -> str:
    """A stable 24-hex id, shaped like the Hub's MongoDB object ids."""
    return hashlib.sha1(key.encode()).hexdigest()[:24]


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    return [str(v) for v in (value if isinstance(value, list) else [value])]


def _derive_card(readme: bytes | None, config: bytes | None, files: list[str]) -> dict[str, Any]:
    """Card metadata, config summary, pipeline tag and tags, derived from a repo's files as the Hub does.

    `base_model: org/base` in the card gives the tags `base_model:org/base` and `base_model:<relation>:org/base`; the
    relation is the card's `base_model_relation`, else inferred from the files: `adapter` (adapter_config.json),
    `quantized` (GGUF), `merge` (several base models), otherwise `finetune`.
    """
    import yaml

    card: dict[str, Any] = {}
    text = (readme or b"").decode("utf-8", "replace")
    m = re.match(r"^\s*---\s*\n(.*?)\n---\s*(\n|$)", text, re.S)
    if m:
        try:
            loaded = yaml.safe_load(m.group(1))
            card = loaded if isinstance(loaded, dict) else {}
        except yaml.YAMLError:
            card = {}
    cfg: dict[str, Any] = {}
    try:
        loaded = json.loads(config) if config else {}
        cfg = loaded if isinstance(loaded, dict) else {}
    except ValueError:
        pass
    pipeline = card.get("pipeline_tag")
    if pipeline is None:
        for arch in cfg.get("architectures") or []:
            pipeline = next((tag for suffix, tag in _PIPELINES if str(arch).endswith(suffix)), None)
            if pipeline:
                break
    library = card.get("library_name") or ("transformers" if config is not None else None)
    tags: list[str] = []
    for t in [library, "safetensors" if any(f.endswith(".safetensors") for f in files) else None,
              cfg.get("model_type"), pipeline, *_as_list(card.get("tags"))]:
        if t and t not in tags:
            tags.append(str(t))
    bases = _as_list(card.get("base_model"))
    relation = card.get("base_model_relation") or (
        "adapter" if "adapter_config.json" in files else "quantized" if any(f.endswith(".gguf") for f in files)
        else "merge" if len(bases) > 1 else "finetune")
    for base in bases:
        tags += [f"base_model:{base}", f"base_model:{relation}:{base}"]
    tags += [f"dataset:{d}" for d in _as_list(card.get("datasets"))]
    tags += [f"license:{x}" for x in _as_list(card.get("license"))]
    tags += _as_list(card.get("language")) + ["region:us"]
    summary = {k: cfg[k] for k in ("architectures", "model_type") if k in cfg} if config is not None else None
    return {"cardData": card or None, "config": summary, "tags": tags, "pipeline_tag": pipeline,
            "library_name": library}


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
