"""Compatibility metadata of a local checkpoint directory: config, headers, tokenizer identity, card."""

from __future__ import annotations

import functools
import os

from .. import constants
from ..refs import IngredientMeta
from .meta import (
    card_base_model,
    find_files,
    local_tokenizer_identity,
    read_config,
    read_processor_config,
    vocabulary_identity,
)
from .reader import open_checkpoint
from .safe_files import check_files_inside

__all__ = ["local_meta"]


def local_meta(directory: str, name: str, *, allow_pickle: bool = False) -> IngredientMeta:
    """Read an [`IngredientMeta`] from a local directory: headers only, no weights.

    Every small file a soup may read or copy (config, tokenizer/processor/generation files, card) is checked first:
    one that is a link out of the directory, a FIFO or a device refuses the ingredient.

    Raises:
        [`IngredientNotFoundError`], [`NoSafetensorsError`], [`CorruptCheckpointError`], [`UnsafeCheckpointError`].
    """
    check_files_inside(directory, (*constants.AUX_FILES, "README.md"), ingredient=name)
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
        processor=read_processor_config(os.path.join(directory, "preprocessor_config.json"), name),
    )
