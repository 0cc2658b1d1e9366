"""Candidate models in memory: one model skeleton whose parameters are overwritten per candidate."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..checkpoint.reader import CheckpointReader
from ..merge.plan import MergePlan
from ..modeling import load_model

__all__ = ["read_float_state", "checkpoint_float_state", "ModelHolder"]


def read_float_state(plan: MergePlan, reader: CheckpointReader, index: int,
                     device: str | torch.device | None = None) -> dict[str, torch.Tensor]:
    """The averaged (floating) tensors of ingredient `index` as fp32, classifier rows aligned per the plan.

    With `device`, each tensor is moved there as read (and converted to fp32 there): candidate soups are then built
    where they are evaluated, holding no CPU copy beyond the tensor being read.
    """
    out = {}
    perm = plan.label_permutations[index] if plan.label_permutations else None
    for tp in plan.tensors:
        if not tp.average:
            continue
        t = reader.read(tp.name)
        if device is not None:
            t = t.to(device, non_blocking=True)
        t = t.float()
        if perm is not None and tp.permute_rows:
            t = t[list(perm)]
        out[tp.name] = t
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
    from ..merge.plan import build_plan

    return read_float_state(build_plan([reader.tensors], [1.0]), reader, 0)


class ModelHolder:
    """Loads the first ingredient once (`from_pretrained`, fp32) on the evaluation device and swaps candidate weights
    into it in place.

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
        try:
            return self.params[self.name_map.get(name, name)]
        except KeyError:
            raise KeyError(f"the model has no tensor '{name}'") from None

    def model_names(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """`state` keyed by the model's parameter names instead of the checkpoint's."""
        return {self.name_map.get(k, k): v for k, v in state.items()}

    def load(self, state: Mapping[str, torch.Tensor]) -> Any:
        """Copy `state` into the model; returns the model."""
        with torch.no_grad():
            for name, value in state.items():
                self._target(name).copy_(value)
        return self.model

    def load_mean(self, running_sum: Mapping[str, torch.Tensor], extra: Mapping[str, torch.Tensor] | None,
                  count: int) -> Any:
        """Load `(running_sum + extra) / count` without touching `running_sum`: one fused update per tensor."""
        with torch.no_grad():
            for name, value in running_sum.items():
                target = self._target(name)
                if extra is not None:
                    torch.add(value, extra[name], out=target)
                    target.div_(count)
                else:
                    torch.div(value, count, out=target)
        return self.model

    def load_combination(self, states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]) -> Any:
        """Load `sum_k w_k * states[k]`."""
        with torch.no_grad():
            for name in states[0]:
                target = self._target(name)
                target.zero_()
                for w, s in zip(weights, states):
                    if w:
                        target.add_(s[name], alpha=float(w))
        return self.model
