"""The model listing: `GET /api/models` with filters, sort, expand and cursor pages."""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import urlencode

from .records import _Repo, _HubError, _EXPANDABLE, _iso, _object_id

__all__ = ["ListingRoutes"]


class ListingRoutes:
    """`GET /api/models` (`filter`, `author`, `search`, `pipeline_tag`, `sort`, `limit`, `expand`, `full`, `cursor`)."""

    hub: Any  # the LoopbackHub served (set on the composed handler class)

    def _model_entry(self, repo: _Repo, fields: set[str] | None) -> dict[str, Any]:
        """One model as `GET /api/models` returns it: the default fields, or `_id`, `id` and the expanded ones."""
        card = self.hub._card(repo)
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
        with self.hub.lock:
            if self.hub.rate_limit_listings > 0:
                self.hub.rate_limit_listings -= 1
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
        with self.hub.lock:
            repos = [r for (t, _), r in self.hub.repos.items() if t == "model" and "main" in r.branches
                     and (not r.private or r.repo_id.split("/")[0] == user)]
            rows = []
            for repo in repos:
                card = self.hub._card(repo)
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
            size = min(int(one["limit"]), self.hub.page_size) if one.get("limit") else self.hub.page_size
            page = [self._model_entry(r, fields) for r in rows[offset:offset + size]]
        headers = {}
        if offset + size < len(rows):
            cursor = base64.urlsafe_b64encode(json.dumps({"offset": offset + size}).encode()).decode()
            params = [(k, v) for k, vs in query.items() if k != "cursor" for v in vs] + [("cursor", cursor)]
            headers["Link"] = f'<{self.hub.url}/api/models?{urlencode(params)}>; rel="next"'
        self._send(200, page, headers)
