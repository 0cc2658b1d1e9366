"""Learned soup by layer (Wortsman et al., 2022, arXiv:2203.05482, appendix; the authors' `learned_bylayer.py`):
a softmax-normalised weight per ingredient per parameter group (the embeddings, each block, the head, ...),
optimised on held-out data with the task's loss.

Memory-light: one soup and its gradient are held, the ingredients are streamed from their checkpoint files
(the held-out evaluation's `learn`, `hf_soups.evaluation.learned_stream`), so private memory does not grow with K. The plan carries the learned weights
per tensor; the recipe records every group's weights (`parameters["groups"]`), and replay is bit for bit.
"""

from __future__ import annotations

from ..errors import EvaluationError
from .card_sections import learned_by_layer_section
from .protocol import MethodContext, MethodResult, Needs
from .registry import register_method

__all__ = ["learned_by_layer"]


@register_method("learned_by_layer", paper="https://arxiv.org/abs/2203.05482", needs=Needs(held_out=True),
                 card_section=learned_by_layer_section,
                 description="Learned soup by layer: a softmax weight per ingredient per layer, optimised on held-out "
                             "data, ingredients streamed (arXiv:2203.05482, appendix).")
def learned_by_layer(ctx: MethodContext) -> MethodResult:
    """Optimise per-layer mixing weights on the held-out evaluation (`EvalSpec.learned_steps` steps, the recipe's
    seed); the uniform weights are kept when the learned ones do not beat them on held-out data.

    Raises:
        [`EvaluationError`]: no held-out evaluation, or an offloaded one (`max_memory`).
    """
    held = ctx.held_out
    if held is None or getattr(held, "holder", None) is None:
        raise EvaluationError("method='learned_by_layer' needs held-out data and the model in memory.",
                              fix="pass eval_dataset=..., without EvalSpec(max_memory=...).")
    result = held.learn(ctx.plan, ctx.readers, "layer")
    plan = ctx.plan.with_tensor_weights({name: result.of(name) for name in result.tensor_groups})
    return MethodResult(plan, result.trace, parameters=result.to_dict())
