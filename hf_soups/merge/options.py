"""`MergeOptions`: how a soup is computed and written (dtype, rules, checks, sharding, device). A pure value."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .. import constants
from .plan import IntRule

if TYPE_CHECKING:
    import torch

__all__ = ["MergeOptions"]


@dataclass(frozen=True)
class MergeOptions:
    """How `soup_from_hub` computes and writes a soup.

    Args:
        dtype (`torch.dtype` or `str`, *optional*):
            Output dtype of floating tensors; defaults to the ingredients' dtype (the most precise one when mixed).
        int_rule (`str`, *optional*, defaults to `"first"`):
            How integer buffers that differ are resolved: `"first"`, `"max"` or `"error"`. They are never averaged.
        align_labels (`bool`, *optional*, defaults to `False`):
            Permute classifier rows of ingredients whose `id2label` is a permutation of the first one's.
        max_shard_size (`int` or `str`, *optional*, defaults to `"5GB"`):
            Largest output shard.
        device (`str` or `torch.device`, *optional*):
            Where the fp32 accumulation runs; defaults to the CPU, which reads the inputs' mapped pages in place.
            `"cuda"` stages every chunk through the GPU (bit-identical, rarely faster: the merge is memory-bound).
        stream (`bool`, *optional*, defaults to `False`):
            Read Hub weights with HTTP range requests instead of downloading the ingredients.
        check_finite (`bool`, *optional*, defaults to `True`):
            Refuse ingredients holding NaN or Inf.
        arch_check (`bool`, *optional*, defaults to `True`):
            Check the checkpoints against their config's model built on the meta device.
        progress (`bool`, *optional*, defaults to `True`):
            Show progress bars (huggingface_hub's tqdm; `HF_HUB_DISABLE_PROGRESS_BARS` turns them off too).
    """

    dtype: torch.dtype | str | None = None
    int_rule: IntRule = "first"
    align_labels: bool = False
    max_shard_size: int | str = constants.DEFAULT_MAX_SHARD_SIZE
    device: str | torch.device | None = None
    stream: bool = False
    check_finite: bool = True
    arch_check: bool = True
    progress: bool = True

    @property
    def dtype_name(self) -> str | None:
        """The output dtype as a name (`"bfloat16"`), as written in recipes and `config.json`."""
        return str(self.dtype).replace("torch.", "") if self.dtype is not None else None
