"""What the verdict reads of each resolved ingredient: config, card and tensor headers, never weights."""

from __future__ import annotations

from collections.abc import Sequence

from . import adapters
from .checkpoint.local import local_meta
from .hub.access import HubAccess
from .refs import Ingredient, IngredientMeta, local_dir_of

__all__ = ["read_metas"]


def read_metas(ingredients: Sequence[Ingredient], access: HubAccess, allow_pickle: bool) -> list[IngredientMeta]:
    """What the verdict reads of each ingredient: config, card and tensor headers (an adapter's against its base).

    Args:
        ingredients (`Sequence[Ingredient]`): resolved ingredients.
        access ([`HubAccess`]): how to reach the Hub for Hub ingredients.
        allow_pickle (`bool`): accept `pytorch_model.bin` weights.

    Returns:
        `list[IngredientMeta]`: one per ingredient, in order.
    """
    bases = adapters.base_metas(ingredients, lambda b: read_metas([b], access, allow_pickle)[0])
    metas = []
    for ing in ingredients:
        if adapters.is_adapter(ing):
            metas.append(adapters.adapter_meta(ing, bases[ing.adapter.base.name]))
        elif ing.repo_id is None:
            metas.append(local_meta(local_dir_of(ing), ing.name, allow_pickle=allow_pickle))
        else:
            metas.append(access.fetch_meta(ing, allow_pickle=allow_pickle))
    return metas
