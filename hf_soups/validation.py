"""Pure argument validators: every bad argument is refused here, before anything is read or downloaded.

Method names are checked by the registry (`hf_soups.recipes.get_method`). Each validator returns the canonical value (a `torch.dtype`, an `int` byte count, normalised weights) or raises
[`InvalidArgumentError`] (a `SoupError` and a `ValueError`) naming the parameter and the fix. No I/O.
"""

from __future__ import annotations

import math
import numbers
import re
import sys
from collections.abc import Sequence
from typing import Any

import torch

from .errors import InvalidArgumentError

__all__ = [
    "validate_weights",
    "normalize_weights",
    "validate_dtype",
    "validate_max_shard_size",
    "parse_size",
    "validate_int_rule",
    "mask_secrets",
    "dtype_name",
    "FLOAT_DTYPES",
]

#: Output dtypes a soup may be written in: floating types that safetensors can store.
FLOAT_DTYPES: dict[str, torch.dtype] = {
    "float64": torch.float64,
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
for _name in ("float8_e4m3fn", "float8_e5m2"):
    if hasattr(torch, _name):
        FLOAT_DTYPES[_name] = getattr(torch, _name)

_DTYPE_ALIASES = {
    "double": "float64", "fp64": "float64", "f64": "float64",
    "float": "float32", "fp32": "float32", "f32": "float32",
    "bf16": "bfloat16",
    "half": "float16", "fp16": "float16", "f16": "float16",
    "f8_e4m3": "float8_e4m3fn", "fp8_e4m3": "float8_e4m3fn", "float8_e4m3": "float8_e4m3fn",
    "f8_e5m2": "float8_e5m2", "fp8_e5m2": "float8_e5m2",
}

_INT_RULES = ("first", "max", "error")


def _bad(parameter: str, message: str, fix: str) -> InvalidArgumentError:
    return InvalidArgumentError(f"{parameter}: {message}", fix=fix)


def validate_weights(weights: Any, n: int | None = None, *, parameter: str = "weights") -> tuple[float, ...]:
    """Check soup weights: a sequence of finite, non-negative reals with a positive sum.

    Negative weights are refused: a soup is a convex combination of its ingredients (Wortsman et al., 2022), and a
    weight of 0 already leaves an ingredient out.

    Args:
        weights (`Sequence[float]`): one weight per ingredient.
        n (`int`, *optional*): the number of ingredients, when known.
        parameter (`str`, *optional*): the name used in errors.

    Returns:
        `tuple[float, ...]`: the weights as floats (not normalised).

    Raises:
        [`InvalidArgumentError`]: not a sequence of reals, the wrong length, NaN, Inf, negative, or all zero.
    """
    fix = "pass one finite, non-negative weight per ingredient, e.g. weights=[0.5, 0.3, 0.2]."
    if isinstance(weights, (str, bytes)) or not isinstance(weights, Sequence) and not hasattr(weights, "__iter__"):
        raise _bad(parameter, f"expected a list of numbers, got {type(weights).__name__}.", fix)
    values = list(weights)
    out = []
    for k, w in enumerate(values):
        if isinstance(w, torch.Tensor) and w.numel() == 1:
            w = w.item()
        if isinstance(w, bool) or not isinstance(w, numbers.Real):
            raise _bad(parameter, f"weight #{k + 1} is {w!r} ({type(w).__name__}), not a number.", fix)
        f = float(w)
        if not math.isfinite(f):
            raise _bad(parameter, f"weight #{k + 1} is {f}, not a finite number.", fix)
        if f < 0:
            raise _bad(parameter, f"weight #{k + 1} is negative ({f}); a soup is a convex combination of its "
                       "ingredients.", "use non-negative weights (0 leaves an ingredient out).")
        out.append(f)
    if not out:
        raise _bad(parameter, "no weights given.", fix)
    if n is not None and len(out) != n:
        raise _bad(parameter, f"got {len(out)} weights for {n} ingredients.", "pass one weight per ingredient.")
    if max(out) <= 0:
        raise _bad(parameter, "all weights are zero.", "give at least one ingredient a positive weight.")
    return tuple(out)


def normalize_weights(weights: Any, n: int | None = None) -> list[float]:
    """Validate `weights` and scale them to sum to 1, robustly.

    Weights that already sum to 1 are kept exactly (recipes replay bit for bit). When the plain sum overflows
    (`[1e308, 1e308]`) or is subnormal, the weights are first divided by their maximum, so the result is always
    finite and sums to 1.

    Raises:
        [`InvalidArgumentError`]: see [`validate_weights`].
    """
    ws = list(validate_weights(weights, n))
    total = sum(ws)
    if abs(total - 1.0) < 1e-12:
        return ws
    if not math.isfinite(total) or total < sys.float_info.min:
        top = max(ws)
        ws = [w / top for w in ws]
        total = sum(ws)
    out = [w / total for w in ws]
    if not all(math.isfinite(w) for w in out) or not sum(out) > 0:  # pragma: no cover - defensive
        raise _bad("weights", f"cannot be normalised ({weights!r}).", "pass weights of comparable magnitude.")
    return out


def validate_dtype(dtype: Any, *, parameter: str = "dtype") -> torch.dtype | None:
    """The output dtype as a floating `torch.dtype`; `None` (or `"auto"`) keeps the ingredients' dtype.

    Accepts `torch.float16`, `"float16"`, `"torch.float16"`, `"fp16"`, `"half"`, `"bf16"`, `"fp32"`, ...

    Raises:
        [`InvalidArgumentError`]: an unknown name, or a non-floating dtype (`"int8"` would destroy the weights).
    """
    if dtype is None:
        return None
    choices = ", ".join(f"'{k}'" for k in FLOAT_DTYPES)
    fix = f"pass dtype=None (keep the ingredients' dtype) or one of {choices}."
    if isinstance(dtype, torch.dtype):
        if dtype in FLOAT_DTYPES.values():
            return dtype
        raise _bad(parameter, f"{dtype} is not a floating dtype; soups average weights, which needs one.", fix)
    if not isinstance(dtype, str):
        raise _bad(parameter, f"expected a torch.dtype or a string, got {type(dtype).__name__}.", fix)
    key = dtype.strip().lower()
    key = key[len("torch."):] if key.startswith("torch.") else key
    if key == "auto":
        return None
    key = _DTYPE_ALIASES.get(key, key)
    if key in FLOAT_DTYPES:
        return FLOAT_DTYPES[key]
    known = getattr(torch, key, None)
    if isinstance(known, torch.dtype):
        raise _bad(parameter, f"'{dtype}' is not a floating dtype; soups average weights, which needs one.", fix)
    raise _bad(parameter, f"unknown dtype {dtype!r}.", fix)


def dtype_name(dtype: torch.dtype | None) -> str | None:
    """`torch.bfloat16` -> `"bfloat16"` (the spelling of `config.json` and recipes)."""
    return None if dtype is None else str(dtype).replace("torch.", "")


#: The units of a size (huggingface_hub's `max_shard_size` convention: decimal KB/MB/GB/TB, binary KiB/MiB/GiB/TiB).
SIZE_UNITS = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
              "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
_SIZE = re.compile(r"^\s*(?P<number>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(?P<unit>[KMGT]I?B)?\s*$", re.IGNORECASE)


def parse_size(size: Any, *, parameter: str = "max_shard_size") -> int:
    """A size in bytes, from an int or a string: `"5GB"` -> 5_000_000_000, `"5GiB"` -> 5_368_709_120, `"1.5GB"` ->
    1_500_000_000, `"1000"` -> 1000 (huggingface_hub's `max_shard_size` units: GB = 10**9, GiB = 2**30; case and
    spaces between number and unit do not matter). The one size parser of hf_soups.

    Args:
        size (`int` or `str`): the size.
        parameter (`str`, *optional*, defaults to `"max_shard_size"`): the argument's name, for the error.

    Returns:
        `int`: the size in bytes, at least 1.

    Raises:
        [`InvalidArgumentError`]: not a positive size (a bool, a float, a negative or zero size, an unknown unit).
    """
    fix = "pass a positive size such as '5GB', '500MB', '2GiB' or an integer number of bytes."
    if isinstance(size, bool):
        raise _bad(parameter, f"{size!r} is not a size.", fix)
    if isinstance(size, numbers.Integral):
        value = int(size)
    elif isinstance(size, str):
        match = _SIZE.match(size)
        if match is None:
            raise _bad(parameter, f"cannot read {size!r} as a size.", fix)
        number, unit = match["number"], (match["unit"] or "").upper()
        if not unit and number.isdigit():
            value = int(number)
        else:
            scaled = float(number) * SIZE_UNITS.get(unit, 1)
            if not math.isfinite(scaled):
                raise _bad(parameter, f"{size!r} is too large.", fix)
            value = int(scaled)
    else:
        raise _bad(parameter, f"expected an int or a string like '5GB', got {type(size).__name__}.", fix)
    if value <= 0:
        raise _bad(parameter, f"{size!r} is not positive.", fix)
    return value


#: The name the API's argument checks use.
validate_max_shard_size = parse_size


def validate_int_rule(rule: Any, *, parameter: str = "int_rule") -> str:
    """`"first"`, `"max"` or `"error"`.

    Raises:
        [`InvalidArgumentError`]: anything else.
    """
    if not isinstance(rule, str) or rule not in _INT_RULES:
        raise _bad(parameter, f"unknown rule {rule!r}.", "use 'first', 'max' or 'error'.")
    return rule


_TOKEN_LIKE = re.compile(r"^(hf_|api_)[A-Za-z0-9_\-]{6,}$")


def mask_secrets(text: str | None) -> str | None:
    """Hide a revision shaped like a Hugging Face token (`hf_...`), whole or after the `@` of a reference.

    A token passed by mistake as a revision (`user/model@hf_abc...`, `revision="hf_abc..."`) must never be echoed
    in an error or a log: it becomes `hf_***`.
    """
    if text is None:
        return None
    head, at, rev = text.rpartition("@")
    if not at:
        head, rev = "", text
    match = _TOKEN_LIKE.match(rev)
    if match is None:
        return text
    return f"{head}{at}{match.group(1)}***"
