"""The adapter layout: a PEFT LoRA adapter (`adapter_config.json` + `adapter_model.safetensors`) read as the merged
model it stands for, W + s·B·A for each target module, a chunk of rows at a time. No peft, no HTTP here.

peft's rules, reproduced (`peft/tuners/lora/layer.py`, `peft/utils/save_and_load.py`):

- the file's keys are `base_model.model.<module>.lora_A.weight` (`r × in`) and `...lora_B.weight` (`out × r`);
  embeddings use `lora_embedding_A` (`r × num_embeddings`) and `lora_embedding_B` (`dim × r`);
- the scale is `lora_alpha / r`, or `lora_alpha / √r` with `use_rslora`; `rank_pattern`/`alpha_pattern` keys match a
  module's name or a dotted suffix of it (`peft.utils.other.get_pattern_key`);
- ΔW = (B·A)ᵀ·s with `fan_in_fan_out` (GPT-2's Conv1D stores `in × out`) and for embeddings, B·A·s otherwise;
- any other key (`modules_to_save`, e.g. a classifier head) replaces the base's tensor of the same name.

Everything else a LoRA config may switch on (DoRA, `lora_bias`, `bias != "none"`, ...) is refused by
[`adapter_refusals`] with its reason: merging it as plain LoRA would be silently wrong.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ..errors import CorruptCheckpointError
from .format import TensorInfo
from .layout import ADAPTER_CONFIG, ADAPTER_PICKLE, ADAPTER_WEIGHTS, is_adapter_listing
from .reader import CheckpointReader

__all__ = ["ADAPTER_CONFIG", "ADAPTER_WEIGHTS", "AdapterConfig", "AdapterLayout", "Delta", "AdapterReader",
           "is_adapter_listing", "parse_adapter_config", "adapter_refusals", "build_layout"]

_PREFIX = "base_model.model."
#: The longest `rank_pattern`/`alpha_pattern` key accepted (peft matches them as regular expressions).
_MAX_PATTERN = 256
_LORA_KEY = re.compile(r"^(?P<module>.+)\.(?P<kind>lora_A|lora_B|lora_embedding_A|lora_embedding_B)"
                       r"(?:\.(?P<adapter>[^.]+))?(?:\.weight)?$")


@dataclass(frozen=True)
class AdapterConfig:
    """The fields of `adapter_config.json` that decide the merged weights (the whole file is kept in `raw`)."""

    peft_type: str
    base_model: str | None
    base_revision: str | None
    r: int
    lora_alpha: float
    use_rslora: bool
    fan_in_fan_out: bool
    rank_pattern: Mapping[str, int]
    alpha_pattern: Mapping[str, float]
    modules_to_save: tuple[str, ...]
    target_modules: tuple[str, ...] | str | None
    raw: Mapping[str, Any] = field(repr=False, compare=False)

    def scaling(self, module: str, rank: int) -> float:
        """peft's scale for `module` (its name inside the base model) at rank `rank` (`r`, or its rank_pattern)."""
        alpha = self.alpha_pattern.get(_pattern_key(self.alpha_pattern, module), self.lora_alpha)
        return alpha / math.sqrt(rank) if self.use_rslora else alpha / rank

    def rank(self, module: str) -> int:
        return int(self.rank_pattern.get(_pattern_key(self.rank_pattern, module), self.r))


def _pattern_key(patterns: Mapping[str, Any], module: str) -> str:
    """peft's `get_pattern_key`: the first pattern that matches the module's name or a dotted suffix of it."""
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", module):
            return key
    return module


def parse_adapter_config(raw: bytes | str, ingredient: str) -> AdapterConfig:
    """Parse `adapter_config.json` into an [`AdapterConfig`].

    Raises:
        [`CorruptCheckpointError`]: not a JSON object, or a field of the wrong type (named).
    """
    def corrupt(msg: str) -> CorruptCheckpointError:
        return CorruptCheckpointError(msg, ingredient=ingredient, file=ADAPTER_CONFIG,
                                      fix="re-save the adapter with peft (`model.save_pretrained(...)`).")

    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise corrupt(f"not valid JSON ({type(e).__name__}).") from None
    if not isinstance(data, dict):
        raise corrupt("not a JSON object.")

    def kind_name(kind: type) -> str:
        return "a positive integer" if kind is int else "a finite number"

    def valid(value: Any, kind: type) -> bool:
        """A rank is a positive integer; an alpha any finite number (peft merges a negative or zero alpha as it is)."""
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        return value > 0 and int(value) == value if kind is int else True

    def number(key: str, default: Any, kind: type = float) -> Any:
        value = data.get(key, default)
        if not valid(value, kind):
            raise corrupt(f"`{key}` must be {kind_name(kind)}, got {str(value)[:40]!r}.")
        return kind(value)

    def pattern(key: str, kind: type) -> dict[str, Any]:
        value = data.get(key) or {}
        if not isinstance(value, dict) or not all(isinstance(k, str) and 0 < len(k) <= _MAX_PATTERN for k in value):
            raise corrupt(f"`{key}` must map module names (at most {_MAX_PATTERN} characters) to numbers.")
        out = {}
        for k, v in value.items():
            if not valid(v, kind):
                raise corrupt(f"`{key}[{k[:60]!r}]` must be {kind_name(kind)}.")
            try:
                re.compile(k)  # peft matches these keys as regular expressions
            except (re.error, RecursionError, OverflowError):
                raise corrupt(f"`{key}` key {k[:60]!r} is not a valid regular expression.") from None
            out[k] = kind(v)
        return out

    def text(key: str) -> str | None:
        value = data.get(key)
        if value is not None and not isinstance(value, str):
            raise corrupt(f"`{key}` must be a string.")
        return value

    modules = data.get("modules_to_save") or []
    if not isinstance(modules, list) or not all(isinstance(m, str) for m in modules):
        raise corrupt("`modules_to_save` must be a list of module names.")
    targets = data.get("target_modules")
    if targets is not None and not isinstance(targets, str) and not (
            isinstance(targets, list) and all(isinstance(t, str) for t in targets)):
        raise corrupt("`target_modules` must be a list of module names or a regular expression string.")
    return AdapterConfig(
        peft_type=(text("peft_type") or "").upper(), base_model=text("base_model_name_or_path"),
        base_revision=text("revision"), r=number("r", 8, int), lora_alpha=number("lora_alpha", 8),
        use_rslora=bool(data.get("use_rslora", False)), fan_in_fan_out=bool(data.get("fan_in_fan_out", False)),
        rank_pattern=pattern("rank_pattern", int), alpha_pattern=pattern("alpha_pattern", float),
        modules_to_save=tuple(modules),
        target_modules=tuple(targets) if isinstance(targets, list) else targets, raw=data,
    )


#: (config field, whether it is switched on, why it cannot be merged as plain LoRA, the fix)
_REFUSED: tuple[tuple[str, Any, str, str], ...] = (
    ("use_dora", lambda v: bool(v), "a DoRA adapter rescales each column by a learned magnitude: W + s·B·A is not its "
     "merged weight", "merge it with peft (`merge_and_unload()`), save the merged model and soup that"),
    ("lora_bias", lambda v: bool(v), "`lora_bias=True` trains a bias in lora_B that plain W + s·B·A leaves out",
     "merge it with peft (`merge_and_unload()`), save the merged model and soup that"),
    ("bias", lambda v: v not in (None, "none"), "`bias` other than \"none\" trains the base model's biases, which "
     "peft stores beside the LoRA weights", "merge it with peft (`merge_and_unload()`), save the merged model and "
     "soup that"),
    ("layer_replication", lambda v: bool(v), "`layer_replication` changes the base model's layers",
     "merge it with peft (`merge_and_unload()`), save the merged model and soup that"),
    ("trainable_token_indices", lambda v: bool(v), "trainable tokens change embedding rows outside LoRA",
     "merge it with peft (`merge_and_unload()`), save the merged model and soup that"),
    ("target_parameters", lambda v: bool(v), "LoRA on parameters (`target_parameters`) is not a per-module W + s·B·A",
     "merge it with peft (`merge_and_unload()`), save the merged model and soup that"),
    ("alora_invocation_tokens", lambda v: bool(v), "an activated LoRA (aLoRA) applies only after its invocation "
     "tokens, so it has no merged weights", "soup LoRA adapters without aLoRA"),
)


def adapter_refusals(config: AdapterConfig, keys: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """Why this adapter cannot be read as W + s·B·A: `(field, reason, fix)` each; empty when it can.

    Args:
        config ([`AdapterConfig`]): the parsed config.
        keys (`Mapping[str, Any]`): the adapter file's tensor names (DoRA's magnitude vectors betray it too).
    """
    if config.peft_type != "LORA":
        kind = config.peft_type or "unknown"
        why = {"IA3": "an IA3 adapter scales activations; it is not a low-rank weight delta",
               "PREFIX_TUNING": "prefix tuning adds virtual tokens; it has no merged weights",
               "PROMPT_TUNING": "prompt tuning adds virtual tokens; it has no merged weights",
               "P_TUNING": "p-tuning adds virtual tokens; it has no merged weights"}.get(
            kind, f"hf_soups reads LoRA adapters only, this one is {kind}")
        fix = ("merge it with peft (`merge_and_unload()`), save the merged model and soup that" if kind == "IA3"
               else "soup LoRA adapters (peft_type LORA) or full fine-tunes")
        return [("peft_type", f"peft_type is {kind}: {why}.", fix + ".")]
    out = [(name, f"{why}.", fix + ".") for name, on, why, fix in _REFUSED if on(config.raw.get(name))]
    if not any(f == "use_dora" for f, _, _ in out) and any("lora_magnitude_vector" in k for k in keys):
        out.append(("use_dora", "the file holds DoRA magnitude vectors (lora_magnitude_vector).",
                    "merge it with peft (`merge_and_unload()`), save the merged model and soup that."))
    return out


@dataclass(frozen=True)
class Delta:
    """One target module: ΔW = s·B·A (or its transpose) added to the base tensor `target`."""

    target: str
    a_key: str
    b_key: str
    rank: int
    scaling: float
    transposed: bool


@dataclass(frozen=True)
class AdapterLayout:
    """Where an adapter's weights go in its base: deltas by base tensor name, replaced tensors (base name -> key)."""

    deltas: Mapping[str, Delta]
    replaced: Mapping[str, str]

    @property
    def modules(self) -> tuple[str, ...]:
        return tuple(sorted(t.removesuffix(".weight") for t in self.deltas))


def _base_name(key: str) -> str:
    name = key.removeprefix(_PREFIX)
    # peft < 0.7 wrote modules_to_save as `<m>.modules_to_save.<adapter>.<param>`; later versions as `<m>.<param>`
    return re.sub(r"\.modules_to_save\.[^.]+\.", ".", name)


def build_layout(config: AdapterConfig, header: Mapping[str, TensorInfo], ingredient: str) -> AdapterLayout:
    """Pair each module's lora_A/lora_B, with its rank and scale; every other key replaces a base tensor.

    Raises:
        [`CorruptCheckpointError`]: a lora_A without its lora_B (or the reverse), shapes that do not pair, or a rank
            other than the config's (`r`/`rank_pattern`).
    """
    pairs: dict[str, dict[str, str]] = {}
    replaced: dict[str, str] = {}
    for key in header:
        match = _LORA_KEY.match(key)
        if match is None:
            replaced[_base_name(key)] = key
            continue
        entry = pairs.setdefault(match["module"].removeprefix(_PREFIX), {})
        entry[match["kind"][-1]] = key
        if "embedding" in match["kind"]:
            entry["embedding"] = key
    deltas = {}
    for module, keys in sorted(pairs.items()):
        if "A" not in keys or "B" not in keys:
            raise CorruptCheckpointError(f"module '{module}' has lora_{'A' if 'A' in keys else 'B'} without its pair.",
                                         ingredient=ingredient, file=ADAPTER_WEIGHTS, tensor=keys.get("A", keys.get("B")),
                                         fix="re-save the adapter with peft.")
        a, b = header[keys["A"]].shape, header[keys["B"]].shape
        if len(a) != 2 or len(b) != 2 or a[0] != b[1]:
            raise CorruptCheckpointError(f"lora_A {list(a)} and lora_B {list(b)} are not a pair of matrices of one "
                                         "rank (convolution adapters are not supported).", ingredient=ingredient,
                                         file=ADAPTER_WEIGHTS, tensor=keys["A"], fix="soup linear/embedding LoRA only.")
        rank = config.rank(module)
        if rank != a[0]:
            raise CorruptCheckpointError(f"module '{module}' has rank {a[0]} but the config says {rank}.",
                                         ingredient=ingredient, file=ADAPTER_WEIGHTS, tensor=keys["A"],
                                         fix="re-save the adapter with peft; its config and weights disagree.")
        embedding = "embedding" in keys
        deltas[f"{module}.weight"] = Delta(f"{module}.weight", keys["A"], keys["B"], rank, config.scaling(module, rank),
                                           transposed=embedding or config.fan_in_fan_out)
    return AdapterLayout(deltas, replaced)


def delta_shape(delta: Delta, header: Mapping[str, TensorInfo]) -> tuple[int, int]:
    """The shape of ΔW, as the base tensor must have it."""
    a, b = header[delta.a_key].shape, header[delta.b_key].shape
    return (a[1], b[0]) if delta.transposed else (b[0], a[1])


def layout_tensors(base: Mapping[str, TensorInfo], layout: AdapterLayout,
                   header: Mapping[str, TensorInfo]) -> dict[str, TensorInfo]:
    """The merged model's tensor index: the base's, with replaced tensors taking the adapter's dtype."""
    out = dict(base)
    for name, key in layout.replaced.items():
        if name in out:
            out[name] = replace(header[key], name=name)
    return out


class AdapterReader(CheckpointReader):
    """An adapter read as its merged model: `base + s·B·A` for target modules, the adapter's own tensors for
    `modules_to_save`, the base elsewhere. A chunk of W + s·B[rows]·A is computed only when the engine asks for it.

    The base reader is shared between adapters and is not closed here; the adapter reader is.
    """

    def __init__(self, base: CheckpointReader, adapter: CheckpointReader, layout: AdapterLayout,
                 ingredient: str) -> None:
        self.base = base
        self.adapter = adapter
        self.layout = layout
        self.ingredient = ingredient
        self.tensors = layout_tensors(base.tensors, layout, adapter.tensors)

    def _small(self, key: str) -> torch.Tensor:
        info = self.adapter.tensors[key]
        view = self.adapter.view_range(key, 0, info.numel)
        flat = view if view is not None else self.adapter.read_range(key, 0, info.numel)
        return flat.view(info.shape).float()

    def rows(self, name: str, first: int, last: int) -> torch.Tensor:
        """Rows `[first, last)` of the merged tensor `name`, in fp32."""
        delta = self.layout.deltas[name]
        cols = self.base.tensors[name].shape[1]
        base = self.base.view_range(name, first * cols, (last - first) * cols)
        if base is None:
            base = self.base.read_range(name, first * cols, (last - first) * cols)
        base = base.view(last - first, cols).float()
        a = self._small(delta.a_key)
        if delta.transposed:  # ΔW = (B·A)ᵀ: rows of ΔW are columns of A
            b = self._small(delta.b_key)
            return torch.addmm(base, a[:, first:last].t(), b.t(), alpha=delta.scaling)
        r = delta.rank
        view = self.adapter.view_range(delta.b_key, first * r, (last - first) * r)
        b_rows = view if view is not None else self.adapter.read_range(delta.b_key, first * r, (last - first) * r)
        return torch.addmm(base, b_rows.view(last - first, r).float(), a, alpha=delta.scaling)

    def read_range(self, name: str, start: int, count: int, buffer: torch.Tensor | None = None) -> torch.Tensor:
        if name in self.layout.deltas:
            cols = self.base.tensors[name].shape[1]
            first, last = start // cols, -(-(start + count) // cols)
            merged = self.rows(name, first, last).view(-1)[start - first * cols: start - first * cols + count]
            return merged.to(self.tensors[name].torch_dtype)
        if name in self.layout.replaced:
            return self.adapter.read_range(self.layout.replaced[name], start, count, buffer)
        return self.base.read_range(name, start, count, buffer)

    def read(self, name: str, buffer: torch.Tensor | None = None) -> torch.Tensor:
        info = self.tensors[name]
        return self.read_range(name, 0, info.numel, buffer).view(info.shape)

    def view_range(self, name: str, start: int, count: int) -> torch.Tensor | None:
        if name in self.layout.deltas:
            return None
        if name in self.layout.replaced:
            return self.adapter.view_range(self.layout.replaced[name], start, count)
        return self.base.view_range(name, start, count)

    def check_unchanged(self) -> None:
        self.base.check_unchanged()
        self.adapter.check_unchanged()

    def close(self) -> None:
        self.adapter.close()


def factorise(factors: list[tuple[torch.Tensor, torch.Tensor]], rank: int
              ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The best rank-`rank` LoRA pair of ΔW = Σ Bₖ·Aₖ (truncated SVD, Eckart–Young), without forming ΔW.

    With P = [B₁ … Bₖ] and Q = [A₁; …; Aₖ], ΔW = P·Q; QR of P and of Qᵀ reduce the SVD to one of R × R (R = Σ rₖ).

    Args:
        factors (`list[tuple[torch.Tensor, torch.Tensor]]`): `(B, A)` pairs (`out × r`, `r × in`), weights and scales
            already folded into B.
        rank (`int`): the output rank.

    Returns:
        `tuple[torch.Tensor, torch.Tensor, float]`: `B` (`out × rank`), `A` (`rank × in`), in fp64, and the relative
        Frobenius error ‖ΔW − B·A‖ / ‖ΔW‖ (0 for a zero ΔW).
    """
    p = torch.cat([b.double() for b, _ in factors], dim=1)
    q = torch.cat([a.double() for _, a in factors], dim=0)
    qp, rp = torch.linalg.qr(p)
    qq, rq = torch.linalg.qr(q.t())
    u, s, vh = torch.linalg.svd(rp @ rq.t())
    keep = min(rank, s.numel())
    root = s[:keep].sqrt()
    b = torch.zeros(p.shape[0], rank, dtype=torch.float64)
    a = torch.zeros(rank, q.shape[1], dtype=torch.float64)
    b[:, :keep] = (qp @ u[:, :keep]) * root
    a[:keep] = root[:, None] * (vh[:keep] @ qq.t())
    total = float(s.square().sum())
    error = math.sqrt(float(s[keep:].square().sum()) / total) if total > 0 else 0.0
    return b, a, error
