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

import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
from collections import defaultdict
from http.server import ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

from .hub_routes import make_handler
from .hub_routes.records import _SHA_RE, _Collection, _Commit, _derive_card, _File, _HubError, _Repo

from ..atomic_file import write_atomic

__all__ = ["LoopbackHub"]


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
        self._server = ThreadingHTTPServer(("127.0.0.1", port), make_handler(self))
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
