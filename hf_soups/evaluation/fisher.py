"""Fisher-weighted averaging (Matena & Raffel, NeurIPS 2022, arXiv:2111.09832): the diagonal Fisher and the merge.

The diagonal Fisher of one model on held-out examples is the expected Fisher over the model's own predictive
distribution, `F = mean_x sum_y p(y|x) * (d log p(y|x) / d theta)^2`, floored at `1e-6` (with two classes, one
gradient per example: `p_0 p_1 (d(l_1 - l_0) / d theta)^2`, the same sum). Per-example gradients are
batched with `torch.func` (`functional_call`, `vmap`, `grad`); the examples of a batch are split into chunks so that
the per-example gradients alive at once total at most one model (at least one example per chunk).

The merge is `sum_i w_i * F_i * theta_i / sum_i w_i * F_i`, computed one ingredient at a time into a running
numerator and denominator (fp32; memory-mapped files under a temporary directory once they exceed a threshold).
Floating buffers (BatchNorm statistics) and parameters without a gradient have no Fisher: they are averaged with the
plain weights `w_i` (the same formula with `F = 1`). Private memory: the model, its Fisher, one chunk of per-example
gradients, whatever K is (and the two running buffers when they are not memory-mapped).

Supported tasks: single-label classification through a softmax head, i.e. the tasks `"text"`
(`*ForSequenceClassification`, one sentence or a pair) and `"image"` (`*ForImageClassification`). Other tasks raise
[`EvaluationError`].
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import EvaluationError
from ..merge.plan import MergePlan, normalize_weights

__all__ = ["FISHER_TASKS", "FLOOR", "Fisher", "FisherSoup", "diagonal_fisher", "fisher_merge", "fisher_soup"]

#: Task names (see `evaluation/tasks/`) whose Fisher is computed: a softmax over the classes of one example.
FISHER_TASKS = ("text", "image")
#: The floor of every Fisher value, so that a weight never divides by zero.
FLOOR = 1e-6
#: Running buffers larger than this many bytes (numerator + denominator) are memory-mapped files, unless the
#: environment variable HF_SOUPS_FISHER_MEMMAP_BYTES says otherwise.
MEMMAP_BYTES = 64 * 2**20
_CHUNK_BYTES = 64 * 2**20  # per-example gradients alive at once: at most max(one model, this)


@dataclass
class Fisher:
    """One model's diagonal Fisher on held-out data.

    Attributes:
        values (`dict[str, torch.Tensor]`): fp32, floored, keyed by the model's parameter names (parameters with
            a gradient only).
        no_gradient (`tuple[str, ...]`): parameters that take no gradient (`requires_grad=False`); with the
            buffers they are averaged with the plain weights.
        zero (`tuple[str, ...]`): parameters whose gradient was zero on every example (their Fisher is the floor).
        examples (`int`): the number of held-out examples used.
        batched (`bool`): whether the per-example gradients were batched with `vmap` (else one example at a time,
            for models whose forward has data-dependent control flow).
    """

    values: dict[str, torch.Tensor]
    no_gradient: tuple[str, ...]
    zero: tuple[str, ...]
    examples: int
    batched: bool = True


def _check_task(task: Any) -> None:
    if getattr(task, "name", None) not in FISHER_TASKS:
        raise EvaluationError(
            f"Fisher-weighted merging supports single-label classification ({', '.join(FISHER_TASKS)} tasks), "
            f"not the {getattr(task, 'title', None) or getattr(task, 'name', task)!r} task.",
            fix="use method='uniform', 'weighted', 'greedy' or 'learned' for this model.")


def _vmappable(inputs: Mapping[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The batch with a 2-D padding mask turned into a prepared 4-D additive mask `(B, 1, L, L)`: transformers then
    uses it as is, instead of inspecting its values (data-dependent control flow, which `vmap` cannot batch)."""
    out = dict(inputs)
    mask = out.get("attention_mask")
    if mask is not None and mask.dim() == 2:
        length = mask.shape[1]
        additive = (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min
        out["attention_mask"] = additive.expand(-1, 1, length, -1).contiguous()
    return out


def diagonal_fisher(model: Any, batches: Sequence[tuple[torch.Tensor, Mapping[str, torch.Tensor]]], task: Any, *,
                    floor: float = FLOOR, max_examples: int | None = None) -> Fisher:
    """The diagonal expected Fisher of `model` on held-out batches.

    Args:
        model (`torch.nn.Module`): the model (run in eval mode, fp32, on its own device).
        batches (`Sequence`): `(row indices, model inputs)` batches, e.g. [`Evaluator.batches`].
        task ([`Task`]): the evaluation task; its `output` gives the logits.
        floor (`float`, *optional*, defaults to `1e-6`): the smallest Fisher value.
        max_examples (`int`, *optional*): use only the first `max_examples` examples of `batches`.

    Returns:
        [`Fisher`]: the values and the number of examples used.

    Raises:
        [`EvaluationError`]: the task is not supported, or no example was given.
    """
    from torch.func import functional_call, grad, vmap

    _check_task(task)
    model.eval()
    device = next(model.parameters()).device
    trainable = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    fixed = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    fixed.update(dict(model.named_buffers()))
    sums = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in trainable.items()}
    model_bytes = sum(p.numel() * 4 for p in trainable.values()) or 1
    chunk = max(1, max(model_bytes, _CHUNK_BYTES) // model_bytes)

    def log_prob(params: dict[str, torch.Tensor], inputs: dict[str, torch.Tensor], y: int) -> torch.Tensor:
        one = {k: v.unsqueeze(0) for k, v in inputs.items()}
        logits = task.output(functional_call(model, (params, fixed), args=(), kwargs=one))
        return torch.log_softmax(logits.float().reshape(-1), 0)[y]

    def log_odds(params: dict[str, torch.Tensor], inputs: dict[str, torch.Tensor], y: int) -> torch.Tensor:
        one = {k: v.unsqueeze(0) for k, v in inputs.items()}
        logits = task.output(functional_call(model, (params, fixed), args=(), kwargs=one)).float().reshape(-1)
        return logits[1] - logits[0]

    def terms(probs: torch.Tensor) -> tuple[Any, list[tuple[int, torch.Tensor]]]:
        """The function to differentiate and its `(y, weight)` terms. Two classes need one gradient, not two: with
        `z = l_1 - l_0`, `d log p_1 = p_0 dz` and `d log p_0 = -p_1 dz`, so `sum_y p_y (d log p_y)^2 = p_0 p_1 dz^2`."""
        if probs.shape[-1] == 2:
            return log_odds, [(1, probs[:, 0] * probs[:, 1])]
        return log_prob, [(y, probs[:, y]) for y in range(probs.shape[-1])]

    batched = True
    examples = 0
    for _, inputs in batches:
        inputs = {k: v.to(device) for k, v in inputs.items()}
        size = len(next(iter(inputs.values())))
        if max_examples is not None:
            size = min(size, max_examples - examples)
            if size <= 0:
                break
            inputs = {k: v[:size] for k, v in inputs.items()}
        with torch.no_grad():
            probs = torch.softmax(task.output(model(**inputs)).float(), -1)
        function, weighted = terms(probs)
        per_example = vmap(grad(function), in_dims=(None, 0, None))
        single = grad(function)
        prepared = _vmappable(inputs, torch.float32)
        for start in range(0, size, chunk):
            part = slice(start, min(size, start + chunk))
            for y, weights in weighted:
                weight = weights[part]
                if batched:
                    try:
                        with warnings.catch_warnings():
                            warnings.filterwarnings("ignore", message=".*batching rule.*")
                            grads = per_example(trainable, {k: v[part] for k, v in prepared.items()}, y)
                    except RuntimeError as e:
                        if "vmap" not in str(e):
                            raise
                        batched = False  # data-dependent control flow in the forward: one example at a time
                if not batched:
                    rows = [single(trainable, {k: v[j] for k, v in inputs.items()}, y)
                            for j in range(part.start, part.stop)]
                    grads = {n: torch.stack([r[n] for r in rows]) for n in trainable}
                    del rows
                for n, g in grads.items():
                    g = g.square_().mul_(weight.view(-1, *([1] * (g.dim() - 1))))
                    sums[n].add_(g.sum(0))
                del grads
        examples += size
    if examples == 0:
        raise EvaluationError("the Fisher needs at least one held-out example; none was given.",
                              param="eval_dataset", fix="pass a non-empty held-out set.")
    zero = tuple(n for n, s in sums.items() if not bool(s.any()))
    for s in sums.values():
        s.div_(examples).clamp_(min=floor)
    no_gradient = tuple(n for n, p in model.named_parameters() if not p.requires_grad)
    return Fisher(sums, no_gradient, zero, examples, batched)


def _memmap_bytes() -> int:
    """HF_SOUPS_FISHER_MEMMAP_BYTES (a size: bytes, or "64MiB"), else [`MEMMAP_BYTES`].

    Raises:
        [`InvalidArgumentError`]: the variable is not a positive size.
    """
    from ..validation import parse_size

    text = os.environ.get("HF_SOUPS_FISHER_MEMMAP_BYTES")
    return MEMMAP_BYTES if text is None else parse_size(text, parameter="HF_SOUPS_FISHER_MEMMAP_BYTES")


class _Buffers:
    """fp32 running buffers, one slot per tensor name, in memory or in one memory-mapped file."""

    def __init__(self, shapes: Mapping[str, tuple[int, ...]], directory: str | None, label: str) -> None:
        total = sum(_numel(s) for s in shapes.values())
        if directory is not None:
            flat = torch.from_file(os.path.join(directory, f"{label}.f32"), shared=True, size=total,
                                   dtype=torch.float32)
            flat.zero_()
        else:
            flat = torch.zeros(total, dtype=torch.float32)
        self.views: dict[str, torch.Tensor] = {}
        offset = 0
        for name, shape in shapes.items():
            n = _numel(shape)
            self.views[name] = flat[offset : offset + n].view(shape)
            offset += n


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


@dataclass
class FisherSoup:
    """The Fisher-weighted soup, held as running numerator and denominator buffers until read.

    Attributes:
        weights (`tuple[float, ...]`): the ingredients' weights `w_i` (normalised).
        examples (`int`): held-out examples each ingredient's Fisher used.
        uniform (`tuple[str, ...]`): checkpoint tensors averaged with the plain weights (buffers and parameters
            without a gradient).
        zero (`dict[str, tuple[str, ...]]`): per ingredient, the parameters whose gradient was zero on every example.
        memmapped (`bool`): whether the buffers are memory-mapped files.
    """

    weights: tuple[float, ...]
    examples: int
    uniform: tuple[str, ...]
    zero: dict[str, tuple[str, ...]] = field(default_factory=dict)
    memmapped: bool = False
    _num: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    _den: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    _workdir: str | None = field(default=None, repr=False)

    def tensor(self, name: str) -> torch.Tensor:
        """The merged fp32 tensor `name` (a checkpoint name of the plan), a new tensor."""
        return self._num[name] / self._den[name]

    def tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Every merged tensor, one at a time, in the plan's order."""
        for name in self._num:
            yield name, self.tensor(name)

    def close(self) -> None:
        """Release the buffers and remove their temporary files."""
        self._num, self._den = {}, {}
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __enter__(self) -> FisherSoup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def fisher_merge(plan: MergePlan, readers: Sequence[Any], holder: Any,
                 batches: Sequence[tuple[torch.Tensor, Mapping[str, torch.Tensor]]], task: Any, *,
                 weights: Sequence[float] | None = None, names: Sequence[str] | None = None, floor: float = FLOOR,
                 max_examples: int | None = None, memmap_bytes: int | None = None,
                 workdir: str | None = None) -> FisherSoup:
    """Fisher-weighted average of the plan's ingredients, one ingredient at a time.

    Each ingredient is computed into `holder`'s model by the merge kernel (bit for bit its checkpoint, classifier
    rows aligned per the plan), its Fisher is taken on `batches`, and `w_i * F_i * theta_i` and `w_i * F_i` are
    added to the running numerator and denominator; the Fisher is then dropped before the next ingredient.

    Args:
        plan ([`MergePlan`]): the tensors (averaged ones are merged).
        readers (`Sequence[CheckpointReader]`): one reader per ingredient.
        holder ([`ModelHolder`]): the model skeleton on the evaluation device.
        batches (`Sequence`): held-out `(row indices, inputs)` batches ([`Evaluator.batches`]).
        task ([`Task`]): the evaluation task ([`Evaluator.task_impl`]).
        weights (`Sequence[float]`, *optional*): `w_i`, normalised; uniform by default.
        names (`Sequence[str]`, *optional*): ingredient names for the record and errors.
        floor (`float`, *optional*, defaults to `1e-6`): the Fisher floor.
        max_examples (`int`, *optional*): held-out examples used per Fisher.
        memmap_bytes (`int`, *optional*): buffers above this size (numerator + denominator) are memory-mapped;
            defaults to `HF_SOUPS_FISHER_MEMMAP_BYTES` or 64 MiB.
        workdir (`str`, *optional*): where memory-mapped buffers are created (a new temporary directory by default).

    Returns:
        [`FisherSoup`]: the merged tensors (`close()` it, or use it as a context manager).

    Raises:
        [`EvaluationError`]: the task is not supported, or no example was given.
    """
    _check_task(task)
    k = len(readers)
    ws = normalize_weights(weights if weights is not None else [1.0] * k)
    names = list(names) if names is not None else [f"ingredient {i}" for i in range(k)]
    averaged = [tp for tp in plan.tensors if tp.average]
    shapes = {tp.name: tuple(tp.shape) for tp in averaged}
    limit = _memmap_bytes() if memmap_bytes is None else memmap_bytes
    mapped = 8 * sum(_numel(s) for s in shapes.values()) > limit
    directory = tempfile.mkdtemp(prefix="hf-soups-fisher-", dir=workdir) if mapped else None
    soup = FisherSoup(tuple(ws), 0, (), memmapped=mapped, _workdir=directory)
    try:
        soup._num = _Buffers(shapes, directory, "numerator").views
        soup._den = _Buffers(shapes, directory, "denominator").views
        params = dict(holder.model.named_parameters())
        uniform: list[str] = []
        for i, w in enumerate(ws):
            if w == 0:
                continue
            model = holder.load_plan(plan.with_weights([1.0 if j == i else 0.0 for j in range(k)]), readers)
            fisher = diagonal_fisher(model, batches, task, floor=floor, max_examples=max_examples)
            soup.examples = fisher.examples
            soup.zero[names[i]] = fisher.zero
            with torch.no_grad():
                for tp in averaged:
                    model_name = holder.name_map.get(tp.name, tp.name)
                    theta = holder._target(tp.name).detach().float().cpu().reshape(shapes[tp.name])
                    f = fisher.values.get(model_name) if model_name in params else None
                    if f is None:  # a buffer, or a parameter without a gradient: the plain weights
                        if i == next(j for j, v in enumerate(ws) if v != 0):
                            uniform.append(tp.name)
                        soup._num[tp.name].add_(theta, alpha=w)
                        soup._den[tp.name].add_(w)
                    else:
                        f = f.cpu().reshape(shapes[tp.name])
                        soup._num[tp.name].addcmul_(f, theta, value=w)
                        soup._den[tp.name].add_(f, alpha=w)
            del fisher
        soup.uniform = tuple(uniform)
    except BaseException:
        soup.close()
        raise
    return soup


def fisher_soup(plan: MergePlan, readers: Sequence[Any], ingredients: Sequence[Any], config: dict[str, Any],
                eval_dataset: Any, spec: Any, *, weights: Sequence[float] | None = None,
                trust_remote_code: bool = False, device: str | torch.device | None = None) -> FisherSoup:
    """The Fisher-weighted soup from the ingredients and held-out data (`spec.max_samples` caps the examples).

    Raises:
        [`EvaluationError`]: the task is not supported (checked before any weight is read), or the data cannot be
            used.
    """
    from .learned_stream import held_out_model
    from .tasks import task_for

    _check_task(task_for(config))
    holder, evaluator = held_out_model(ingredients, config, eval_dataset, spec,
                                       trust_remote_code=trust_remote_code, device=device)
    return fisher_merge(plan, readers, holder, evaluator.batches, evaluator.task_impl, weights=weights,
                        names=[i.name for i in ingredients], max_examples=spec.max_samples)
