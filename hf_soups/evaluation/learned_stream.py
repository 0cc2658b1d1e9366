"""Memory-light learned soups: mixing weights per ingredient and per layer, ingredients streamed from their files.

The learned soup by layer of Wortsman et al. (2022, arXiv:2203.05482, the authors' `learned_bylayer.py`) gives each
parameter group `l` (the embeddings, each block, the head, ...) softmax-normalised weights over the K ingredients,
`w[l] = softmax(alpha[l])`, and optimises `alpha` on held-out data with the task's loss. Done the obvious way it holds
all K models and a graph through their sum. Here only one soup and its gradient are held:

1. the soup `theta_p = sum_k w[l(p), k] * theta_{k,p}` is computed into the model by the merge kernel, tensor by
   tensor, each ingredient's tensor read from its memory-mapped checkpoint when needed;
2. a forward and backward pass on one batch gives the gradient `g_p` of the loss for every parameter;
3. since `dL/dw[l, k] = sum_{p in l} <g_p, theta_{k,p}>`, the gradient with respect to the weights is a dot
   product streamed over the ingredients' tensors, and it is chained through the softmax to `alpha`.

Private memory: the model, its gradient, the optimiser's `L x K` state and one tensor being read, whatever K is.
BatchNorm statistics (floating buffers) follow the current weights of their group without a gradient. With one group
(`groups="model"`) this is the per-model learned soup.

The steps are deterministic: the batch of each step is drawn by a seeded generator, and the ingredients and tensors
are visited in a fixed order. The final weights are recorded per group; [`StreamedSoup.load`] with the recorded
weights rebuilds the same soup bit for bit on the same hardware.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import EvaluationError
from ..merge.groups import group_of
from ..merge.ops import weighted_sum
from ..merge.plan import MergePlan
from .candidates import _aligned

__all__ = ["group_of", "layer_groups", "LayerWeights", "StreamedSoup", "learn_layer_weights", "held_out_model",
           "learn_by_layer"]

def layer_groups(names: Sequence[str], groups: str = "layer") -> dict[str, str]:
    """Tensor name -> group, in the order of `names`.

    Args:
        names (`Sequence[str]`): the averaged tensors.
        groups (`str`, *optional*, defaults to `"layer"`): `"layer"` ([`group_of`]) or `"model"` (one group,
            the per-model learned soup).

    Raises:
        [`EvaluationError`]: an unknown grouping.
    """
    if groups == "model":
        return {n: "model" for n in names}
    if groups != "layer":
        raise EvaluationError(f"unknown parameter grouping {groups!r}.", param="groups",
                              fix="use groups='layer' (learned_by_layer) or groups='model' (learned).")
    return {n: group_of(n) for n in names}


@dataclass
class LayerWeights:
    """Learned weights: per group, one weight per ingredient (each row sums to 1).

    Attributes:
        groups (`tuple[str, ...]`): the groups in order.
        weights (`tuple[tuple[float, ...], ...]`): `weights[l][k]`, ingredient `k`'s weight in group `l`.
        tensor_groups (`dict[str, str]`): every averaged tensor's group.
        trace (`list[dict]`): the held-out scores of the uniform and the learned weights, the one kept marked.
        steps (`int`): optimisation steps taken.
    """

    groups: tuple[str, ...]
    weights: tuple[tuple[float, ...], ...]
    tensor_groups: dict[str, str]
    trace: list[dict[str, Any]] = field(default_factory=list)
    steps: int = 0

    def of(self, tensor: str) -> tuple[float, ...]:
        """The ingredients' weights for one tensor."""
        return self.weights[self.groups.index(self.tensor_groups[tensor])]

    def to_dict(self) -> dict[str, Any]:
        """What the recipe records: `{"groups": {group: [weights]}, "steps": n}`."""
        return {"groups": {g: list(w) for g, w in zip(self.groups, self.weights)}, "steps": self.steps}


class StreamedSoup:
    """One soup in a model skeleton; the ingredients stay in their (memory-mapped) checkpoint files.

    Args:
        plan ([`MergePlan`]): the tensors; averaged ones are mixed (classifier rows aligned per the plan).
        readers (`Sequence[CheckpointReader]`): one reader per ingredient.
        holder ([`ModelHolder`]): the model skeleton on the evaluation device.
        groups (`str`, *optional*, defaults to `"layer"`): see [`layer_groups`].
    """

    def __init__(self, plan: MergePlan, readers: Sequence[Any], holder: Any, groups: str = "layer") -> None:
        self.plan, self.readers, self.holder = plan, readers, holder
        self.tensors = [tp for tp in plan.tensors if tp.average]
        self.tensor_groups = layer_groups([tp.name for tp in self.tensors], groups)
        self.groups = tuple(dict.fromkeys(self.tensor_groups.values()))
        self.index = {g: i for i, g in enumerate(self.groups)}
        self.params = dict(holder.model.named_parameters())

    def _ingredient(self, k: int, tp: Any, device: torch.device) -> torch.Tensor:
        return _aligned(self.plan, self.readers[k], k, tp).to(device)

    def load(self, weights: Sequence[Sequence[float]]) -> Any:
        """Compute the soup with `weights[l][k]` into the model with the merge kernel; returns the model."""
        k = len(self.readers)
        with torch.no_grad():
            for tp in self.tensors:
                target = self.holder._target(tp.name)
                ws = [float(w) for w in weights[self.index[self.tensor_groups[tp.name]]]]
                weighted_sum((self._ingredient(j, tp, target.device) for j in range(k)), ws, out=target)
        return self.holder.model

    def weight_gradient(self) -> torch.Tensor:
        """`G[l, k] = sum_{p in l} <g_p, theta_{k,p}>` from the model's current `.grad`, streamed (fp64, CPU)."""
        out = torch.zeros(len(self.groups), len(self.readers), dtype=torch.float64)
        for tp in self.tensors:
            param = self.params.get(self.holder.name_map.get(tp.name, tp.name))
            if param is None or param.grad is None:  # a buffer, or a parameter the loss does not reach
                continue
            g = param.grad.reshape(-1)
            row = self.index[self.tensor_groups[tp.name]]
            for k in range(len(self.readers)):
                theta = self._ingredient(k, tp, g.device).reshape(-1).to(g.dtype)
                out[row, k] += float(torch.dot(g, theta))
        return out

    def loss_and_gradient(self, alpha: torch.Tensor, inputs: Mapping[str, torch.Tensor],
                          loss: Callable[[Any], torch.Tensor]) -> tuple[float, torch.Tensor]:
        """The loss of the soup `softmax(alpha, 1)` on one batch and its gradient with respect to `alpha`.

        Args:
            alpha (`torch.Tensor`): `(groups, K)` mixing logits (CPU).
            inputs (`Mapping[str, Tensor]`): the batch, on the model's device.
            loss (`Callable[[ModelOutput], Tensor]`): the task's loss of the model output on this batch.

        Returns:
            `tuple[float, torch.Tensor]`: the loss and `dL/dalpha` (fp32, like `alpha`).
        """
        a = alpha.detach().clone().requires_grad_(True)
        w = torch.softmax(a, 1)
        model = self.load(w.detach().tolist())
        model.zero_grad(set_to_none=True)
        value = loss(model(**inputs))
        value.backward()
        grad_w = self.weight_gradient()
        model.zero_grad(set_to_none=True)
        w.backward(grad_w.to(w.dtype))
        return float(value.detach()), a.grad


def learn_layer_weights(
    soup: StreamedSoup,
    batches: Sequence[tuple[torch.Tensor, Mapping[str, torch.Tensor]]],
    loss: Callable[[Any, torch.Tensor], torch.Tensor],
    score: Callable[[Any], float],
    *,
    steps: int = 30,
    lr: float = 0.2,
    seed: int = 0,
    higher_is_better: bool = True,
) -> LayerWeights:
    """Optimise softmax-normalised mixing weights per group on held-out batches (Adam on the logits).

    Args:
        soup ([`StreamedSoup`]): the soup, its groups and the ingredients' readers.
        batches (`Sequence`): `(row indices, inputs)` held-out batches ([`Evaluator.batches`]).
        loss (`Callable[[ModelOutput, Tensor], Tensor]`): the task's loss of a model output on the rows `idx`
            ([`Evaluator.loss`]).
        score (`Callable[[model], float]`): the held-out metric of the model as loaded.
        steps (`int`, *optional*, defaults to `30`): optimisation steps, one batch each, drawn by a seeded generator
            (the per-model learned soup's rule).
        lr (`float`, *optional*, defaults to `0.2`): Adam's learning rate.
        seed (`int`, *optional*, defaults to `0`): the batch-order seed.
        higher_is_better (`bool`, *optional*, defaults to `True`): the direction of `score`.

    Returns:
        [`LayerWeights`]: the learned weights, or the uniform ones when learning does not beat them on held-out
        data, with the trace of both scores.

    Raises:
        [`EvaluationError`]: no held-out batch.
    """
    if not batches:
        raise EvaluationError("a learned soup needs held-out examples; none was given.", param="eval_dataset",
                              fix="pass a non-empty held-out set.")
    k = len(soup.readers)
    model = soup.holder.model
    model.eval()
    device = next(model.parameters()).device
    alpha = torch.zeros(len(soup.groups), k, requires_grad=True)
    opt = torch.optim.Adam([alpha], lr=lr)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx, inputs = batches[int(torch.randint(len(batches), (1,), generator=gen))]
        inputs = {key: v.to(device) for key, v in inputs.items()}
        _, grad = soup.loss_and_gradient(alpha, inputs, lambda out, idx=idx: loss(out, idx))
        opt.zero_grad()
        alpha.grad = grad
        opt.step()
    learned = tuple(tuple(row) for row in torch.softmax(alpha.detach(), 1).tolist())
    uniform = tuple(tuple([1.0 / k] * k) for _ in soup.groups)
    uniform_score = score(soup.load(uniform))
    learned_score = score(soup.load(learned))
    sign = 1.0 if higher_is_better else -1.0
    keep = sign * learned_score >= sign * uniform_score
    size = len(soup.groups)
    trace = [{"ingredient": "uniform weights", "score": uniform_score, "accepted": not keep, "soup_size": k,
              "groups": size},
             {"ingredient": f"learned weights ({size} group{'s' if size != 1 else ''})", "score": learned_score,
              "accepted": keep, "soup_size": k, "groups": size}]
    return LayerWeights(soup.groups, learned if keep else uniform, dict(soup.tensor_groups), trace, steps)


def held_out_model(ingredients: Sequence[Any], config: dict[str, Any], eval_dataset: Any, spec: Any, *,
                   trust_remote_code: bool = False, device: str | torch.device | None = None) -> tuple[Any, Any]:
    """The model skeleton (the first ingredient) and the [`Evaluator`] of a held-out method that optimises or
    differentiates on `eval_dataset` (learned soups, Fisher): batches of `spec.batch_size`, else the CPU batch size
    on any device (the optimisation does not depend on the device).

    Returns:
        `tuple[ModelHolder, Evaluator]`

    Raises:
        [`EvaluationError`] / [`LabelMismatchError`]: the data or the task cannot be used.
    """
    from .candidates import ModelHolder
    from .device import CPU_BATCH_SIZE, resolve_eval_device
    from .evaluator import Evaluator
    from .tasks import settle_spec

    spec = settle_spec(spec, config)
    reference_dir = ingredients[0].local_dir
    if reference_dir is None:
        raise EvaluationError("the first ingredient's files are not on disk; it cannot be evaluated.",
                              ingredient=ingredients[0].name, fix="report this bug.")
    eval_device = resolve_eval_device(device if device is not None else spec.device)
    evaluator = Evaluator(eval_dataset, reference_dir, config, metric=spec.metric, text_column=spec.text_column,
                          label_column=spec.label_column, image_column=spec.image_column,
                          batch_size=spec.batch_size if spec.batch_size is not None else CPU_BATCH_SIZE,
                          name=ingredients[0].name, device=eval_device, dtype=spec.dtype,
                          max_samples=spec.max_samples, threshold=spec.threshold)
    return ModelHolder(reference_dir, config, trust_remote_code, device=eval_device), evaluator


def learn_by_layer(plan: MergePlan, readers: Sequence[Any], ingredients: Sequence[Any], config: dict[str, Any],
                   eval_dataset: Any, spec: Any, *, groups: str = "layer", seed: int = 0,
                   trust_remote_code: bool = False, device: str | torch.device | None = None
                   ) -> tuple[LayerWeights, Any]:
    """A learned soup on the memory-light path, from the ingredients to the recorded weights.

    Args:
        plan ([`MergePlan`]), readers, ingredients ([`Ingredient`]), config: the soup being made.
        eval_dataset: the held-out data (any form [`as_eval_dataset`] reads).
        spec ([`EvalSpec`]): columns, metric, batch size, `learned_steps`, `max_samples`, device.
        groups (`str`, *optional*, defaults to `"layer"`): `"layer"` (learned_by_layer) or `"model"` (learned).
        seed (`int`, *optional*, defaults to `0`): the batch-order seed.

    Returns:
        `tuple[LayerWeights, Evaluator]`: the weights per group (recorded in the recipe by `to_dict()`) and the
        evaluator that scored them.

    Raises:
        [`EvaluationError`] / [`LabelMismatchError`]: the data or the task cannot be used.
    """
    holder, evaluator = held_out_model(ingredients, config, eval_dataset, spec,
                                       trust_remote_code=trust_remote_code, device=device)
    soup = StreamedSoup(plan, readers, holder, groups)
    result = learn_layer_weights(soup, evaluator.batches, evaluator.loss, lambda m: evaluator.score(m)[0],
                                 steps=spec.learned_steps, seed=seed,
                                 higher_is_better=evaluator.metric.higher_is_better)
    return result, evaluator
