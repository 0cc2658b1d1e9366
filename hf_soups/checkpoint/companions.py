"""The small files a soup takes from its ingredients: config, generation config and tokenizer files from the first
one, image processor files from the lead (highest-weight) one."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Sequence

from .. import constants
from .format import DTYPES
from .safe_files import check_files_inside, copy_inside

__all__ = ["copy_companion_files", "lead_index", "config_dtype"]


def config_dtype(explicit: str | None, written: Sequence[str], first: Sequence[str]) -> str | None:
    """The dtype the soup's `config.json` must name, so that `from_pretrained` loads it as written.

    Args:
        explicit (`str`, *optional*): the output dtype the caller chose (`"bfloat16"`), which wins.
        written (`Sequence[str]`): the safetensors dtype codes of the averaged (floating) tensors written.
        first (`Sequence[str]`): the codes of the same tensors in the first ingredient, whose config is copied.

    Returns:
        `str | None`: the dtype name to write (`"float32"` for fp16 + bf16 ingredients, whatever their order), or
        `None` when the first ingredient's config already describes what is written (it is then copied unchanged).
    """
    if explicit is not None:
        return explicit
    if not written:
        return None
    dominant = Counter(written).most_common(1)[0][0]
    if first and Counter(first).most_common(1)[0][0] == dominant:
        return None
    return str(DTYPES[dominant]).removeprefix("torch.")


def copy_companion_files(source_dir: str, target_dir: str, *, ingredient: str, dtype: str | None = None,
                         names: Sequence[str] = constants.AUX_FILES,
                         processor_source: tuple[str | None, str] | None = None) -> list[str]:
    """Copy the `names` present in `source_dir` into `target_dir` (which the caller makes atomic).

    Args:
        source_dir (`str`): the first ingredient's directory.
        target_dir (`str`): the soup's (temporary) directory.
        ingredient (`str`): the ingredient's name, for errors.
        dtype (`str`, *optional*): the soup's output dtype (`"bfloat16"`); rewrites `torch_dtype`/`dtype` in the copied
            `config.json` so that `from_pretrained` loads the soup in the dtype it was written in.
        names (`Sequence[str]`, *optional*): the files to copy, defaults to `constants.AUX_FILES`.
        processor_source (`tuple[str, str]`, *optional*): `(directory, ingredient name)` of the soup's lead
            ingredient: the image processor files (`constants.PROCESSOR_FILES`) are all taken from it when it has
            any (never a mix of two ingredients'), else from `source_dir`.

    Every file is read only if it lies inside the ingredient (or its Hub cache blobs) and is a regular file.

    Returns:
        `list[str]`: the names copied.

    Raises:
        [`UnsafeCheckpointError`]: a file links out of the ingredient, or is a FIFO or a device.
    """
    sources: list[tuple[str, str, tuple[str, ...]]] = [(source_dir, ingredient, tuple(names))]
    if processor_source is not None and processor_source[0] and processor_source[0] != source_dir:
        lead_dir, lead = processor_source
        processor_names = tuple(n for n in names if n in constants.PROCESSOR_FILES)
        if check_files_inside(lead_dir, processor_names, ingredient=lead):
            sources = [(source_dir, ingredient, tuple(n for n in names if n not in processor_names)),
                       (lead_dir, lead, processor_names)]
    copied = []
    for directory, name_of, wanted in sources:
        for name in check_files_inside(directory, wanted, ingredient=name_of):
            copy_inside(directory, name, os.path.join(target_dir, name), ingredient=name_of)
            copied.append(name)
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


def lead_index(weights: Sequence[float], scores: Sequence[float | None] | None = None) -> int:
    """The ingredient whose image processor a soup ships (and through which a candidate soup is scored): the highest
    weight; ties go to the better held-out score, then to the earlier ingredient. Never an ingredient with weight 0
    when another has more."""
    def key(i: int) -> tuple[float, float, int]:
        score = scores[i] if scores is not None and scores[i] is not None else float("-inf")
        return (round(float(weights[i]), 9), float(score), -i)  # type: ignore[arg-type]

    return max(range(len(weights)), key=key)
