"""Distributed evaluation with accelerate: under `accelerate launch`, every evaluation is sharded across processes.

Each process scores its share of the (length-sorted) batches; the logits are summed across processes, each example
having been computed by exactly one of them, so every process sees the full logits and takes the same decisions as a
single-process run. Only the main process writes; the others wait at a barrier. Runs on CPU with gloo, and unchanged
on multi-GPU or multi-node.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

import torch

from .. import constants

__all__ = ["state", "is_distributed", "is_main_process", "wait_for_everyone", "my_share", "sum_across"]

T = TypeVar("T")


def state() -> Any:
    """accelerate's `PartialState` (initialises the process group under `accelerate launch`)."""
    from accelerate import PartialState

    return PartialState()


def is_distributed() -> bool:
    return constants.world_size() > 1 and state().num_processes > 1


def is_main_process() -> bool:
    return not is_distributed() or state().is_main_process


def wait_for_everyone() -> None:
    if is_distributed():
        state().wait_for_everyone()


def my_share(items: Sequence[T]) -> list[T]:
    """This process's share of `items` (all of them outside `accelerate launch`)."""
    if not is_distributed():
        return list(items)
    with state().split_between_processes(list(items)) as share:
        return list(share)


def sum_across(tensor: torch.Tensor) -> torch.Tensor:
    """Element-wise sum over processes (identity outside `accelerate launch`)."""
    if not is_distributed():
        return tensor
    from accelerate.utils import reduce

    return reduce(tensor.to(state().device), reduction="sum").cpu()
