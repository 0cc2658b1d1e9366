"""File routes: trees, paths-info and downloads (`/resolve/`, HTTP ranges, injected range faults)."""

from __future__ import annotations

import json
import re
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .records import _File, _Repo, _HubError

__all__ = ["FileRoutes"]


class FileRoutes:
    """`GET .../tree/<rev>/<path>`, `POST .../paths-info/<rev>`, `GET|HEAD /<repo>/resolve/<rev>/<path>`."""

    hub: Any  # the LoopbackHub served (set on the composed handler class)

    def _tree_entry(self, path: str, f: _File) -> dict[str, Any]:
        entry: dict[str, Any] = {"type": "file", "path": path, "size": f.size, "oid": f.blob_id}
        if f.lfs:
            entry["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": 134}
        return entry

    def _tree(self, repo: _Repo, revision: str, sub: str) -> None:
        commit = self.hub._resolve(repo, revision)
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
        commit = self.hub._resolve(repo, revision)
        body = self._request_body.decode()
        try:
            paths = json.loads(body).get("paths", [])
        except ValueError:
            paths = parse_qs(body).get("paths", [])
        self._send(200, [self._tree_entry(p, commit.files[p]) for p in paths if p in commit.files])

    def _resolve_file(self, method: str, repo_type: str, repo_id: str, revision: str, path: str,
                      user: str | None) -> None:
        with self.hub.lock:
            repo = self.hub._repo(repo_type, repo_id, user)
            commit = self.hub._resolve(repo, revision)
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
            with self.hub.lock:
                self.hub.requests.append((method, self.path, status))
            return
        with open(self.hub._blob_path(f.sha256), "rb") as fh:
            fh.seek(start)
            data = fh.read(length)
        with self.hub.lock:
            self.hub.bytes_served[repo_id] += len(data)
        self._send(status, raw=data, headers=headers)

    def _inject_range_fault(self, headers: dict[str, str], status: int, length: int, f: _File, start: int) -> bool:
        """Failure injection for ranged reads; returns True when the request was answered (badly) here."""
        with self.hub.lock:
            fail, drop, stall = self.hub.fail_ranges > 0, self.hub.drop_ranges > 0, self.hub.stall_ranges > 0
            self.hub.fail_ranges -= fail
            self.hub.drop_ranges -= drop and not fail
            self.hub.stall_ranges -= stall and not (fail or drop)
        if fail:
            self._error(_HubError(503, "Service Unavailable - injected range failure"))
            return True
        if drop:
            with open(self.hub._blob_path(f.sha256), "rb") as fh:
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
            with self.hub.lock:
                self.hub.requests.append(("GET", self.path, -status))  # negative: the body was cut
            return True
        if stall:
            time.sleep(self.hub.stall_seconds)
        return False
