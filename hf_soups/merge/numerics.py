"""Numerical edge cases of the merge, kept out of the engine's hot loop: float8 inputs, unsigned integers, overflow.

The engine's fast path accumulates in fp32. When that sum is not finite, [`exact_piece`] recomputes the piece in
fp64 from pre-scaled terms (`sum(w_i * x_i)` with normalised weights), which cannot overflow when the average itself
fits, and names the culprit otherwise. [`check_cast`] checks what is *written*: the cast to a narrower output dtype
(fp16, bf16, float8) must not turn a finite average into Inf (or, for float8_e4m3fn, silently saturate it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..checkpoint.reader import CheckpointReader
from ..errors import NonFiniteTensorError
from .plan import TensorPlan

__all__ = ["computable", "int_maximum", "check_cast", "exact_piece", "cast_limit"]

_FLOAT8 = tuple(getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, n))
_UNSIGNED = {getattr(torch, n): bits for n, bits in (("uint16", 16), ("uint32", 32), ("uint64", 64))
             if hasattr(torch, n)}


def computable(chunk: torch.Tensor) -> torch.Tensor:
    """`chunk` in a dtype torch can do arithmetic in: float8 (storage-only in torch) becomes fp32, exactly."""
    return chunk.float() if chunk.dtype in _FLOAT8 else chunk


def int_maximum(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Elementwise maximum, also for the unsigned dtypes torch stores but cannot compare (uint16/32/64)."""
    bits = _UNSIGNED.get(a.dtype)
    if bits is None:
        return torch.maximum(a, b)
    if bits < 64:
        return torch.where(a.to(torch.int64) >= b.to(torch.int64), a, b)
    flip = -(2**63)  # order-preserving map of uint64 onto int64: flip the top bit
    return torch.where((a.view(torch.int64) ^ flip) >= (b.view(torch.int64) ^ flip), a, b)


def cast_limit(dtype: torch.dtype) -> float:
    """The smallest magnitude that does not round to a finite value of `dtype` (its max plus half an ulp)."""
    info = torch.finfo(dtype)
    _, exponent = math.frexp(info.max)  # max = m * 2**exponent, 0.5 <= m < 1: its ulp is eps * 2**(exponent - 1)
    return info.max + math.ldexp(info.eps, exponent - 2)


def _dtype(d: torch.dtype) -> str:
    return str(d).replace("torch.", "")


def _overflow(tp: TensorPlan, amax: float) -> NonFiniteTensorError:
    dtype = tp.torch_dtype
    if dtype.itemsize < 4:
        fix = "pass dtype=torch.float32 (or torch.bfloat16, which has float32's range) to write the soup."
    elif dtype == torch.float32:
        fix = "the ingredients hold values beyond float32's range: keep their float64 dtype (dtype=None)."
    else:
        fix = "check the ingredients' magnitudes."
    return NonFiniteTensorError(
        f"the averaged values reach {amax:.4g}, beyond the range of {_dtype(dtype)} (largest finite "
        f"{torch.finfo(dtype).max:.4g}); writing them would give Inf.", tensor=tp.name, fix=fix)


def check_cast(tp: TensorPlan, acc: torch.Tensor, out: torch.Tensor) -> None:
    """Refuse a finite average that the cast to the (narrower) output dtype turned into Inf or saturated.

    Raises:
        [`NonFiniteTensorError`]: naming the tensor, the output dtype and the fix.
    """
    if not acc.numel() or out.dtype.itemsize >= acc.dtype.itemsize:
        return
    low, high = torch.aminmax(acc)
    amax = max(-float(low), float(high))
    if amax >= cast_limit(out.dtype):
        raise _overflow(tp, amax)


def exact_piece(
    tp: TensorPlan,
    start: int,
    count: int,
    readers: Sequence[CheckpointReader],
    active: Sequence[int],
    weights: Sequence[float],
    names: Sequence[str],
    permutations: Sequence[Sequence[int] | None] = (),
) -> torch.Tensor:
    """Recompute one piece of an averaged tensor in fp64 from pre-scaled terms, after the fp32 sum was not finite.

    Returns:
        `torch.Tensor`: the fp64 average (flat, `count` elements), finite and within the output dtype's range.

    Raises:
        [`NonFiniteTensorError`]: an ingredient holds NaN/Inf in its own dtype (named), or the average does not fit
            the output dtype (the tensor and the fix are named; this is not blamed on training).
    """
    acc = torch.zeros(count, dtype=torch.float64)
    for i in active:
        chunk = readers[i].read_range(tp.name, start, count)
        perm = permutations[i] if tp.permute_rows and i < len(permutations) else None  # (a base has none)
        if perm is not None:
            chunk = chunk.view(tp.shape)[list(perm)].reshape(-1)
        x = computable(chunk).to(torch.float64)
        if not bool(torch.isfinite(x).all()):
            raise NonFiniteTensorError(
                "holds NaN or Inf values.", ingredient=names[i], tensor=tp.name,
                fix="remove this ingredient (its training diverged), or pass check_finite=False to soup it anyway.",
            )
        acc.add_(x, alpha=float(weights[i]))
    finite = bool(torch.isfinite(acc).all())
    amax = float(acc.abs().max()) if count and finite else math.inf
    if not finite or amax >= cast_limit(tp.torch_dtype):
        raise _overflow(tp, amax)
    return acc
