"""The method registry: every soup method, registered once with its function, paper link and description.

`soup_from_hub`, the CLI's `--method` choices and the model card all read the method list from here.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from ..errors import RecipeError

__all__ = ["SoupMethod", "METHODS", "register_method", "get_method", "method_names"]

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class SoupMethod:
    """One registered soup method.

    Attributes:
        name (`str`): the method name (`method=` of `soup_from_hub`, `--method` of the CLI).
        fn (`Callable`): the function that chooses the weights.
        paper (`str`): a link to the paper (or section) the method comes from.
        description (`str`): one sentence, shown in the model card and the CLI help.
        needs_eval (`bool`): whether the method scores candidates on held-out data (`eval_dataset`).
        user_weights (`bool`): whether the user gives the weights (`weights=`).
    """

    name: str
    fn: Callable[..., Any]
    paper: str
    description: str
    needs_eval: bool = False
    user_weights: bool = False


#: `{name: SoupMethod}`, in registration order.
METHODS: dict[str, SoupMethod] = {}


def register_method(name: str, *, paper: str, description: str, needs_eval: bool = False,
                    user_weights: bool = False) -> Callable[[F], F]:
    """Decorator registering a soup method under `name`.

    Raises:
        `ValueError`: `name` is already registered.
    """

    def wrap(fn: F) -> F:
        if name in METHODS:
            raise ValueError(f"soup method {name!r} is already registered.")
        METHODS[name] = SoupMethod(name, fn, paper, description, needs_eval, user_weights)
        return fn

    return wrap


def method_names() -> tuple[str, ...]:
    """The registered method names, in registration order."""
    return tuple(METHODS)


def get_method(name: str) -> SoupMethod:
    """The registered method `name`.

    Raises:
        [`RecipeError`] (a `SoupError` and a `ValueError`): no method is registered under that name; the message
        suggests the closest one.
    """
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        pass
    text = str(name)
    close = difflib.get_close_matches(text, list(METHODS), n=1, cutoff=0.5)
    if not close:
        close = [m for m in METHODS if m in text.lower()][:1]
    hint = f"did you mean method='{close[0]}'? " if close else ""
    raise RecipeError(f"unknown method {name!r}.",
                      fix=hint + "use one of " + ", ".join(f"'{m}'" for m in METHODS) + ".")
