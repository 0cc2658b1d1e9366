"""Fisher-weighted averaging (Matena & Raffel, NeurIPS 2022, arXiv:2111.09832).

Each ingredient's diagonal Fisher on the held-out data, `F_i = mean_x sum_y p(y|x) (d log p(y|x) / d theta)^2`
(floored at 1e-6), weighs it element by element: `theta = sum_i F_i * theta_i / sum_i F_i`
(`hf_soups.evaluation.fisher.fisher_merge`: one ingredient's Fisher at a time into running fp32 numerator and
denominator buffers, memory-mapped when large). The weights differ per element, so the plan cannot carry them: the
method writes the merged tensors to a private checkpoint in `ctx.workdir`, and the plan copies those tensors from it
(a private input). Floating buffers and parameters without a gradient, and integer buffers, follow the plan's
normal rule (the uniform mean; the `int_rule`).

The Fisher uses the first `EvalSpec.fisher_examples` held-out examples (`FISHER_EXAMPLES`, 256, when unset; fewer
with `EvalSpec(max_samples=...)`, which also shortens held-out scoring); the
number used is recorded in `parameters["examples"]`, and the batch size (it sets the summation order) in
`parameters["batch_size"]`. Replay re-runs the method on the recipe's recorded held-out
data (a path or Hub id); a soup made from an in-memory dataset cannot be replayed (`RecipeError` naming
`eval_dataset`).
"""

from __future__ import annotations

import os

from ..errors import EvaluationError
from .protocol import MethodContext, MethodResult, Needs
from .registry import register_method

__all__ = ["FISHER_EXAMPLES", "fisher"]

#: Held-out examples each ingredient's Fisher uses at most, unless `EvalSpec.fisher_examples` says (`max_samples`
#: lowers it).
FISHER_EXAMPLES = 256


@register_method("fisher", paper="https://arxiv.org/abs/2111.09832", needs=Needs(held_out=True), progress_steps=0,
                 description="Fisher-weighted averaging: each ingredient weighted element by element by its diagonal "
                             "Fisher on held-out data (arXiv:2111.09832).")
def fisher(ctx: MethodContext) -> MethodResult:
    """The Fisher-weighted soup of the ingredients (plan-wide weights `1/K`), its merged tensors a private input.

    Raises:
        [`EvaluationError`]: no held-out evaluation, an offloaded one (`max_memory`), or a task other than
            single-label classification.
    """
    import torch

    from ..checkpoint.writer import ShardedSafetensorsWriter

    held = ctx.held_out
    holder = getattr(held, "holder", None)
    if held is None or holder is None or ctx.workdir is None:
        raise EvaluationError("method='fisher' needs held-out data and the model in memory.",
                              fix="pass eval_dataset=..., without EvalSpec(max_memory=...).")
    cap = held.spec.fisher_examples or FISHER_EXAMPLES
    cap = cap if held.spec.max_samples is None else min(cap, held.spec.max_samples)
    directory = os.path.join(ctx.workdir, "fisher")
    os.makedirs(directory, exist_ok=True)
    readers = list(ctx.readers[: ctx.k])
    with held.fisher_merge(ctx.plan, readers, weights=ctx.plan.weights, names=ctx.names, max_examples=cap,
                           workdir=ctx.workdir) as soup:
        uniform = set(soup.uniform)
        merged = [tp.name for tp in ctx.plan.tensors if tp.average and tp.name not in uniform]
        # streamed into the private checkpoint one tensor at a time (never a second model in memory)
        writer = ShardedSafetensorsWriter(directory, [(n, torch.float32, ctx.plan.tensor(n).shape) for n in merged])
        for name in merged:
            writer.write(name, soup.tensor(name), start=0)
        writer.close()
        examples, zero = soup.examples, {k: len(v) for k, v in soup.zero.items()}
    index = ctx.plan.num_inputs
    plan = ctx.plan.with_private_inputs(1).with_sources({name: index for name in merged})
    # the batch size sets the summation order of the Fisher: recorded, so that a replay re-runs it bit for bit
    parameters = {"examples": examples, "max_examples": cap, "batch_size": held.evaluator.batch_size,
                  "fisher_tensors": len(merged),
                  "uniform_tensors": sorted(uniform), "zero_gradient": zero}
    return MethodResult(plan, inputs=[directory], parameters=parameters)
