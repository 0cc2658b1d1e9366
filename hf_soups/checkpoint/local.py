"""Compatibility metadata of a local checkpoint directory: config, headers, tokenizer identity, card."""

from __future__ import annotations

import functools
import os

from ..refs import IngredientMeta
from .meta import card_base_model, find_files, local_tokenizer_identity, read_config, vocabulary_identity
from .reader import open_checkpoint

__all__ = ["local_meta"]


def local_meta(directory: str, name: str, *, allow_pickle: bool = False) -> IngredientMeta:
    """Read an [`IngredientMeta`] from a local directory: headers only, no weights.

    Raises:
        [`IngredientNotFoundError`], [`NoSafetensorsError`], [`CorruptCheckpointError`], [`UnsafeCheckpointError`].
    """
    config = read_config(os.path.join(directory, "config.json"), name)
    with open_checkpoint(directory, ingredient=name, allow_pickle=allow_pickle) as reader:
        tensors = dict(reader.tensors)
    return IngredientMeta(
        name=name,
        config=config,
        tensors=tensors,
        tokenizer_hash=local_tokenizer_identity(directory),
        base_model=card_base_model(os.path.join(directory, "README.md")),
        vocabulary=functools.cache(lambda: vocabulary_identity(find_files(directory))),
    )
