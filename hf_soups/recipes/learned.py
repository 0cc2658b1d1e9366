"""Learned soup (Wortsman et al., 2022, arXiv:2203.05482, appendix): mixing weights optimised on held-out data.

The soup's parameters are `sum_k softmax(alpha)_k * theta_k`; `alpha` is trained by gradient descent on the held-out
loss of the task (cross-entropy; MSE, BCE, span cross-entropy for other tasks) through `torch.func.functional_call`, so one model skeleton serves every step. Each step's
combination is built on the model's device; the ingredients are moved there once by the caller when they fit, else
tensor by tensor per step.

BatchNorm running statistics (`running_mean`, `running_var`: floating buffers, not parameters) never enter the
differentiable mix: at every step they are averaged with the current mixing weights *detached*, by the merge kernel
(they follow the mixture but carry no gradient), and the final soup averages them with the learned weights like any
other floating tensor. Integer buffers (`num_batches_tracked`) follow the plan's `int_rule`.
`Soup.recompute_batchnorm` can re-estimate the statistics on calibration data afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import EvaluationError
from .protocol import MethodContext, MethodResult, Needs
from .registry import register_method

if TYPE_CHECKING:  # imported where it runs, not by the registry (CLI --help)
    import torch

__all__ = ["learned_soup", "learn_weights"]


@register_method("learned", paper="https://arxiv.org/abs/2203.05482", needs=Needs(gradients=True),
                 description="Learned soup: mixing weights optimised on held-out data (arXiv:2203.05482, appendix).")
def learned_soup(ctx: MethodContext) -> MethodResult:
    """The learned recipe on the held-out evaluation: [`learn_weights`] (the one optimiser call) with
    `EvalSpec.learned_steps` steps and the recipe's seed.

    Raises:
        [`EvaluationError`]: no held-out evaluation was given.
    """
    held_out = ctx.held_out
    if held_out is None:
        raise EvaluationError("method='learned' needs held-out data.", fix="pass eval_dataset=...")
    weights, trace = learn_weights(held_out.model, held_out.states(), held_out.batches, held_out.references,
                                   held_out.score_states, steps=held_out.spec.learned_steps, seed=held_out.seed,
                                   loss=held_out.loss, higher_is_better=held_out.higher_is_better)
    return MethodResult(ctx.plan.with_weights(weights), trace)


def learn_weights(
    model: Any,
    states: Sequence[Mapping[str, torch.Tensor]],
    batches: Sequence[tuple[torch.Tensor, Mapping[str, torch.Tensor]]],
    references: torch.Tensor,
    score: Callable[[Sequence[float]], float],
    *,
    steps: int = 30,
    lr: float = 0.2,
    seed: int = 0,
    loss: Callable[[Any, torch.Tensor], torch.Tensor],
    higher_is_better: bool = True,
) -> tuple[list[float], list[dict[str, Any]]]:
    """Optimise per-model mixing weights.

    Args:
        model: the skeleton (its floating parameters and buffers are replaced functionally).
        states (`Sequence[Mapping[str, Tensor]]`): fp32 floating tensors of each ingredient (parameters and floating
            buffers such as BatchNorm running statistics, keyed by the model's names).
        batches: `(indices, inputs)` held-out batches (from [`Evaluator`]).
        references (`torch.Tensor`): the references in dataset order (the task's loss reads its own targets).
        score (`Callable[[Sequence[float]], float]`): held-out metric of the soup with the given weights.
        steps (`int`, *optional*, defaults to `30`): optimisation steps (one batch each, cycling).
        lr (`float`, *optional*, defaults to `0.2`): Adam learning rate on the logits of the weights.
        seed (`int`, *optional*, defaults to `0`): batch-order seed.
        loss (`Callable[[ModelOutput, Tensor], Tensor]`): the task's loss of a model output on the batch of rows
            `idx` (`Evaluator.loss`, i.e. [`Task.loss`]: cross-entropy for classification, MSE for regression, BCE
            for multi-label, span cross-entropy for QA, ...).
        higher_is_better (`bool`, *optional*, defaults to `True`): the direction of `score`.

    Returns:
        `tuple[list[float], list[dict]]`: weights summing to 1, never scoring below the uniform soup on held-out
        data (the uniform weights are kept when learning does not beat them), and a trace of evaluations.
    """
    import torch
    from torch.func import functional_call

    from ..merge.ops import weighted_sum

    k = len(states)
    device = next(model.parameters()).device
    alpha = torch.zeros(k, requires_grad=True, device=device)
    opt = torch.optim.Adam([alpha], lr=lr)
    parameters = {n for n, _ in model.named_parameters()}
    names = [n for n in states[0] if n in parameters]
    statistics = [n for n in states[0] if n not in parameters]  # floating buffers: BatchNorm running statistics
    buffers = {n: b for n, b in model.named_buffers()}
    gen = torch.Generator().manual_seed(seed)
    model.eval()
    for _ in range(steps):
        idx, inputs = batches[int(torch.randint(len(batches), (1,), generator=gen))]
        w = torch.softmax(alpha, 0)
        params = {n: sum(w[j] * states[j][n].to(device) for j in range(k)) for n in names}
        fixed = w.detach().tolist()  # the statistics follow the mixture without a gradient
        stats = {n: weighted_sum((states[j][n].to(device) for j in range(k)), fixed) for n in statistics}
        out = functional_call(model, {**buffers, **stats, **params}, args=(), kwargs={key: v.to(device) for key, v in
                                                                            inputs.items()})
        value = loss(out, idx)  # the task's loss ([`Task.loss`] through `Evaluator.loss`)
        opt.zero_grad()
        value.backward()
        opt.step()
    uniform = [1.0 / k] * k
    learned = torch.softmax(alpha.detach(), 0).cpu().tolist()
    uniform_score, learned_score = score(uniform), score(learned)
    sign = 1.0 if higher_is_better else -1.0
    keep = sign * learned_score >= sign * uniform_score
    trace = [{"ingredient": "uniform weights", "score": uniform_score, "accepted": not keep, "soup_size": k},
             {"ingredient": "learned weights", "score": learned_score, "accepted": keep, "soup_size": k}]
    return (learned if keep else uniform), trace
