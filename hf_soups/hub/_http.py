"""The Hub API requests hf_soups makes itself (listings, collections), held to two rules.

1. The user's token goes only to the endpoint's origin (scheme, host and port). A redirect or a listing's
   `Link: rel="next"` to another origin is refused with a [`HubConnectionError`] naming it; nothing is sent there.
2. Every request is bounded in time: a per-request limit (`HF_SOUPS_HUB_TIMEOUT`, connect to last byte), a total
   deadline for a whole listing (`HF_SOUPS_LISTING_DEADLINE`) and a page cap (`HF_SOUPS_LISTING_MAX_PAGES`); a page
   larger than `HF_SOUPS_LISTING_MAX_BYTES` is refused. A silent, trickling or endless endpoint ends in a
   [`HubConnectionError`] naming the endpoint, never a hang.

huggingface_hub's own pagination resends the token to whatever URL a `Link` header names, and its session has no
timeout, so hf_soups pages listings here; the requests still go through huggingface_hub's session and headers.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

from huggingface_hub import constants as hf_constants
from huggingface_hub import errors as hf_errors
from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

from .. import constants
from ..errors import HubConnectionError
from ..validation import mask_secrets
from ._transport import TransportError

__all__ = ["endpoint_url", "origin_of", "same_origin", "foreign_origin_error", "api_get_json", "paged_json",
           "Deadline", "MAX_REDIRECTS", "shown_url", "raise_for_status", "join_url"]

_RETRY_STATUS = (429, 500, 502, 503, 504)
MAX_REDIRECTS = 5
_ENDPOINT_FIX = ("check the endpoint (HF_ENDPOINT / endpoint=): a Hub or a mirror must serve every page and redirect "
                 "of its API from its own origin.")


def endpoint_url(endpoint: str | None) -> str:
    """The endpoint in use: `endpoint`, else huggingface_hub's (`HF_ENDPOINT`), without a trailing slash."""
    return (endpoint or hf_constants.ENDPOINT).rstrip("/")


def origin_of(url: str) -> tuple[str, str, int] | None:
    """`(scheme, host, port)` of `url`, the port made explicit; `None` when it cannot be parsed."""
    try:
        parts = urllib.parse.urlsplit(url)
        scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
        port = parts.port or {"http": 80, "https": 443}.get(scheme)
    except ValueError:  # a port out of range or not a number
        return None
    if scheme not in ("http", "https") or not host or port is None:
        return None
    return scheme, host, port


def same_origin(url: str, endpoint: str | None) -> bool:
    """Whether `url` has the endpoint's origin: same scheme, host and port (an https->http downgrade is not)."""
    mine = origin_of(endpoint_url(endpoint))
    return mine is not None and origin_of(url) == mine


def shown_url(url: str) -> str:
    text = mask_secrets(url) or url
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= 200 else text[:200] + "..."


def foreign_origin_error(what: str, kind: str, url: str, endpoint: str | None) -> HubConnectionError:
    """The error for a `kind` ("next page", "redirect") of `what` that leaves the endpoint's origin."""
    return HubConnectionError(
        f"{what}: the endpoint {shown_url(endpoint_url(endpoint))} sent a {kind} to another origin "
        f"({shown_url(url)}); refused, so that the token is never sent there.", fix=_ENDPOINT_FIX)


class Deadline:
    """A total time limit for several requests (one listing); `remaining()` never goes below zero.

    Args:
        seconds (`float`): the budget.
        what (`str`): what is being fetched, for the error.
        endpoint (`str`, *optional*): the endpoint, named in the error.
    """

    def __init__(self, seconds: float, what: str, endpoint: str | None) -> None:
        self.seconds = seconds
        self.what = what
        self.endpoint = endpoint
        self.end = time.monotonic() + seconds

    def remaining(self) -> float:
        return max(0.0, self.end - time.monotonic())

    def expired(self, detail: str) -> HubConnectionError:
        return HubConnectionError(
            f"{self.what}: the endpoint {shown_url(endpoint_url(self.endpoint))} {detail}.",
            fix="check the network and the endpoint (HF_ENDPOINT / endpoint=); HF_SOUPS_HUB_TIMEOUT, "
                "HF_SOUPS_LISTING_DEADLINE and HF_SOUPS_LISTING_MAX_PAGES set the limits.")


def _get_once(url: str, params: Any, headers: dict[str, str], limit: float, deadline: Deadline) -> Any:
    """One GET, redirects not followed, the body read in full within `limit` seconds (connect to last byte).

    The request runs in a daemon thread so that a server trickling its headers cannot hold the caller past `limit`;
    the thread stops reading at the next chunk once the limit has passed.
    """
    import httpx2 as httpx

    box: dict[str, Any] = {}
    stop = threading.Event()
    max_bytes = constants.LISTING_MAX_BYTES

    def work() -> None:
        try:
            timeout = httpx.Timeout(max(limit, 0.001))
            with get_session().stream("GET", url, params=params, headers=headers, follow_redirects=False,
                                      timeout=timeout) as r:
                body = bytearray()
                for chunk in r.iter_bytes():
                    body += chunk
                    if stop.is_set():
                        return
                    if len(body) > max_bytes:
                        box["error"] = deadline.expired(f"sent a page larger than {max_bytes} bytes "
                                                        "(HF_SOUPS_LISTING_MAX_BYTES)")
                        return
                box["response"] = httpx.Response(r.status_code, headers=r.headers, content=bytes(body),
                                                 request=r.request)
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            box["error"] = e

    thread = threading.Thread(target=work, name="hf-soups-hub-get", daemon=True)
    thread.start()
    thread.join(limit)
    if thread.is_alive():
        stop.set()
        raise TimeoutError(f"no complete answer within {limit:.1f} s")
    if "error" in box:
        raise box["error"]
    return box["response"]


def api_get_json(url: str, *, params: Any = None, token: str | bool | None, endpoint: str | None, what: str,
                 deadline: Deadline) -> tuple[Any, str | None]:
    """GET one API route of the endpoint and parse its JSON; returns `(json, next_url)`.

    Same-origin redirects are followed (at most 5); answers 429 and 5xx, dropped connections and timeouts are
    retried (`HF_SOUPS_HTTP_RETRIES`, backing off from `HF_SOUPS_HTTP_BACKOFF`) within the deadline.

    Raises:
        [`HubConnectionError`]: `url`, a redirect or the next page is on another origin (nothing is sent there),
            the endpoint did not answer in time, or the answer is not JSON.
        `huggingface_hub.errors.HfHubHTTPError`: any other HTTP error (mapped by `hub_errors`).
    """
    if not same_origin(url, endpoint):
        raise foreign_origin_error(what, "request", url, endpoint)
    headers = build_hf_headers(token=token)
    tries = max(constants.HTTP_RETRIES, 0) + 1
    wait = constants.HTTP_BACKOFF
    redirects = 0
    attempt = 0
    while True:
        left = deadline.remaining()
        if left <= 0:
            raise deadline.expired(f"did not finish within {deadline.seconds:g} s (HF_SOUPS_LISTING_DEADLINE)")
        limit = min(constants.HUB_TIMEOUT, left)
        attempt += 1
        try:
            response = _get_once(url, params, headers, limit, deadline)
        except hf_errors.OfflineModeIsEnabled:
            raise HubConnectionError(f"{what}: HF_HUB_OFFLINE is set, so the endpoint cannot be asked.",
                                     fix="unset HF_HUB_OFFLINE to search the Hub.") from None
        except (TransportError, TimeoutError) as e:
            if attempt >= tries:
                raise deadline.expired(f"did not answer ({type(e).__name__}: {str(e)[:200]}) after {attempt} "
                                       "tries") from None
        else:
            if response.is_redirect and response.headers.get("location") is not None:
                target = join_url(response, response.headers["location"])
                if not same_origin(target, endpoint):
                    raise foreign_origin_error(what, "redirect", target, endpoint)
                redirects += 1
                if redirects > MAX_REDIRECTS:
                    raise deadline.expired(f"redirected more than {MAX_REDIRECTS} times")
                url, params, attempt = target, None, 0
                continue
            if response.status_code not in _RETRY_STATUS or attempt >= tries:
                raise_for_status(response)
                try:
                    data = json.loads(response.content)
                except (ValueError, UnicodeDecodeError):
                    raise deadline.expired("answered with a page that is not JSON") from None
                return data, _next_link(response, what, endpoint)
        time.sleep(min(wait, deadline.remaining()))
        wait = min(wait * 2, 8.0)


def join_url(response: Any, location: str) -> str:
    """`location` (a redirect's or a next page's) made absolute against the answer's URL; an unparsable one is
    returned as written (it then has no origin, so it is refused)."""
    try:
        return str(response.url.join(location))
    except Exception:  # noqa: BLE001 - httpx's InvalidURL and friends
        return str(location)


def raise_for_status(response: Any) -> None:
    """huggingface_hub's `hf_raise_for_status`, also when the error body is malformed (it reads `null` as a dict):
    an error answer always raises an `HfHubHTTPError` carrying the status, never an `AttributeError`."""
    try:
        hf_raise_for_status(response)
    except hf_errors.HfHubHTTPError:
        raise
    except Exception:  # noqa: BLE001 - a malformed error body: keep the status, drop the body
        raise hf_errors.HfHubHTTPError(f"HTTP {response.status_code} (the error body could not be read)",
                                       response=response) from None


def _next_link(response: Any, what: str, endpoint: str | None) -> str | None:
    """The `Link: rel="next"` URL, made absolute; refused when it leaves the endpoint's origin."""
    try:
        link = response.links.get("next", {}).get("url")
    except Exception:  # noqa: BLE001 - a malformed Link header ends the listing as having no next page
        return None
    if not link:
        return None
    target = join_url(response, link)
    if not same_origin(target, endpoint):
        raise foreign_origin_error(what, "next page", target, endpoint)
    return target


def paged_json(url: str, *, params: Any, token: str | bool | None, endpoint: str | None,
               what: str) -> Iterator[list[Any]]:
    """Every page of a listing route, following `Link: rel="next"` on the endpoint's origin only.

    Bounded by `HF_SOUPS_LISTING_MAX_PAGES` pages and `HF_SOUPS_LISTING_DEADLINE` seconds in all; the caller stops
    early by not asking for the next page.

    Raises:
        [`HubConnectionError`]: a page is not a JSON list, a next page or redirect leaves the origin, or a limit
            was reached (the message names the endpoint).
    """
    deadline = Deadline(constants.LISTING_DEADLINE, what, endpoint)
    pages = 0
    next_url: str | None = url
    while next_url is not None:
        if pages >= constants.LISTING_MAX_PAGES:
            raise deadline.expired(f"still had more pages after {pages} (HF_SOUPS_LISTING_MAX_PAGES)")
        page, next_url = api_get_json(next_url, params=params if pages == 0 else None, token=token,
                                      endpoint=endpoint, what=what, deadline=deadline)
        pages += 1
        if not isinstance(page, list):
            raise deadline.expired(f"answered with a {type(page).__name__} where a list of models was expected")
        yield page
