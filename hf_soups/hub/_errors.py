"""Turn huggingface_hub's HTTP errors into hf_soups errors, once, at the boundary. Tokens never appear."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import httpx2
from huggingface_hub import errors as hf_errors

from ..errors import (
    AuthenticationError,
    HubConnectionError,
    IngredientNotFoundError,
    PushError,
    RevisionNotFoundError,
    SoupError,
)

_LOGIN_FIX = "pass token='hf_...' (or token=True to use the saved token), set HF_TOKEN, or run `hf auth login`."


def _status(e: BaseException) -> int | None:
    response = getattr(e, "response", None)
    return getattr(response, "status_code", None)


@contextlib.contextmanager
def hub_errors(ingredient: str, *, token_given: bool, revision: str | None = None, push: bool = False) -> Iterator[None]:
    """Map huggingface_hub exceptions raised inside the block to [`SoupError`]s naming `ingredient`.

    With `push=True`, `ingredient` is the target repo id, and errors name it as the push target.
    """
    try:
        with _hub_errors(ingredient, token_given=token_given, revision=revision, push=push):
            yield
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
            fix=_LOGIN_FIX,
        ) from None
    except hf_errors.RepositoryNotFoundError as e:
        if _status(e) == 401 or not token_given:
            raise AuthenticationError(
                "the repository does not exist, or it is private and no valid token was given.", ingredient=ingredient,
                fix=_LOGIN_FIX if not token_given else "check the repo id and that the token can read this repository.",
            ) from None
        raise IngredientNotFoundError(
            "the repository does not exist (or the token cannot see it).", ingredient=ingredient,
            fix="check the repo id, e.g. 'user/model'.",
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
                                      fix=_LOGIN_FIX) from None
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
    except httpx2.TransportError as e:  # refused, reset, closed mid-body, timed out: never a raw httpx error
        cls = PushError if push else HubConnectionError
        raise cls(f"the connection to the Hub failed ({type(e).__name__}: {_first_line(e)}).", ingredient=ingredient,
                  fix="retry; the local files are intact." if push else "check the network and retry.") from None
    except (OSError, RuntimeError) as e:
        if push:
            raise PushError(f"the upload failed: {type(e).__name__}: {_first_line(e)}", ingredient=ingredient,
                            fix="retry; the local soup is intact.") from None
        raise


def _for_push(e: SoupError, repo_id: str) -> SoupError:
    e.ingredient = None
    e.message = f"push to '{repo_id}': {e.message}"
    e.args = (e._render(),)
    return e


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__
