"""Turn huggingface_hub's HTTP errors into hf_soups errors, once, at the boundary. Tokens never appear."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from huggingface_hub import errors as hf_errors

from ..errors import (
    AuthenticationError,
    HubConnectionError,
    IngredientNotFoundError,
    PushError,
    RevisionNotFoundError,
    SoupError,
)
from ._transport import TransportError

_NOT_FOUND_FIX = "check the repo id, e.g. 'user/model'."
_LOGIN_FIX = "pass token='hf_...' (or token=True to use the saved token), set HF_TOKEN, or run `hf auth login`."


def token_available(token: str | bool | None) -> bool:
    """Whether a request made with `token` carries one: an explicit token, or (for `None`/`True`) `HF_TOKEN` or the
    saved login, as huggingface_hub sends it."""
    if token is False:
        return False
    if isinstance(token, str):
        return bool(token)
    from huggingface_hub import constants as hf_constants
    from huggingface_hub import get_token

    if token is None and hf_constants.HF_HUB_DISABLE_IMPLICIT_TOKEN:
        return False
    return get_token() is not None


def _similar_repos(repo_id: str, token: Any, endpoint: str | None) -> list[str]:
    """Repo ids close to `repo_id` among those the Hub lists for its namespace and for the token's user (best effort:
    a Hub that cannot list them gives no suggestion)."""
    import difflib

    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint)
    namespace, _, name = repo_id.rpartition("/")
    owners = [namespace] if namespace else []
    candidates: list[str] = []
    try:
        user = api.whoami(token=token).get("name")
        if user and user not in owners:
            owners.append(user)
    except Exception:  # noqa: BLE001 - suggestions are optional
        pass
    from ._http import paged_json

    for owner in owners:  # paged on the endpoint's origin only, bounded in pages and time
        try:
            for page in paged_json(f"{api.endpoint.rstrip('/')}/api/models", params={"author": owner, "limit": 500},
                                   token=token, endpoint=endpoint, what=f"models of {owner}"):
                candidates += [m["id"] for m in page if isinstance(m, dict) and isinstance(m.get("id"), str)]
                if len(candidates) >= 500:
                    break
        except Exception:  # noqa: BLE001 - a Hub (or mirror) without listing
            continue
    candidates = [c for c in dict.fromkeys(candidates) if c != repo_id]
    close = difflib.get_close_matches(repo_id, candidates, n=3, cutoff=0.6)
    if not close and name:
        by_name = {c.rpartition("/")[2]: c for c in candidates}
        close = [by_name[n] for n in difflib.get_close_matches(name, list(by_name), n=3, cutoff=0.6)]
    return close


def _status(e: BaseException) -> int | None:
    response = getattr(e, "response", None)
    return getattr(response, "status_code", None)


@contextlib.contextmanager
def hub_errors(ingredient: str, *, token_given: bool, revision: str | None = None, push: bool = False,
               token: Any = None, endpoint: str | None = None) -> Iterator[None]:
    """Map huggingface_hub exceptions raised inside the block to [`SoupError`]s naming `ingredient`.

    With `push=True`, `ingredient` is the target repo id, and errors name it as the push target. A token counts as
    given when it is passed (`token_given`) or when huggingface_hub sends one from `HF_TOKEN` or the saved login;
    a missing repo is then "not found" (with the closest repo ids the Hub lists, when it can list them).
    """
    token_given = token_given or token_available(token)
    try:
        with _hub_errors(ingredient, token_given=token_given, revision=revision, push=push):
            yield
    except IngredientNotFoundError as e:
        if not push and token_given and e.fix == _NOT_FOUND_FIX:
            repo_id = ingredient.partition("@")[0]
            close = _similar_repos(repo_id, token, endpoint)
            if close:
                e.fix = "did you mean " + " or ".join(f"'{c}'" for c in close) + "? " + _NOT_FOUND_FIX
                e.args = (e._render(),)
        raise
    except SoupError as e:
        if push and e.ingredient == ingredient:
            raise _for_push(e, ingredient) from e.__cause__
        raise


@contextlib.contextmanager
def _hub_errors(ingredient: str, *, token_given: bool, revision: str | None = None, push: bool = False) -> Iterator[None]:
    """Map huggingface_hub exceptions raised inside the block to [`SoupError`]s naming `ingredient`.

    With `push=True`, `ingredient` is the target repo id, and errors name it as such.
    """
    try:
        yield
    except SoupError:
        raise
    except hf_errors.RevisionNotFoundError:
        raise RevisionNotFoundError(
            f"revision '{revision}' does not exist.", ingredient=ingredient,
            fix="check the branch, tag or commit sha (see the repo's 'Files and versions' tab).",
        ) from None
    except hf_errors.GatedRepoError:
        raise AuthenticationError(
            "the repository is gated: accept its conditions on the Hub, then authenticate.", ingredient=ingredient,
            fix=_LOGIN_FIX, param="token",
        ) from None
    except hf_errors.RepositoryNotFoundError as e:
        if _status(e) == 401 or not token_given:
            raise AuthenticationError(
                "the repository does not exist, or it is private and no valid token was given.", ingredient=ingredient,
                fix=_LOGIN_FIX if not token_given else "check the repo id and that the token can read this repository.",
                param="token",
            ) from None
        raise IngredientNotFoundError(
            "the repository does not exist (or the token cannot see it).", ingredient=ingredient,
            fix=_NOT_FOUND_FIX, param="refs",
        ) from None
    except hf_errors.LocalEntryNotFoundError:
        raise IngredientNotFoundError(
            "not in the local cache and the Hub cannot be reached (HF_HUB_OFFLINE is set or the network is down).",
            ingredient=ingredient, fix="run once online to populate the cache, or unset HF_HUB_OFFLINE.",
        ) from None
    except hf_errors.EntryNotFoundError as e:
        raise IngredientNotFoundError(f"a file is missing from the repository ({_first_line(e)}).",
                                      ingredient=ingredient, fix="check the repository's files.") from None
    except hf_errors.HfHubHTTPError as e:
        status = _status(e)
        if status in (401, 403):
            raise AuthenticationError(f"the Hub refused access (HTTP {status}).", ingredient=ingredient,
                                      fix=_LOGIN_FIX, param="token") from None
        if status == 404 and not push:  # a 404 without the Hub's error headers: an unknown route, not a private repo
            raise IngredientNotFoundError(
                "the server answered HTTP 404 without a Hub error code: the repository or file does not exist there, "
                "or the server does not implement this Hub route.", ingredient=ingredient,
                fix="check the repo id and the endpoint (HF_ENDPOINT / endpoint=).",
            ) from None
        if status is not None and status >= 500 and not push:
            raise HubConnectionError(f"the Hub answered HTTP {status} (a server error).", ingredient=ingredient,
                                     fix="retry later; nothing was written.") from None
        cls = PushError if push else SoupError
        raise cls(f"the Hub answered HTTP {status}: {_first_line(e)}", ingredient=ingredient,
                  fix="retry; the local files are intact." if push else "retry later.") from None
    except TransportError as e:  # refused, reset, closed mid-body, timed out: never a raw httpx error
        cls = PushError if push else HubConnectionError
        raise cls(f"the connection to the Hub failed ({type(e).__name__}: {_first_line(e)}).", ingredient=ingredient,
                  fix="retry; the local files are intact." if push else "check the network and retry.") from None
    except hf_errors.HFValidationError as e:  # an id or revision huggingface_hub refuses before any request
        raise IngredientNotFoundError(f"not a valid Hub repo id or revision ({_first_line(e)}).",
                                      ingredient=ingredient, fix="pass a repo id like 'user/model' or 'user/model@v1'.",
                                      param="refs") from None
    except (AttributeError, TypeError, KeyError, IndexError, ValueError) as e:
        if not _raised_by_hf_client(e):
            raise
        cls = PushError if push else HubConnectionError
        raise cls(f"the Hub's answer could not be read ({type(e).__name__}: {_first_line(e)}).",
                  ingredient=ingredient, fix="check the endpoint (HF_ENDPOINT / endpoint=) and retry.") from None
    except (OSError, RuntimeError) as e:
        if push:
            raise PushError(f"the upload failed: {type(e).__name__}: {_first_line(e)}", ingredient=ingredient,
                            fix="retry; the local soup is intact.") from None
        raise


def _raised_by_hf_client(e: BaseException) -> bool:
    """Whether `e` was raised inside huggingface_hub or its HTTP client while reading an answer (a malformed answer
    from the endpoint), rather than by hf_soups' own code."""
    import os

    tb = e.__traceback__
    last = None
    while tb is not None:
        last, tb = tb.tb_frame.f_code.co_filename, tb.tb_next
    return last is not None and any(f"{os.sep}{pkg}{os.sep}" in last for pkg in ("huggingface_hub", "httpx2", "httpx"))


def _for_push(e: SoupError, repo_id: str) -> SoupError:
    e.ingredient = None
    e.message = f"push to '{repo_id}': {e.message}"
    e.args = (e._render(),)
    return e


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__
