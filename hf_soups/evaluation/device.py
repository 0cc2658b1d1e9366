"""Where held-out evaluation runs: the one device rule shared by greedy, learned, the baselines and `Soup.evaluate`.

The rule, in order: an explicit device (`EvalSpec.device`, `Soup.evaluate(device=...)`); else accelerate's
`PartialState().device` when running under `accelerate launch` or when an accelerator is present (each launched
rank gets its own `cuda:<local_rank>`; MPS, XPU and the other backends accelerate knows follow for free); else the
CPU. The merge device (`MergeOptions.device`) is a separate choice.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from ..errors import EvaluationError

__all__ = ["resolve_eval_device", "resolve_eval_dtype", "default_batch_size", "autocast", "accelerator_available",
           "input_device", "fits_on", "CPU_BATCH_SIZE", "ACCELERATOR_BATCH_SIZE"]

#: Default evaluation batch size on the CPU.
CPU_BATCH_SIZE = 64
#: Default evaluation batch size on an accelerator (inference only: no activations are kept for a backward pass).
ACCELERATOR_BATCH_SIZE = 256

_DTYPES = {"float32": None, "fp32": None, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}


def accelerator_available() -> bool:
    """Whether torch sees an accelerator (CUDA, MPS, XPU, ...)."""
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None and hasattr(accelerator, "is_available"):
        return bool(accelerator.is_available())
    mps = getattr(torch.backends, "mps", None)
    return torch.cuda.is_available() or bool(mps is not None and mps.is_available())


def resolve_eval_device(explicit: str | torch.device | int | None = None) -> torch.device:
    """The device held-out evaluations run on.

    Args:
        explicit (`str`, `torch.device` or `int`, *optional*):
            A device chosen by the user (`"cuda:1"`, `"cpu"`, `0`); always wins.

    Returns:
        `torch.device`: `explicit`; else accelerate's `PartialState().device` under `accelerate launch` or when an
        accelerator is available; else the CPU.

    Raises:
        [`EvaluationError`]: `explicit` is not a device torch knows.
    """
    if explicit is not None:
        try:
            return torch.device(f"cuda:{explicit}" if isinstance(explicit, int) else explicit)
        except (RuntimeError, TypeError) as e:
            raise EvaluationError(f"unknown evaluation device {explicit!r} ({e}).",
                                  fix="pass a torch device such as 'cpu', 'cuda', 'cuda:1' or 'mps'.") from None
    from .distributed import is_distributed, state

    if is_distributed() or accelerator_available():
        return torch.device(state().device)
    return torch.device("cpu")


def resolve_eval_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """The autocast dtype of a reduced-precision evaluation; `None` for exact fp32 (the default).

    Raises:
        [`EvaluationError`]: `dtype` is not `"float32"`, `"bfloat16"` or `"float16"`.
    """
    if dtype is None or dtype == torch.float32:
        return None
    if isinstance(dtype, torch.dtype):
        if dtype in (torch.bfloat16, torch.float16):
            return dtype
    elif str(dtype).replace("torch.", "") in _DTYPES:
        return _DTYPES[str(dtype).replace("torch.", "")]
    raise EvaluationError(f"unsupported evaluation dtype {dtype!r}.",
                          fix="pass dtype='bfloat16' or 'float16' (autocast), or leave it unset for exact fp32.")


def default_batch_size(device: torch.device, batch_size: int | None = None) -> int:
    """`batch_size` when given, else a default for `device`: 64 on the CPU, 256 on an accelerator."""
    if batch_size is not None:
        return int(batch_size)
    return CPU_BATCH_SIZE if device.type in ("cpu", "meta") else ACCELERATOR_BATCH_SIZE


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """`torch.autocast` on `device` for reduced-precision evaluation; nothing for exact fp32 (`dtype=None`)."""
    if dtype is None or device.type == "meta":
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def input_device(model: Any) -> torch.device:
    """Where a model's inputs go: its first parameter's device; the CPU for a model dispatched by accelerate whose
    first weights are offloaded (on the meta device: accelerate's hooks move the inputs)."""
    try:
        device = next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")
    return torch.device("cpu") if device.type == "meta" and getattr(model, "hf_device_map", None) else device


def fits_on(device: torch.device, nbytes: int, headroom: float = 0.8) -> bool:
    """Whether `nbytes` more fit in `device`'s free memory (with `headroom`); assumed true off CUDA."""
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= headroom * free
