"""Candidate models in memory: one model skeleton whose parameters are overwritten per candidate.

Every candidate soup is computed by the merge kernel ([`weighted_sum`]) straight into the model's parameters, in the
engine's order, so a candidate scored in memory is bit for bit the soup the engine writes for the same weights.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch

from ..checkpoint.format import numel
from ..checkpoint.reader import CheckpointReader
from ..errors import EvaluationError
from ..merge.ops import equal_weights_scale, weighted_sum
from ..merge.plan import MergePlan, TensorPlan, build_plan, normalize_weights
from ..modeling import load_model

__all__ = ["read_float_state", "checkpoint_float_state", "ModelHolder"]


def _aligned(plan: MergePlan, reader: CheckpointReader, index: int, tp: TensorPlan, *, mapped: bool = False
             ) -> torch.Tensor:
    """Ingredient `index`'s tensor `tp`, classifier rows aligned per the plan (its own dtype). With `mapped`, a
    read-only view of the file's mapped pages where the reader has them (no copy: a candidate re-reads the same
    pages from the page cache), else a private copy."""
    t = _mapped(reader, tp.name) if mapped else None
    if t is None:
        t = reader.read(tp.name)
    perm = plan.row_order(tp, index)
    return t[list(perm)] if perm is not None else t


def _mapped(reader: CheckpointReader, name: str) -> torch.Tensor | None:
    info = reader.tensors[name]
    view = reader.view_range(name, 0, numel(info.shape))
    return view.view(info.shape) if view is not None else None


def read_float_state(plan: MergePlan, reader: CheckpointReader, index: int,
                     device: str | torch.device | None = None) -> dict[str, torch.Tensor]:
    """The averaged (floating) tensors of ingredient `index` as fp32, classifier rows aligned per the plan.

    With `device`, each tensor is moved there as read (and converted to fp32 there): candidate soups are then built
    where they are evaluated, holding no CPU copy beyond the tensor being read.
    """
    out = {}
    for tp in plan.tensors:
        if tp.average:
            t = _aligned(plan, reader, index, tp)
            out[tp.name] = (t.to(device, non_blocking=True) if device is not None else t).float()
    return out


def _checkpoint_to_model_names(model: Any, state: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """Checkpoint name -> model name. transformers >= 5 renames some weights on load (and back on save), so the
    names in a safetensors file can differ from `model.state_dict()`; the renaming is read from transformers itself."""
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:  # older transformers: names are the same
        return {}
    try:
        saved = revert_weight_conversion(model, dict(state))
    except Exception:
        return {}
    by_id = {id(t): k for k, t in state.items()}
    return {saved_name: by_id[id(t)] for saved_name, t in saved.items() if id(t) in by_id and saved_name != by_id[id(t)]}


def checkpoint_float_state(reader: CheckpointReader) -> dict[str, torch.Tensor]:
    """All floating tensors of one checkpoint (a soup, a base model) as fp32."""
    return read_float_state(build_plan([reader.tensors], [1.0]), reader, 0)


class ModelHolder:
    """Loads the first ingredient once (`from_pretrained`, fp32) on the evaluation device and computes candidate
    weights into it in place (with the merge kernel).

    Integer buffers keep the loaded ingredient's values (the `int_rule="first"` convention).

    Args:
        directory (`str`): the checkpoint loaded as the skeleton (the first ingredient).
        config (`Mapping`): its config.
        trust_remote_code (`bool`, *optional*, defaults to `False`): allow `auto_map` configs.
        device (`str` or `torch.device`, *optional*): the evaluation device; defaults to [`resolve_eval_device`]'s
            rule. Candidate states should live there too (see `read_float_state(device=...)`).
    """

    def __init__(self, directory: str, config: Mapping[str, Any], trust_remote_code: bool = False,
                 device: str | torch.device | None = None) -> None:
        from .device import resolve_eval_device

        self.device = resolve_eval_device(device)
        self.model = load_model(directory, config, trust_remote_code).float().eval().to(self.device)
        self.params = self.model.state_dict(keep_vars=False)
        self.name_map = _checkpoint_to_model_names(self.model, self.params)

    def _target(self, name: str) -> torch.Tensor:
        target = self.params.get(self.name_map.get(name, name))
        if target is None:
            raise EvaluationError(
                "the checkpoint holds a tensor that the model built from its config does not have.", tensor=name,
                fix="check that the ingredient loads with from_pretrained, or pass merge_options="
                    "MergeOptions(arch_check=True) to see every mismatch.")
        return target

    def model_names(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """`state` keyed by the model's parameter names instead of the checkpoint's."""
        return {self.name_map.get(k, k): v for k, v in state.items()}

    def load(self, state: Mapping[str, torch.Tensor]) -> Any:
        """Copy `state` into the model; returns the model."""
        with torch.no_grad():
            for name, value in state.items():
                self._target(name).copy_(value)
        return self.model

    def load_plan(self, plan: MergePlan, readers: Sequence[CheckpointReader]) -> Any:
        """Compute the soup `plan` describes (its weights, per tensor where it says so; zero weights skipped) into
        the model, tensor by tensor, reading each input's tensor when it is needed; returns the model.

        `readers` holds one reader per plan input (the ingredients, then the base when `plan.base`).

        Raises:
            [`SoupError`]: an input lacks a tensor the plan takes from it (see `MergePlan.check_inputs`)."""
        plan.check_inputs([r.tensors for r in readers],
                          [getattr(r, "ingredient", None) or f"input {i}" for i, r in enumerate(readers)])
        with torch.no_grad():
            for tp in plan.tensors:
                if tp.average:
                    active, weights = plan.mix(tp)
                    target = self._target(tp.name)
                    tensors: Iterator[torch.Tensor] = (  # read-only views: only weighted_sum reads them
                        _aligned(plan, readers[i], i, tp, mapped=True).to(target.device) for i in active)
                    weighted_sum(tensors, weights, out=target)
                    scale = equal_weights_scale(weights) if tp.weights is not None else None
                    if scale is not None:  # per-tensor weights are applied as given (see merge.ops.mix_sum)
                        target.mul_(scale)
        return self.model

    def load_combination(self, states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]) -> Any:
        """Load `sum_k w_k * states[k]` with the weights normalised as a plan normalises them."""
        ws = normalize_weights(weights)
        with torch.no_grad():
            for name in states[0]:
                target = self._target(name)
                weighted_sum((s[name].to(target.device) for s in states), ws, out=target)
        return self.model
