"""Merge plans: frozen, serialisable descriptions of what the engine computes. No I/O."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch

from .. import constants
from ..checkpoint.format import DTYPES, FLOAT_CODES, TensorInfo, dtype_code, numel
from ..errors import SoupError
from ..validation import normalize_weights as _normalize_weights
from ..validation import validate_dtype, validate_int_rule

__all__ = ["TensorPlan", "MergePlan", "build_plan", "output_dtype", "normalize_weights", "IntRule"]

#: How integer/bool tensors that differ across ingredients are resolved (they are never averaged):
#: `"first"` keeps the value of the first ingredient with a non-zero weight (the best-ranked one in a greedy soup);
#: `"max"` takes the elementwise maximum (right for counters such as `num_batches_tracked`);
#: `"error"` refuses.
IntRule = Literal["first", "max", "error"]

_PRECISION = {"F64": 3, "F32": 2, "BF16": 1, "F16": 1, "F8_E4M3": 0, "F8_E5M2": 0}


def output_dtype(codes: Sequence[str]) -> str:
    """The documented upcast rule for one tensor stored in several dtypes.

    The same dtype everywhere is kept. Otherwise the most precise dtype present wins (F64 > F32 > BF16/F16 > F8),
    and a tie between BF16 and F16 (different formats of equal width) goes to F32.
    """
    unique = sorted(set(codes))
    if len(unique) == 1:
        return unique[0]
    best = max(_PRECISION.get(c, 0) for c in unique)
    top = [c for c in unique if _PRECISION.get(c, 0) == best]
    return top[0] if len(top) == 1 else "F32"


def normalize_weights(weights: Sequence[float]) -> list[float]:
    """Scale non-negative weights to sum to 1 (robust to overflow; see [`hf_soups.validation.normalize_weights`]).

    Raises:
        [`InvalidArgumentError`]: a weight is negative or not finite, or all are zero.
    """
    return _normalize_weights(weights)


@dataclass(frozen=True)
class TensorPlan:
    """One output tensor: its name, shape, output dtype code and whether it is averaged."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    average: bool
    permute_rows: bool = False

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def numel(self) -> int:
        return numel(self.shape)


@dataclass(frozen=True)
class MergePlan:
    """What to compute: a weighted average of `len(weights)` ingredients, tensor by tensor.

    Attributes:
        tensors (`tuple[TensorPlan, ...]`): every output tensor, in the first ingredient's order.
        weights (`tuple[float, ...]`): one weight per ingredient, summing to 1 (0 skips an ingredient).
        int_rule (`IntRule`): how differing integer buffers are resolved.
        label_permutations (`tuple[tuple[int, ...] | None, ...]`): per ingredient, the row order that aligns its
            classifier with the first ingredient's labels (`None`: already aligned).
        check_finite (`bool`): refuse NaN/Inf.
    """

    tensors: tuple[TensorPlan, ...]
    weights: tuple[float, ...]
    int_rule: IntRule = "first"
    label_permutations: tuple[tuple[int, ...] | None, ...] = ()
    check_finite: bool = True
    metadata: tuple[tuple[str, str], ...] = field(default=())

    def with_weights(self, weights: Sequence[float]) -> MergePlan:
        """The same plan with other weights (normalised)."""
        return MergePlan(self.tensors, tuple(normalize_weights(weights)), self.int_rule, self.label_permutations,
                         self.check_finite, self.metadata)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> MergePlan:
        data = json.loads(text)
        tensors = tuple(TensorPlan(**{**t, "shape": tuple(t["shape"])}) for t in data.pop("tensors"))
        perms = tuple(tuple(p) if p is not None else None for p in data.pop("label_permutations"))
        metadata = tuple(tuple(m) for m in data.pop("metadata"))
        return cls(tensors=tensors, weights=tuple(data.pop("weights")), label_permutations=perms,
                   metadata=metadata, **data)



def build_plan(
    tensor_maps: Sequence[Mapping[str, TensorInfo]],
    weights: Sequence[float],
    *,
    names: Sequence[str] | None = None,
    dtype: torch.dtype | str | None = None,
    int_rule: IntRule = "first",
    label_permutations: Sequence[Sequence[int] | None] | None = None,
    num_labels: int | None = None,
    check_finite: bool = True,
) -> MergePlan:
    """Plan a weighted average from each ingredient's tensor index.

    Args:
        tensor_maps (`Sequence[Mapping[str, TensorInfo]]`):
            Each ingredient's tensors (from headers).
        weights (`Sequence[float]`):
            One weight per ingredient; normalised to sum to 1.
        names (`Sequence[str]`, *optional*):
            Ingredient names for errors.
        dtype (`torch.dtype` or `str`, *optional*):
            Output dtype of floating tensors; defaults to the ingredients' dtype ([`output_dtype`] when mixed).
        int_rule (`IntRule`, *optional*, defaults to `"first"`):
            How differing integer buffers are resolved.
        label_permutations (`Sequence`, *optional*):
            Per ingredient, the classifier row order aligning it to the first ingredient.
        num_labels (`int`, *optional*):
            Rows of the classifier tensors to permute.
        check_finite (`bool`, *optional*, defaults to `True`):
            Refuse NaN or Inf in any ingredient.

    Raises:
        [`SoupError`]: a tensor is missing, has another shape, or is floating in one ingredient and integer in another.
    """
    names = list(names or [f"ingredient {i}" for i in range(len(tensor_maps))])
    validate_int_rule(int_rule)
    ws = normalize_weights(weights)
    if len(ws) != len(tensor_maps):
        raise SoupError(f"got {len(ws)} weights for {len(tensor_maps)} ingredients.", fix="pass one weight per ingredient.")
    out_dtype = validate_dtype(dtype)
    out_code = dtype_code(out_dtype) if out_dtype is not None else None
    perms = tuple(tuple(p) if p is not None else None for p in (label_permutations or [None] * len(tensor_maps)))
    plans = []
    for name, info in tensor_maps[0].items():
        if constants.is_legacy_buffer(name) and any(name not in t for t in tensor_maps[1:]):
            continue  # a legacy buffer only some ingredients saved: left out (transformers rebuilds it)
        infos = []
        for ingredient, tensors in zip(names, tensor_maps):
            other = tensors.get(name)
            if other is None:
                raise SoupError("the tensor is missing.", ingredient=ingredient, tensor=name,
                                fix="run check_compatibility() to see every difference.")
            if other.shape != info.shape:
                raise SoupError(f"shape {list(other.shape)} differs from {list(info.shape)}.", ingredient=ingredient,
                                tensor=name, fix="soup only checkpoints of the same architecture and size.")
            infos.append(other)
        floats = {i.dtype in FLOAT_CODES for i in infos}
        if len(floats) > 1:
            raise SoupError("floating in some ingredients and integer in others.", tensor=name,
                            fix="re-export the checkpoints with consistent dtypes.")
        average = floats.pop()
        if average:
            code = out_code or output_dtype([i.dtype for i in infos])
        else:
            code = output_dtype([i.dtype for i in infos]) if len({i.dtype for i in infos}) == 1 else infos[0].dtype
        permute = (
            any(p is not None for p in perms) and num_labels is not None and len(info.shape) >= 1
            and info.shape[0] == num_labels and any(m in name for m in constants.CLASSIFIER_MARKERS)
        )
        plans.append(TensorPlan(name, tuple(info.shape), code, average, permute))
    for ingredient, tensors in zip(names[1:], tensor_maps[1:]):
        extra = [n for n in tensors if n not in tensor_maps[0] and not constants.is_legacy_buffer(n)]
        if extra:
            raise SoupError(f"has extra tensors {extra[:5]}.", ingredient=ingredient, tensor=extra[0],
                            fix="run check_compatibility() to see every difference.")
    return MergePlan(tuple(plans), tuple(ws), int_rule, perms, check_finite)
