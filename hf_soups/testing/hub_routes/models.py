"""Repo routes: create a repo, its info at a revision, tags, branches and settings."""

from __future__ import annotations

import json
import time
from typing import Any

from .records import _File, _Repo, _HubError

__all__ = ["ModelRoutes"]


class ModelRoutes:
    """`POST /api/repos/create`, `GET /api/models/<repo>[/revision/<rev>]`, tags, branches, settings."""

    hub: Any  # the LoopbackHub served (set on the composed handler class)

    def _create_repo(self, user: str | None) -> None:
        if user is None:
            raise _HubError(401, "Invalid credentials in Authorization header")
        body = json.loads(self._request_body or b"{}")
        repo_type = body.get("type") or "model"
        name = body["name"]
        repo_id = f"{body.get('organization') or user}/{name}"
        if repo_id.split("/")[0] != user:
            raise _HubError(403, "You don't have the rights to create a repo in this namespace")
        url = f"{self.hub.url}/{'' if repo_type == 'model' else repo_type + 's/'}{repo_id}"
        with self.hub.lock:
            if (repo_type, repo_id) in self.hub.repos:
                raise _HubError(409, "You already created this model repo", extra={"url": url})
            private = body.get("visibility") == "private" if "visibility" in body else bool(body.get("private"))
            repo = _Repo(repo_id, repo_type, private)
            self.hub._new_commit(repo, "main", {}, None, "initial commit")
            self.hub.repos[(repo_type, repo_id)] = repo
        self._send(200, {"url": url, "name": repo_id, "id": repo_id})

    def _sibling(self, path: str, f: _File) -> dict[str, Any]:
        entry: dict[str, Any] = {"rfilename": path, "size": f.size, "blobId": f.blob_id}
        if f.lfs:
            entry["lfs"] = {"sha256": f.sha256, "size": f.size, "pointerSize": 134}
        return entry

    def _info(self, repo: _Repo, revision: str) -> None:
        commit = self.hub._resolve(repo, revision)
        files = sorted(commit.files.items())
        self._send(200, {
            "_id": repo.repo_id, "id": repo.repo_id, "modelId": repo.repo_id, "author": repo.repo_id.split("/")[0],
            "sha": commit.sha, "private": repo.private, "disabled": False, "gated": repo.gated, "downloads": 0,
            "likes": 0, "tags": self.hub._card(repo)["tags"], "library_name": self.hub._card(repo)["library_name"],
            "pipeline_tag": self.hub._card(repo)["pipeline_tag"], "cardData": self.hub._card(repo)["cardData"],
            "lastModified": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(commit.date)),
            "siblings": [self._sibling(p, f) for p, f in files],
        })

    def _tag(self, repo: _Repo, revision: str) -> None:
        body = json.loads(self._request_body or b"{}")
        with self.hub.lock:
            commit = self.hub._resolve(repo, revision)
            if body["tag"] in repo.tags:
                raise _HubError(409, f"Tag {body['tag']} already exists")
            repo.tags[body["tag"]] = commit.sha
        self._send(200, {})

    def _branch(self, repo: _Repo, branch: str) -> None:
        body = json.loads(self._request_body or b"{}")
        with self.hub.lock:
            if branch in repo.branches:
                raise _HubError(409, f"Branch {branch} already exists")
            start = self.hub._resolve(repo, body.get("startingPoint") or "main")
            repo.branches[branch] = start.sha
        self._send(200, {})

    def _settings(self, repo: _Repo) -> None:
        body = json.loads(self._request_body or b"{}")
        with self.hub.lock:
            if "gated" in body:
                if body["gated"] not in ("auto", "manual", False):
                    raise _HubError(400, "gated must be 'auto', 'manual' or false")
                repo.gated = body["gated"]
            if "visibility" in body or "private" in body:
                repo.private = (body.get("visibility") == "private" if "visibility" in body
                                else bool(body["private"]))
        self._send(200, {})
