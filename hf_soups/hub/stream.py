"""Read ingredient weights straight from the Hub with HTTP range requests: no local copy of the ingredient."""

from __future__ import annotations

import os
import threading

from huggingface_hub import get_hf_file_metadata, hf_hub_url
from huggingface_hub.utils import build_hf_headers, get_session

from .. import constants
from ..checkpoint.reader import SAFETENSORS_INDEX, SafetensorsReader, load_weight_map, safe_join
from ..errors import CorruptCheckpointError
from ..refs import Ingredient
from ._errors import hub_errors

__all__ = ["HttpRangeSource", "open_streaming_reader"]


class HttpRangeSource:
    """A [`ByteSource`] over one file on the Hub, fetched by byte ranges through huggingface_hub's HTTP session.

    Small consecutive reads are served from one read-ahead window (`HF_SOUPS_STREAM_CHUNK_SIZE`, default 32 MB),
    so headers, biases and norms do not cost one request each.
    """

    def __init__(self, url: str, size: int, name: str, token: str | bool | None = None,
                 window: int | None = None) -> None:
        self.url = url
        self.size = size
        self.name = name
        self._headers = build_hf_headers(token=token)
        self._headers["Accept-Encoding"] = "identity"
        self._window = window if window is not None else constants.STREAM_CHUNK_SIZE
        self._cache_start = 0
        self._cache = b""
        self._lock = threading.Lock()
        self.bytes_fetched = 0

    def _fetch(self, offset: int, length: int) -> bytes:
        end = min(offset + length, self.size) - 1
        if end < offset:
            return b""
        response = get_session().get(self.url, headers={**self._headers, "Range": f"bytes={offset}-{end}"},
                                     follow_redirects=True)
        if response.status_code not in (200, 206):
            response.raise_for_status()
        data = response.content
        if response.status_code == 200:  # server ignored the range
            data = data[offset : end + 1]
        self.bytes_fetched += len(data)
        return data

    def read(self, offset: int, length: int) -> bytes:
        with self._lock:
            start, cache = self._cache_start, self._cache
            if start <= offset and offset + length <= start + len(cache):
                return cache[offset - start : offset - start + length]
        if length >= self._window:
            return self._fetch(offset, length)
        data = self._fetch(offset, self._window)
        with self._lock:
            self._cache_start, self._cache = offset, data
        return data[:length]

    def readinto(self, offset: int, buffer: memoryview) -> int:
        view = buffer.cast("B") if buffer.format != "B" else buffer
        data = self.read(offset, len(view))
        view[: len(data)] = data
        return len(data)

    def close(self) -> None:
        with self._lock:
            self._cache = b""


def open_streaming_reader(ing: Ingredient, *, token: str | bool | None = None, endpoint: str | None = None,
                          snapshot_dir: str | None = None) -> SafetensorsReader:
    """Open an ingredient's safetensors weights over HTTP ranges, pinned to its resolved sha.

    Args:
        ing ([`Ingredient`]): a resolved Hub ingredient.
        snapshot_dir (`str`, *optional*): a local snapshot holding its small files (the index, when sharded).

    Raises:
        [`CorruptCheckpointError`], [`UnsafeCheckpointError`], [`AuthenticationError`].
    """
    assert ing.repo_id is not None and ing.revision is not None
    weight_map = None
    if SAFETENSORS_INDEX in ing.files:
        if snapshot_dir is None or not os.path.isfile(os.path.join(snapshot_dir, SAFETENSORS_INDEX)):
            raise CorruptCheckpointError("the shard index was not downloaded.", ingredient=ing.name,
                                         file=SAFETENSORS_INDEX)
        weight_map = load_weight_map(os.path.join(snapshot_dir, SAFETENSORS_INDEX), ing.name)
        files = sorted(set(weight_map.values()))
        for file in files:
            safe_join(snapshot_dir, file, ing.name, SAFETENSORS_INDEX)
    else:
        files = ["model.safetensors"]
    sources = {}
    with hub_errors(ing.name, token_given=bool(token)):
        for file in files:
            url = hf_hub_url(ing.repo_id, file, revision=ing.revision, endpoint=endpoint)
            meta = get_hf_file_metadata(url, token=token)
            sources[file] = HttpRangeSource(url, int(meta.size or 0), file, token=token)
        return SafetensorsReader(sources, weight_map, ing.name)
