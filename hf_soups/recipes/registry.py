"""The method registry: every soup method, registered once with its function, paper link, description and needs.

`soup_from_hub`, the held-out evaluation, the CLI's `--method` choices and the model card all read the method list
from here; the protocol a method follows (what it declares, receives and returns) is in [`hf_soups.recipes.protocol`].
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from ..errors import RecipeError
from .protocol import Needs

__all__ = ["SoupMethod", "METHODS", "register_method", "get_method", "method_names", "scalar_parameters_section",
           "CardSection"]

F = TypeVar("F", bound=Callable[..., Any])

#: A method's card section: `fn(parameters, ingredients) -> markdown`, from the recipe's recorded parameters and the
#: ingredients' display names (outside text: escape it with `hf_soups.text.escape_markdown`). `""`: no section.
CardSection = Callable[[Mapping[str, Any], Sequence[str]], str]


def scalar_parameters_section(parameters: Mapping[str, Any], ingredients: Sequence[str]) -> str:
    """The default card section of a method: its scalar parameters (numbers, strings, booleans) as a small table.

    Args:
        parameters (`Mapping[str, Any]`): the method's recorded parameters (`Recipe.parameters`).
        ingredients (`Sequence[str]`): the ingredients' display names (unused here).

    Returns:
        `str`: markdown, or `""` when there is no scalar parameter.
    """
    from ..text import escape_markdown

    rows = [(k, v) for k, v in parameters.items() if isinstance(v, (bool, int, float, str))]
    if not rows:
        return ""
    shown = (lambda v: f"{v:.4g}" if isinstance(v, float) else escape_markdown(v))
    return "\n".join(["| parameter | value |", "|---|---|",
                      *(f"| {escape_markdown(k)} | {shown(v)} |" for k, v in rows)])


@dataclass(frozen=True)
class SoupMethod:
    """One registered soup method.

    Attributes:
        name (`str`): the method name (`method=` of `soup_from_hub`, `--method` of the CLI).
        fn (`Callable[[MethodContext], MethodResult | MergePlan]`): the function that plans the soup.
        paper (`str`): a link to the paper (or section) the method comes from.
        description (`str`): one sentence, shown in the model card and the CLI help.
        needs ([`Needs`]): what the method needs (user weights, held-out data, the base, statistics, gradients).
        progress_steps (`int`): progress-bar steps the method reports per ingredient (`ctx.progress()`), beyond the
            held-out scoring of each ingredient.
        card_section ([`CardSection`]): summarises the method's recorded parameters for the card (default:
            [`scalar_parameters_section`]).
    """

    name: str
    fn: Callable[..., Any]
    paper: str
    description: str
    needs: Needs = Needs()
    progress_steps: int = 0
    card_section: CardSection = scalar_parameters_section

    @property
    def needs_eval(self) -> bool:
        """Whether the method scores candidates on held-out data (`eval_dataset`)."""
        return self.needs.held_out

    @property
    def user_weights(self) -> bool:
        """Whether the user gives the weights (`weights=`)."""
        return self.needs.user_weights


#: `{name: SoupMethod}`, in registration order.
METHODS: dict[str, SoupMethod] = {}


def register_method(name: str, *, paper: str, description: str, needs: Needs = Needs(),
                    progress_steps: int = 0, card_section: CardSection | None = None) -> Callable[[F], F]:
    """Decorator registering a soup method under `name` (see [`hf_soups.recipes.protocol`]).

    Args:
        name (`str`): the method name, for `method=` and `--method`.
        paper (`str`): a link to the paper, shown in the card.
        description (`str`): one sentence, shown in the card and the CLI help.
        needs ([`Needs`], *optional*): what the method needs; defaults to nothing (a data-free method).
        progress_steps (`int`, *optional*, defaults to `0`): progress steps it reports per ingredient.
        card_section ([`CardSection`], *optional*): `fn(parameters, ingredients) -> markdown`, the card's summary of
            the method's recorded parameters; defaults to [`scalar_parameters_section`] (a table of the scalars).

    Raises:
        `ValueError`: `name` is already registered, or is not a short identifier.
    """

    def wrap(fn: F) -> F:
        if name in METHODS:
            raise ValueError(f"soup method {name!r} is already registered.")
        if not name.isidentifier() or len(name) > 64:
            raise ValueError(f"soup method names are short identifiers (letters, digits, _); got {name!r}.")
        METHODS[name] = SoupMethod(name, fn, paper, description, needs, progress_steps,
                                   card_section or scalar_parameters_section)
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
