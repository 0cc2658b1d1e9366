"""The one weighted-sum kernel: every soup tensor hf_soups computes, on disk or in memory, comes from here.

The engine (chunk by chunk), greedy and learned candidates, the baselines of `Soup.evaluate` and the ensembles'
logit averages all call [`weighted_sum`], so the same weights give bit-identical tensors everywhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

__all__ = ["weighted_sum", "mix_sum"]

_HALF = (torch.bfloat16, torch.float16)  # promoted to fp32 exactly: a copy into fp32 then an fp32 add is what torch does


def weighted_sum(tensors: Iterable[torch.Tensor], weights: Sequence[float],
                 out: torch.Tensor | None = None, *, scratch: torch.Tensor | None = None) -> torch.Tensor:
    """`sum_k weights[k] * tensors[k]`, accumulated in fp32 in the given order.

    With all (non-zero) weights equal, the tensors are summed and the sum divided once by their count, which is
    exact for one tensor and the paper's uniform mean for several; otherwise `t_0 * w_0 + t_1 * w_1 + ...`.
    Zero weights are skipped (their tensors are still taken from `tensors`, which may be a lazy iterator: at most two
    of its tensors are alive at once).

    Args:
        tensors (`Iterable[torch.Tensor]`): one tensor per weight, all of one shape (any floating dtype).
        weights (`Sequence[float]`): the weights, normally summing to 1.
        out (`torch.Tensor`, *optional*): an fp32 tensor of that shape to accumulate into (it may be a model
            parameter); a new one on the first tensor's device otherwise.
        scratch (`torch.Tensor`, *optional*): a reusable fp32 buffer of at least that many elements, on `out`'s
            device. bf16/fp16 tensors are converted into it before they are added: on the CPU, torch would otherwise
            allocate (and free) one fp32 temporary per add, the same values. The result is bitwise the same.

    Returns:
        `torch.Tensor`: `out`.

    Raises:
        `ValueError`: no weight is non-zero, or fewer tensors than weights.
    """
    ws = [float(w) for w in weights]
    active = [w for w in ws if w != 0]
    if not active:
        raise ValueError("weighted_sum needs at least one non-zero weight.")
    equal = len(set(active)) == 1
    pairs = ((t, w) for w, t in zip(ws, tensors) if w != 0)  # weights first: no tensor is taken beyond them
    seen = 0
    first: torch.Tensor | None = None
    for t, w in pairs:
        seen += 1
        if seen == 1:
            if out is None:
                out = torch.empty(t.shape, dtype=torch.float32, device=t.device)
            if equal and len(active) > 1 and t.dtype == torch.float32:
                first = t  # fused with the second tensor below: one pass instead of copy + add
            else:
                out.copy_(t)
                if not equal:
                    out.mul_(w)
        elif first is not None:
            torch.add(first, t, out=out)
            first = None
        else:
            if scratch is not None and t.dtype in _HALF:
                t = scratch.view(-1)[: t.numel()].view(t.shape).copy_(t)  # what torch's temporary would hold
            out.add_(t, alpha=1.0 if equal else w)
    if seen != len(active):
        raise ValueError(f"weighted_sum got {seen} tensors for {len(active)} non-zero weights.")
    if out is None:
        raise ValueError("weighted_sum got no tensor with a non-zero weight.")
    if equal:
        out.div_(len(active))
    return out


def equal_weights_scale(weights: Sequence[float]) -> float | None:
    """For weights applied as given (a plan's per-tensor weights): the factor to multiply [`weighted_sum`]'s result
    by when its equal-weights path (sum, then divide by the count) does not give `sum_k w_k * t_k`, else `None`."""
    active = [float(w) for w in weights if w != 0]
    if len(set(active)) == 1 and active[0] * len(active) != 1.0:
        return active[0] * len(active)
    return None


def mix_sum(tensors: Iterable[torch.Tensor], weights: Sequence[float], out: torch.Tensor | None = None, *,
            scratch: torch.Tensor | None = None, exact_weights: bool = False) -> torch.Tensor:
    """[`weighted_sum`], or with `exact_weights=True` (a plan's per-tensor weights, applied as given, not normalised)
    `sum_k weights[k] * tensors[k]` also when the weights are equal but not `1/count`.

    Returns:
        `torch.Tensor`: `out`.
    """
    out = weighted_sum(tensors, weights, out, scratch=scratch)
    scale = equal_weights_scale(weights) if exact_weights else None
    if scale is not None:
        out.mul_(scale)
    return out
