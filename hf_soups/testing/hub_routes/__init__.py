"""The loopback Hub's HTTP routes, one module per area, composed into one request handler class.

- `base`: reading requests, answering, errors, and the dispatcher (`_route`, `_api`);
- `models`: repo creation, info, tags, branches, settings;
- `files`: trees, paths-info, downloads with ranges and injected range faults;
- `upload`: preupload, LFS batch and object PUTs, commits;
- `listing`: `GET /api/models`;
- `collections`: `/api/collections`;
- `records`: the stored records, the error type and the helpers the routes share.
"""

from __future__ import annotations

from typing import Any

from .base import BaseHandler
from .collections import CollectionRoutes
from .files import FileRoutes
from .listing import ListingRoutes
from .models import ModelRoutes
from .upload import UploadRoutes

__all__ = ["make_handler"]


def make_handler(hub: Any) -> type[BaseHandler]:
    """The request handler class serving `hub` (a [`LoopbackHub`]): the route mixins over [`BaseHandler`]."""
    return type("Handler", (ModelRoutes, FileRoutes, UploadRoutes, ListingRoutes, CollectionRoutes, BaseHandler),
                {"hub": hub})
