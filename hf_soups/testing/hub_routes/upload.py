"""Upload routes: preupload, the LFS batch API and object PUTs, and commits (with injected failures)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from typing import Any
from urllib.parse import unquote

from .records import _LFS_SUFFIXES, _LFS_THRESHOLD, _Repo, _HubError

__all__ = ["UploadRoutes"]


class UploadRoutes:
    """`POST .../preupload/<rev>`, `POST <repo>.git/info/lfs/objects/batch`, `PUT /__lfs/<oid>`,
    `POST .../commit/<rev>`."""

    hub: Any  # the LoopbackHub served (set on the composed handler class)

    def _preupload(self, repo: _Repo, revision: str) -> None:
        body = json.loads(self._request_body or b"{}")
        out = []
        for f in body.get("files", []):
            lfs = f["path"].endswith(_LFS_SUFFIXES) or int(f.get("size", 0)) >= _LFS_THRESHOLD
            out.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False})
        self._send(200, {"files": out, "commitOid": repo.branches.get(unquote(revision))})

    def _lfs_batch(self, repo_type: str, repo_id: str, user: str | None) -> None:
        with self.hub.lock:
            self.hub._repo(repo_type, repo_id, user, write=True)
        body = json.loads(self._request_body or b"{}")
        objects = []
        for obj in body.get("objects", []):
            entry: dict[str, Any] = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if not os.path.exists(self.hub._blob_path(obj["oid"])):
                entry["actions"] = {"upload": {"href": f"{self.hub.url}/__lfs/{obj['oid']}", "header": {}}}
            objects.append(entry)
        self._send(200, {"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
                   {"Content-Type": "application/vnd.git-lfs+json"})

    def _lfs_put(self, oid: str) -> None:
        data = self._request_body
        if hashlib.sha256(data).hexdigest() != oid:
            raise _HubError(400, "sha256 mismatch for uploaded LFS object")
        self.hub._store(data)
        self._send(200, {})

    def _commit(self, repo: _Repo, branch: str) -> None:
        branch = unquote(branch)
        with self.hub.lock:
            if self.hub.fail_commits > 0:
                self.hub.fail_commits -= 1
                raise _HubError(500, "Internal Error - injected commit failure")
        lines = [json.loads(line) for line in self._request_body.splitlines() if line.strip()]
        header = next((ln["value"] for ln in lines if ln.get("key") == "header"), {})
        with self.hub.lock:
            if branch not in repo.branches:
                raise _HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
            parent = repo.branches[branch]
            files = dict(repo.commits[parent].files)
            for ln in lines:
                key, value = ln.get("key"), ln.get("value", {})
                if key == "file":
                    data = base64.b64decode(value["content"]) if value.get("encoding") == "base64" \
                        else value["content"].encode()
                    files[value["path"]] = self.hub._store(data)
                elif key == "lfsFile":
                    blob = self.hub._blob_path(value["oid"])
                    if not os.path.exists(blob):
                        raise _HubError(400, f"LFS object {value['oid']} was never uploaded")
                    with open(blob, "rb") as f:
                        stored = self.hub._store(f.read())
                    stored.lfs = True
                    files[value["path"]] = stored
                elif key == "deletedFile":
                    files.pop(value["path"], None)
                elif key == "deletedFolder":
                    prefix = value["path"].rstrip("/") + "/"
                    files = {k: v for k, v in files.items() if not k.startswith(prefix)}
            commit = self.hub._new_commit(repo, branch, files, parent, header.get("summary", ""))
        prefix = "" if repo.repo_type == "model" else repo.repo_type + "s/"
        self._send(200, {"success": True, "commitOid": commit.sha,
                         "commitUrl": f"{self.hub.url}/{prefix}{repo.repo_id}/commit/{commit.sha}",
                         "pullRequestUrl": None})
