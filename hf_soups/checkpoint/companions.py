"""The small files a soup takes from its first ingredient: config, generation config, tokenizer and processor files."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

from .. import constants
from .safe_files import check_files_inside, copy_inside

__all__ = ["copy_companion_files"]


def copy_companion_files(source_dir: str, target_dir: str, *, ingredient: str, dtype: str | None = None,
                         names: Sequence[str] = constants.AUX_FILES) -> list[str]:
    """Copy the `names` present in `source_dir` into `target_dir` (which the caller makes atomic).

    Args:
        source_dir (`str`): the first ingredient's directory.
        target_dir (`str`): the soup's (temporary) directory.
        ingredient (`str`): the ingredient's name, for errors.
        dtype (`str`, *optional*): the soup's output dtype (`"bfloat16"`); rewrites `torch_dtype`/`dtype` in the copied
            `config.json` so that `from_pretrained` loads the soup in the dtype it was written in.
        names (`Sequence[str]`, *optional*): the files to copy, defaults to `constants.AUX_FILES`.

    Every file is read only if it lies inside the ingredient (or its Hub cache blobs) and is a regular file.

    Returns:
        `list[str]`: the names copied.

    Raises:
        [`UnsafeCheckpointError`]: a file links out of the ingredient, or is a FIFO or a device.
    """
    copied = list(check_files_inside(source_dir, tuple(names), ingredient=ingredient))
    for name in copied:
        copy_inside(source_dir, name, os.path.join(target_dir, name), ingredient=ingredient)
    path = os.path.join(target_dir, "config.json")
    if dtype is not None and os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
        for key in ("torch_dtype", "dtype"):
            if key in config:
                config[key] = dtype
        with open(path, "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2, sort_keys=True)
    return copied
