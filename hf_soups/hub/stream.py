"""Read ingredient weights straight from the Hub with HTTP range requests: no local copy of the ingredient."""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from huggingface_hub import get_hf_file_metadata, hf_hub_url
from huggingface_hub.utils import build_hf_headers, get_session

from .. import constants
from ..checkpoint.format import TensorInfo, parse_header
from ..checkpoint.layout import FULL_MODEL, SAFETENSORS_SINGLE, Layout
from ..checkpoint.reader import SafetensorsReader, read_shard_index
from ..errors import CorruptCheckpointError, HubConnectionError
from ..refs import Ingredient
from ._errors import TransportError, hub_errors
from ._http import MAX_REDIRECTS, join_url, origin_of, raise_for_status, shown_url

__all__ = ["HttpRangeSource", "open_streaming_reader", "read_remote_header"]

logger = logging.getLogger(__name__)

#: Answers worth retrying, as huggingface_hub's `http_backoff` does for downloads.
_RETRY_STATUS = (408, 429, 500, 502, 503, 504)
#: huggingface_hub fetches the first 100 kB for a header: most headers fit, so one request is enough.
_HEADER_WINDOW = 100_000


class HttpRangeSource:
    """A [`ByteSource`] over one file on the Hub, fetched by byte ranges through huggingface_hub's HTTP session.

    Small consecutive reads are served from one read-ahead window (`HF_SOUPS_STREAM_CHUNK_SIZE`, default 32 MB),
    so headers, biases and norms do not cost one request each.
    """

    def __init__(self, url: str, size: int, name: str, token: str | bool | None = None,
                 window: int | None = None, ingredient: str | None = None) -> None:
        self.url = url
        self.size = size
        self.name = name
        self.ingredient = ingredient
        self._token_given = bool(token)
        self._headers = build_hf_headers(token=token)
        self._headers["Accept-Encoding"] = "identity"
        self._window = window if window is not None else constants.STREAM_CHUNK_SIZE
        self._cache_start = 0
        self._cache = b""
        self._lock = threading.Lock()
        self.bytes_fetched = 0

    def _fetch(self, offset: int, length: int) -> bytes:
        """One range read, retried with exponential backoff on 5xx/429/408, dropped connections, short bodies and
        timeouts (a range read is idempotent); other HTTP errors map to hf_soups errors at once.

        Raises:
            [`HubConnectionError`]: the retries are exhausted; names the ingredient, the file and the byte range.
        """
        end = min(offset + length, self.size) - 1
        if end < offset:
            return b""
        expected = end - offset + 1
        tries = max(constants.HTTP_RETRIES, 0) + 1
        wait = constants.HTTP_BACKOFF
        why = ""
        for attempt in range(1, tries + 1):
            try:
                response = self._get({**self._headers, "Range": f"bytes={offset}-{end}"})
            except TransportError as e:  # refused, reset, closed mid-body, timed out
                why = f"{type(e).__name__}: {str(e)[:200]}"
            else:
                if response.status_code in _RETRY_STATUS:
                    why = f"HTTP {response.status_code}"
                elif response.status_code not in (200, 206):
                    with hub_errors(self.ingredient or self.name, token_given=self._token_given):
                        raise_for_status(response)
                    why = f"unexpected HTTP {response.status_code}"
                    break
                else:
                    data = response.content
                    if response.status_code == 200:  # the server ignored the range
                        data = data[offset : end + 1]
                    if len(data) == expected:
                        self.bytes_fetched += len(data)
                        return data
                    why = f"got {len(data)} of {expected} bytes"
            if attempt < tries:
                logger.warning("Range read of '%s' (bytes %d-%d) failed (%s); retry %d/%d in %.1fs.", self.name,
                               offset, end, why, attempt, tries - 1, wait)
                time.sleep(wait)
                wait = min(wait * 2, 8.0)
        raise HubConnectionError(
            f"reading bytes {offset}-{end} from the Hub failed after {attempt} tries ({why}).",
            ingredient=self.ingredient, file=self.name,
            fix="check the network and the Hub's status, then run again (HF_SOUPS_HTTP_RETRIES sets the retries).",
        )

    def _get(self, headers: dict[str, str]) -> Any:
        """One GET of the file, redirects followed by hand: the token (and cookies) go to the file URL's origin only;
        once a redirect leaves it (the Hub's CDN), the rest of the chain goes without them.

        Raises:
            [`HubConnectionError`]: more than 5 redirects, or one to a URL that is not http(s).
        """
        url, home = self.url, origin_of(self.url)
        for _ in range(MAX_REDIRECTS + 1):
            response = get_session().get(url, headers=headers, follow_redirects=False, timeout=constants.HTTP_TIMEOUT)
            if not (response.is_redirect and response.headers.get("location")):
                return response
            url = join_url(response, response.headers["location"])
            where = origin_of(url)
            if where is None:
                raise HubConnectionError(f"a range read was redirected to {shown_url(url)}, not an http(s) URL.",
                                         ingredient=self.ingredient, file=self.name,
                                         fix="check the endpoint (HF_ENDPOINT / endpoint=).")
            if where != home:
                headers = {k: v for k, v in headers.items() if k.lower() not in ("authorization", "cookie")}
        raise HubConnectionError(f"a range read was redirected more than {MAX_REDIRECTS} times.",
                                 ingredient=self.ingredient, file=self.name,
                                 fix="check the endpoint (HF_ENDPOINT / endpoint=).")

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


def _pinned(ing: Ingredient) -> tuple[str, str]:
    """The repo id and pinned sha of a Hub ingredient; streaming anything else is a bug reported as such."""
    if ing.repo_id is None or ing.revision is None:
        raise CorruptCheckpointError("only a Hub ingredient pinned to a commit can be streamed.", ingredient=ing.name,
                                     fix="report this bug; resolve the ingredient before streaming it.")
    return ing.repo_id, ing.revision


def open_streaming_reader(ing: Ingredient, *, token: str | bool | None = None, endpoint: str | None = None,
                          snapshot_dir: str | None = None, window: int | None = None,
                          layout: Layout = FULL_MODEL) -> SafetensorsReader:
    """Open an ingredient's safetensors weights over HTTP ranges, pinned to its resolved sha.

    Args:
        ing ([`Ingredient`]): a resolved Hub ingredient.
        snapshot_dir (`str`, *optional*): a local snapshot holding its small files (the index, when sharded).
        window (`int`, *optional*): read-ahead window in bytes (defaults to `HF_SOUPS_STREAM_CHUNK_SIZE`); `1` reads
            exactly the bytes asked for (a few sampled tensors).
        layout ([`Layout`], *optional*): which files hold the weights (defaults to the full-model layout).

    Raises:
        [`CorruptCheckpointError`], [`UnsafeCheckpointError`], [`AuthenticationError`].
    """
    repo_id, revision = _pinned(ing)
    weight_map = None
    found = layout.find(ing.files)
    if found is not None and found.index and not found.pickled:
        if snapshot_dir is None or not os.path.isfile(os.path.join(snapshot_dir, found.file)):
            raise CorruptCheckpointError("the shard index was not downloaded.", ingredient=ing.name, file=found.file)
        weight_map, files = read_shard_index(snapshot_dir, ing.name, found.file)
    else:  # streaming reads safetensors only: a missing file is named by the request that fails
        files = [layout.safetensors or SAFETENSORS_SINGLE]
    sources = {}
    with hub_errors(ing.name, token_given=bool(token), token=token):
        for file in files:
            url = hf_hub_url(repo_id, file, revision=revision, endpoint=endpoint)
            meta = get_hf_file_metadata(url, token=token)
            sources[file] = HttpRangeSource(url, int(meta.size or 0), file, token=token, ingredient=ing.name,
                                            window=window)
        return SafetensorsReader(sources, weight_map, ing.name)


def read_remote_header(ing: Ingredient, file: str, *, token: str | bool | None = None,
                       endpoint: str | None = None) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Read and validate one safetensors header on the Hub with range requests (usually one, of 100 kB).

    The header goes through the same [`parse_header`] as local files, against the file's real size, so the
    preflight refuses exactly what the soup would refuse (overlapping or past-the-end offsets, bad shapes, ...).

    Raises:
        [`CorruptCheckpointError`], [`HubConnectionError`], [`AuthenticationError`], [`IngredientNotFoundError`].
    """
    repo_id, revision = _pinned(ing)
    with hub_errors(ing.name, token_given=bool(token)):
        url = hf_hub_url(repo_id, file, revision=revision, endpoint=endpoint)
        size = ing.sizes.get(file)
        if size is None:
            size = get_hf_file_metadata(url, token=token).size
        source = HttpRangeSource(url, int(size or 0), file, token=token, window=_HEADER_WINDOW, ingredient=ing.name)
        return parse_header(source.read, source.size, file, ing.name)
