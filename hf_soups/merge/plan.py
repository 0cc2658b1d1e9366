"""Merge plans: frozen, serialisable descriptions of what the engine computes. No I/O."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

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

_FP32_MAX = float(torch.finfo(torch.float32).max)
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
    """One output tensor: its name, shape, output dtype code and whether it is averaged.

    `weights` (one per input: the ingredients, then the base when the plan has one) overrides the plan-wide weights
    for this tensor; they are applied as given (not normalised; the base term may be negative). `source` sets the
    tensor from that one input, unchanged (integer tensors too). Both `None`: the plan-wide weights.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    average: bool
    permute_rows: bool = False
    weights: tuple[float, ...] | None = None
    source: int | None = None

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def numel(self) -> int:
        return numel(self.shape)


@dataclass(frozen=True)
class MergePlan:
    """What to compute: a weighted average of `len(weights)` ingredients, tensor by tensor.

    The inputs are the ingredients, then (with `base=True`) the base checkpoint at index `len(weights)`: the engine
    is given one reader per input. A tensor may override the plan-wide weights (`TensorPlan.weights`, one per
    input) or be set from one input (`TensorPlan.source`); see [`with_tensor_weights`] and [`with_sources`].

    Attributes:
        tensors (`tuple[TensorPlan, ...]`): every output tensor, in the first ingredient's order.
        weights (`tuple[float, ...]`): one weight per ingredient, summing to 1 (0 skips an ingredient).
        base (`bool`): the base checkpoint is an extra input (index `len(weights)`), used by per-tensor weights.
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
    base: bool = False

    @property
    def num_inputs(self) -> int:
        """Readers the engine needs: one per ingredient, plus the base when the plan has one."""
        return len(self.weights) + int(self.base)

    def with_weights(self, weights: Sequence[float]) -> MergePlan:
        """The same plan with other plan-wide weights (normalised); per-tensor weights and sources are kept."""
        return dataclasses.replace(self, weights=tuple(normalize_weights(weights)))

    def with_base(self) -> MergePlan:
        """The same plan with the base checkpoint as an extra input (index `len(self.weights)`)."""
        return dataclasses.replace(self, base=True)

    def with_tensor_weights(self, weights: Mapping[str, Sequence[float]]) -> MergePlan:
        """The same plan where each named tensor is `sum_i weights[name][i] * input_i` (inputs: the ingredients, then
        the base), the weights applied as given.

        Raises:
            [`SoupError`]: an unknown or non-floating tensor, not one weight per input, a weight not finite, or
                all zero.
        """
        checked = {}
        for name, ws in weights.items():
            tp = self.tensor(name)
            row = tuple(float(w) for w in ws)
            if not tp.average:
                raise SoupError("integer tensors are never averaged.", tensor=name,
                                fix="set it from one input (with_sources) or leave it to the plan's int_rule.")
            if len(row) != self.num_inputs:
                raise SoupError(f"got {len(row)} weights for {self.num_inputs} inputs.", tensor=name,
                                fix="give one weight per ingredient" + (", then one for the base." if self.base
                                                                         else "."))
            if not all(math.isfinite(w) and abs(w) <= _FP32_MAX for w in row) or not any(row):
                raise SoupError(f"weights {list(row)} are not finite, beyond fp32's range, or all zero.", tensor=name,
                                fix="give finite weights (|w| <= 3.4e38, the kernel's fp32) with one non-zero.")
            checked[name] = row
        return self._replace_tensors(lambda tp: dataclasses.replace(tp, weights=checked[tp.name], source=None)
                                     if tp.name in checked else tp)

    def with_sources(self, sources: Mapping[str, int]) -> MergePlan:
        """The same plan where each named tensor is copied from one input (an ingredient index, or the base's,
        `len(self.weights)`).

        Raises:
            [`SoupError`]: an unknown tensor or an input index out of range.
        """
        for name, index in sources.items():
            self.tensor(name)
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < self.num_inputs:
                raise SoupError(f"input {index!r} does not exist ({self.num_inputs} inputs).", tensor=name,
                                fix=f"give an index from 0 to {self.num_inputs - 1}.")
        return self._replace_tensors(lambda tp: dataclasses.replace(tp, source=sources[tp.name], weights=None)
                                     if tp.name in sources else tp)

    def mix(self, tp: TensorPlan) -> tuple[list[int], list[float]]:
        """The inputs of one floating tensor and their weights (zero weights left out), as the engine applies them."""
        if tp.source is not None:
            return [tp.source], [1.0]
        if tp.weights is not None:
            active = [i for i, w in enumerate(tp.weights) if w != 0]
            return active, [tp.weights[i] for i in active]
        active = [i for i, w in enumerate(self.weights) if w > 0]
        return active, [self.weights[i] for i in active]

    def check_inputs(self, tensor_maps: Sequence[Mapping[str, TensorInfo]], names: Sequence[str]) -> None:
        """Every input a per-tensor weight or a source names holds that tensor, in that shape ([`build_plan`]
        checked the ingredients against each other, not the base, which may lack the head or have another).

        Raises:
            [`SoupError`]: a tensor is missing or has another shape in an input the plan takes it from.
        """
        for tp in self.tensors:
            if tp.weights is None and tp.source is None:
                continue
            for i in self.mix(tp)[0] if tp.average else [tp.source]:
                info = tensor_maps[i].get(tp.name)
                if info is None or tuple(info.shape) != tp.shape:
                    found = "is missing" if info is None else f"has shape {list(info.shape)}, not {list(tp.shape)}"
                    raise SoupError(f"the tensor {found} in an input the plan takes it from.", ingredient=names[i],
                                    tensor=tp.name, fix="give this tensor no weight from that input (for the base: "
                                                        "keep the ingredients' mean there), or use a base of the "
                                                        "same architecture.")

    def row_order(self, tp: TensorPlan, index: int) -> tuple[int, ...] | None:
        """The row order aligning input `index`'s tensor `tp` to the first ingredient's labels (`None`: as stored;
        always for the base input)."""
        perms = self.label_permutations
        return perms[index] if tp.permute_rows and index < len(perms) else None

    def overrides(self) -> list[dict[str, Any]]:
        """The per-tensor part of the plan, grouped (for a recipe): `{"weights": [...], "tensors": [...]}` and
        `{"source": i, "tensors": [...]}` entries, in plan order. Empty for a plan-wide plan."""
        groups: dict[tuple[str, Any], list[str]] = {}
        for tp in self.tensors:
            if tp.source is not None:
                groups.setdefault(("source", tp.source), []).append(tp.name)
            elif tp.weights is not None:
                groups.setdefault(("weights", tp.weights), []).append(tp.name)
        return [{kind: list(value) if kind == "weights" else value, "tensors": names}
                for (kind, value), names in groups.items()]

    def with_overrides(self, overrides: Sequence[Mapping[str, Any]]) -> MergePlan:
        """The inverse of [`overrides`].

        Raises:
            [`SoupError`]: as [`with_tensor_weights`] and [`with_sources`].
        """
        plan = self
        for entry in overrides:
            if "source" in entry:
                plan = plan.with_sources({n: entry["source"] for n in entry["tensors"]})
            else:
                plan = plan.with_tensor_weights({n: entry["weights"] for n in entry["tensors"]})
        return plan

    def tensor(self, name: str) -> TensorPlan:
        """The plan of tensor `name`.

        Raises:
            [`SoupError`]: the plan has no such tensor.
        """
        for tp in self.tensors:
            if tp.name == name:
                return tp
        raise SoupError("the plan has no such tensor.", tensor=name, fix="name a tensor of the ingredients.")

    def _replace_tensors(self, fn: Any) -> MergePlan:
        return dataclasses.replace(self, tensors=tuple(fn(tp) for tp in self.tensors))

    def to_json(self) -> str:
        data = asdict(self)
        for t in data["tensors"]:  # per-tensor fields only when set: a plan-wide plan's JSON is unchanged
            for key in ("weights", "source"):
                if t[key] is None:
                    del t[key]
        if not data["base"]:
            del data["base"]
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> MergePlan:
        data = json.loads(text)
        tensors = tuple(TensorPlan(**{**t, "shape": tuple(t["shape"]),
                                      "weights": tuple(t["weights"]) if t.get("weights") is not None else None})
                        for t in data.pop("tensors"))
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
