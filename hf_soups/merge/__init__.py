"""The merge engine: plans (pure values) and the streaming executor. Never speaks HTTP."""

from .engine import iter_merged_chunks, merge_state_dict, merge_to_directory
from .options import MergeOptions
from .plan import IntRule, MergePlan, TensorPlan, build_plan, normalize_weights, output_dtype

__all__ = [
    "IntRule",
    "MergeOptions",
    "MergePlan",
    "TensorPlan",
    "build_plan",
    "normalize_weights",
    "output_dtype",
    "iter_merged_chunks",
    "merge_state_dict",
    "merge_to_directory",
]
