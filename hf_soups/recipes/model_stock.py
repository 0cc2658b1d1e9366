"""Model Stock (Jang, Yun and Han, "Model Stock: All we need is just a few fine-tuned models", ECCV 2024,
https://arxiv.org/abs/2403.19522): a data-free soup of K ≥ 2 fine-tunes anchored at their pretrained base.

Per tensor, with task vectors τ_i = θ_i − θ_base:

- cos = the mean over pairs i < j of cos(τ_i, τ_j),
- t = K·cos / (1 + (K−1)·cos),
- output = t·mean(θ_i) + (1−t)·θ_base, i.e. the weight t/K on each ingredient and 1−t on the base.

The cosines come from one streaming statistics pass ([`hf_soups.merge.stats.collect_stats`]); the weights then
feed the ordinary weighted-sum kernel. The edge cases follow mergekit's `model_stock` (its default, not
filter-wise), so that both give the same soup within float rounding:

- [`NORM_FLOOR`] = 1e-6: each pairwise cosine is ⟨τ_i, τ_j⟩ / max(‖τ_i‖·‖τ_j‖, 1e-6), clipped to [−1, 1]. A zero task
  vector (an ingredient equal to the base) therefore counts as orthogonal to the others, and if every task vector is
  zero, cos = 0 and t = 0: the base. The floor is absolute, as in mergekit: for a tensor whose task-vector norms
  multiply to less than 1e-6 (a tiny tensor barely moved by fine-tuning) the cosine, hence t, is shrunk towards 0,
  i.e. towards the base.
- [`SINGULAR_DENOMINATOR`] = 1e-6: where |1 + (K−1)·cos| < 1e-6 (the task vectors cancel out on average, cos ≈
  −1/(K−1)), t has no finite value; the tensor keeps the base (t = 0) rather than amplifying opposing updates.
- A floating tensor the base lacks (a new classification head) has no anchor: it is the ingredients' uniform mean
  (t = 1). An integer tensor is the base's (else the first ingredient's): it is never averaged.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import SoupError
from .card_sections import model_stock_section
from .protocol import MethodContext, MethodResult, Needs
from .registry import register_method

if TYPE_CHECKING:  # torch is imported where a soup is made, not when the registry is read (CLI --help)
    import torch

    from ..checkpoint.reader import CheckpointReader
    from ..merge.stats import SoupStats, TensorStats

__all__ = ["model_stock", "PAPER", "NORM_FLOOR", "SINGULAR_DENOMINATOR", "StockWeights", "stock_weights", "stock_plan",
           "summarise_ratios", "model_stock_state_dict"]

PAPER = "https://arxiv.org/abs/2403.19522"

#: Floor on the product of two task-vector norms in a pairwise cosine (mergekit's `norm_product.clamp(min=1e-6)`).
NORM_FLOOR = 1e-6
#: |1 + (K−1)·cos| below this keeps the base (mergekit's `denominator.abs() < 1e-6`).
SINGULAR_DENOMINATOR = 1e-6


@dataclass(frozen=True)
class StockWeights:
    """Model Stock's weights for one tensor.

    Attributes:
        tensor (`str`): the tensor name.
        cos (`float`): the mean pairwise cosine of the task vectors (NaN when the base lacks the tensor).
        t (`float`): the interpolation ratio towards the ingredients' mean.
        ingredients (`tuple[float, ...]`): the weight of each ingredient, t/K.
        base (`float`): the base's weight, 1 − t.
        singular (`bool`): whether |1 + (K−1)·cos| < [`SINGULAR_DENOMINATOR`] forced t = 0.
    """

    tensor: str
    cos: float
    t: float
    ingredients: tuple[float, ...]
    base: float
    singular: bool = False


def stock_weights(stats: TensorStats) -> StockWeights:
    """Model Stock's t and per-input weights for one tensor, from its task-vector dot products.

    Args:
        stats (`TensorStats`): one tensor's statistics, collected with a base.

    Returns:
        [`StockWeights`]: t/K per ingredient and 1 − t for the base; t = 1 (the uniform mean, base weight 0) when the
        base lacks the tensor.
    """
    k = len(stats.sq_norms)
    if stats.dots is None:
        return StockWeights(stats.name, float("nan"), 1.0, (1.0 / k,) * k, 0.0)
    norms = [max(stats.dots[i][i], 0.0) ** 0.5 for i in range(k)]
    cosines = [
        min(1.0, max(-1.0, stats.dots[i][j] / max(norms[i] * norms[j], NORM_FLOOR)))
        for i in range(k) for j in range(i + 1, k)
    ]
    cos = sum(cosines) / len(cosines)
    denominator = 1.0 + (k - 1) * cos
    singular = abs(denominator) < SINGULAR_DENOMINATOR
    t = 0.0 if singular else k * cos / denominator
    return StockWeights(stats.name, cos, t, (t / k,) * k, 1.0 - t, singular)


def stock_plan(stats: SoupStats) -> dict[str, StockWeights]:
    """[`stock_weights`] of every tensor of a statistics pass collected with a base.

    Raises:
        [`SoupError`]: the statistics were collected without a base, or with fewer than two ingredients.
    """
    if stats.base is None:
        raise SoupError("Model Stock needs the pretrained base the ingredients were fine-tuned from.",
                        fix="pass base= (the pretrained checkpoint), or set base_model in the ingredients' cards.")
    if len(stats.names) < 2:
        raise SoupError("Model Stock needs two or more fine-tunes.", fix="pass two or more ingredients.")
    return {name: stock_weights(ts) for name, ts in stats.tensors.items()}


_INDEX = re.compile(r"\.\d+(?=\.|$)")


def _group(name: str) -> str:
    """A tensor's group for the card: the layer index and the final `.weight`/`.bias` left out."""
    stem = name.rsplit(".", 1)[0] if name.endswith((".weight", ".bias")) else name
    return _INDEX.sub(".*", stem)


def summarise_ratios(weights: Mapping[str, StockWeights]) -> dict[str, dict[str, float]]:
    """t per tensor group (`encoder.layer.*.attention.self.query`, ...): `{"min", "mean", "max", "tensors"}`, in order.

    Tensors the base lacks (t = 1 by definition) are left out.
    """
    groups: dict[str, list[float]] = {}
    for name, w in weights.items():
        if w.cos == w.cos:  # not NaN: the base holds the tensor
            groups.setdefault(_group(name), []).append(w.t)
    return {g: {"min": min(ts), "mean": sum(ts) / len(ts), "max": max(ts), "tensors": float(len(ts))}
            for g, ts in groups.items()}


@register_method(
    "model_stock", paper=PAPER, needs=Needs(base=True, statistics=True), card_section=model_stock_section,
    description="Model Stock (Jang et al. 2024): per tensor, t = K·cos / (1 + (K−1)·cos) from the task vectors' mean "
                "pairwise cosine, then t·mean + (1−t)·base. Data-free; needs the base and two or more fine-tunes.",
)
def model_stock(ctx: MethodContext) -> MethodResult:
    """Model Stock's per-tensor weights from the statistics pass: t/K per ingredient, 1 − t for the base.

    Records t per tensor, its summary per tensor group, and the tensors where the denominator was singular. Integer
    tensors are the base's (where it has them), as in [`model_stock_state_dict`].
    """
    weights = stock_plan(ctx.statistics)
    per_tensor = {name: [*w.ingredients, w.base] for name, w in weights.items()}
    singular = [name for name, w in weights.items() if w.singular]
    warnings = [f"Model Stock kept the base for {len(singular)} tensor(s) whose task vectors cancel out "
                f"(|1 + (K-1)·cos| < {SINGULAR_DENOMINATOR}): {', '.join(singular[:5])}"] if singular else []
    parameters = {
        "t": {name: w.t for name, w in weights.items()},
        "t_by_group": summarise_ratios(weights),
        "singular": singular,
        "norm_floor": NORM_FLOOR,
        "singular_denominator": SINGULAR_DENOMINATOR,
    }
    plan = ctx.plan.with_tensor_weights(per_tensor)
    if ctx.base is not None:  # integer tensors (never averaged): the base's, where it has them
        plan = plan.with_sources({tp.name: ctx.k for tp in plan.tensors
                                  if not tp.average and tp.name in ctx.base.tensors})
    return MethodResult(plan, warnings=warnings, parameters=parameters)


def model_stock_state_dict(
    readers: Sequence[CheckpointReader],
    base: CheckpointReader,
    *,
    names: Sequence[str] | None = None,
    stats: SoupStats | None = None,
    progress: bool = False,
) -> tuple[dict[str, torch.Tensor], dict[str, StockWeights]]:
    """Model Stock in memory (tests, small models): the soup's state dict and the weights per tensor.

    Each floating tensor is Σ_i (t/K)·θ_i + (1−t)·θ_base accumulated in fp32 by [`weighted_sum`], then cast to the
    ingredients' dtype.

    Args:
        readers (`Sequence[CheckpointReader]`): the K ≥ 2 fine-tunes.
        base (`CheckpointReader`): their pretrained base.
        names (`Sequence[str]`, *optional*): the ingredients' names, for errors.
        stats (`SoupStats`, *optional*): a statistics pass already collected with this base (else one is run).
        progress (`bool`, *optional*, defaults to `False`): show the statistics pass's progress bar.

    Returns:
        `tuple[dict[str, torch.Tensor], dict[str, StockWeights]]`: the soup and each floating tensor's weights.

    Raises:
        [`SoupError`]: as [`collect_stats`] and [`stock_plan`].
    """
    from ..checkpoint.format import DTYPES
    from ..merge.ops import weighted_sum
    from ..merge.plan import output_dtype
    from ..merge.stats import collect_stats

    stats = stats or collect_stats(readers, base, names=names, progress=progress)
    plan = stock_plan(stats)
    out: dict[str, torch.Tensor] = {}
    for name in readers[0].tensors:
        w = plan.get(name)
        if w is None:  # an integer tensor: the base's, never averaged
            out[name] = (base if name in base.tensors else readers[0]).read(name).clone()
            continue
        inputs = [r.read(name) for r in readers]
        weights = list(w.ingredients)
        if name in base.tensors:
            inputs.append(base.read(name))
            weights.append(w.base)
        code = output_dtype([r.tensors[name].dtype for r in readers])
        out[name] = weighted_sum(inputs, weights).to(DTYPES[code])
    return out, plan
