"""Collection routes: create, get and add items (`/api/collections`)."""

from __future__ import annotations

import json
import re
import time
from typing import Any

from .records import _Collection, _HubError, _iso, _object_id

__all__ = ["CollectionRoutes"]


class CollectionRoutes:
    """`POST /api/collections`, `GET /api/collections/<slug>`, `POST /api/collections/<slug>/items`."""

    hub: Any  # the LoopbackHub served (set on the composed handler class)

    def _collection_json(self, c: _Collection, user: str | None) -> dict[str, Any]:
        items = []
        for item in c.items:
            repo = self.hub.repos.get(("model", item["id"])) if item["type"] == "model" else None
            if repo is not None and repo.private and repo.repo_id.split("/")[0] != user:
                continue
            entry = dict(item)
            if repo is not None and "main" in repo.branches:
                card = self.hub._card(repo)
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
            with self.hub.lock:
                for c in self.hub.collections.values():
                    if c.namespace == namespace and c.title == body["title"]:
                        raise _HubError(409, "A collection with this title already exists", extra={"slug": c.slug})
                oid = _object_id(f"collection:{namespace}/{body['title']}")
                slug = f"{namespace}/{re.sub(r'[^a-z0-9]+', '-', body['title'].lower()).strip('-')}-{oid}"
                c = self.hub.collections[slug] = _Collection(slug, body["title"], namespace, bool(body.get("private")),
                                                        body.get("description"), oid)
                return self._send(200, self._collection_json(c, user))
        m = re.match(r"^([^/]+/[^/]+?)(/items)?$", rest)
        with self.hub.lock:
            c = self.hub.collections.get(m.group(1)) if m else None
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
                    self.hub._repo(item_type, item_id, user)
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
