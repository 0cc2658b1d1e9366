"""`HubAccess`: how to reach the Hub (endpoint, token, cache), one frozen value handed through the flow instead of
three keywords threaded through every call."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..checkpoint.reader import CheckpointReader
    from ..refs import Ingredient, IngredientMeta, IngredientRef

__all__ = ["HubAccess"]


@dataclass(frozen=True)
class HubAccess:
    """The Hub endpoint, token and cache directory of one run.

    The token is never shown: it is left out of `repr` and of comparisons.

    Attributes:
        endpoint (`str`, *optional*): the Hub endpoint (`None`: `HF_ENDPOINT` or huggingface.co).
        token (`str` or `bool`, *optional*): a Hub token, `False` for none, `None` for the saved login / `HF_TOKEN`.
        cache_dir (`str`, *optional*): the huggingface_hub cache directory (`None`: the default cache).
    """

    endpoint: str | None = None
    token: str | bool | None = field(default=None, repr=False, compare=False)
    cache_dir: str | None = None

    @classmethod
    def from_args(cls, *, endpoint: str | None = None, token: str | bool | None = None,
                  cache_dir: str | os.PathLike[str] | None = None) -> HubAccess:
        """The access of a call's `endpoint=`, `token=` and `cache_dir=` arguments (a path-like cache as a string).

        Args:
            endpoint (`str`, *optional*): the Hub endpoint.
            token (`str` or `bool`, *optional*): a Hub token.
            cache_dir (`str` or `os.PathLike`, *optional*): the cache directory.

        Returns:
            [`HubAccess`]
        """
        return cls(endpoint=endpoint, token=token, cache_dir=None if cache_dir is None else os.fspath(cache_dir))

    @property
    def kwargs(self) -> dict[str, Any]:
        """`{"token": ..., "endpoint": ..., "cache_dir": ...}`, for the functions that still take the three."""
        return {"token": self.token, "endpoint": self.endpoint, "cache_dir": self.cache_dir}

    def resolve(self, ref: IngredientRef) -> Ingredient:
        """[`hf_soups.hub.resolve`] with this access: `ref` pinned to a commit sha."""
        from .client import resolve

        return resolve(ref, **self.kwargs)

    def fetch_meta(self, ing: Ingredient, *, allow_pickle: bool = False) -> IngredientMeta:
        """[`hf_soups.hub.fetch_meta`] with this access: config, card and headers only."""
        from .client import fetch_meta

        return fetch_meta(ing, allow_pickle=allow_pickle, **self.kwargs)

    def download(self, ing: Ingredient, *, weights: bool = True, allow_pickle: bool = False) -> str:
        """[`hf_soups.hub.download`] with this access; returns the snapshot directory."""
        from .client import download

        return download(ing, weights=weights, allow_pickle=allow_pickle, **self.kwargs)

    def open_stream(self, ing: Ingredient, *, snapshot_dir: str | None = None,
                    window: int | None = None) -> CheckpointReader:
        """[`hf_soups.hub.open_streaming_reader`] with this access (HTTP range reads of the pinned weights)."""
        from .stream import open_streaming_reader

        return open_streaming_reader(ing, token=self.token, endpoint=self.endpoint, snapshot_dir=snapshot_dir,
                                     window=window)
