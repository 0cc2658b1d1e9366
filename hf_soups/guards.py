"""Guard rails on the set of ingredients: at least two, and no ingredient twice. Pure checks over resolved refs."""

from __future__ import annotations

import os
from collections.abc import Sequence

from .errors import InvalidArgumentError
from .refs import Ingredient

__all__ = ["check_ingredient_set"]


def _identity(ing: Ingredient) -> tuple[str, ...]:
    if ing.repo_id is not None:
        return ("hub", ing.repo_id.lower(), ing.revision or "")
    return ("dir", os.path.realpath(ing.local_dir or ing.ref))


def check_ingredient_set(ingredients: Sequence[Ingredient], *, allow_single: bool = False) -> None:
    """Refuse a soup of fewer than two ingredients, or one that names the same ingredient twice.

    Two references are the same ingredient when they resolve to the same repo and commit sha (`user/ft` and
    `user/ft@main`, or a tag and its sha), or to the same directory (after following links).

    Args:
        ingredients (`Sequence[Ingredient]`): resolved ingredients (Hub ones pinned to their sha).
        allow_single (`bool`, *optional*, defaults to `False`): accept a single ingredient (for testing pipelines).

    Raises:
        [`InvalidArgumentError`]: fewer than two ingredients (without `allow_single`), or a duplicate.
    """
    seen: dict[tuple[str, ...], Ingredient] = {}
    for ing in ingredients:
        key = _identity(ing)
        first = seen.get(key)
        if first is not None:
            what = (f"the same repo at the same commit ({ing.revision})" if ing.repo_id is not None
                    else f"the same directory ({key[1]})")
            raise InvalidArgumentError(
                f"'{ing.ref}' and '{first.ref}' are {what}; a soup of an ingredient with itself is that ingredient "
                "with a different weight.", ingredient=ing.ref,
                fix="remove the duplicate (use method='weighted' with weights=[...] to weight an ingredient).",
                param="refs")
        seen[key] = ing
    if len(ingredients) < 2 and not allow_single:
        raise InvalidArgumentError(
            f"a soup needs at least two ingredients, got {len(ingredients)} ('{ingredients[0].ref}')."
            if ingredients else "a soup needs at least two ingredients, got none.",
            fix="pass two or more fine-tunes of the same base model (allow_single=True makes a one-ingredient "
                "soup, for testing).", param="allow_single")
