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

if TYPE_CHECKING:  # torch is imported where a soup is made, not when the registry is read (CLI --help)
    import torch

    from ..checkpoint.reader import CheckpointReader
    from ..merge.stats import SoupStats, TensorStats

__all__ = ["PAPER", "NORM_FLOOR", "SINGULAR_DENOMINATOR", "StockWeights", "stock_weights", "stock_plan",
           "summarise_ratios", "model_stock_state_dict", "model_stock_to_directory"]

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


def model_stock_to_directory(
    readers: Sequence[CheckpointReader],
    base: CheckpointReader,
    directory: str,
    *,
    names: Sequence[str] | None = None,
    max_shard_size: int | str = "5GB",
    progress: bool = True,
) -> tuple[list[str], dict[str, StockWeights]]:
    """Model Stock streamed to safetensors shards: the statistics pass, then a second pass that writes.

    Each output chunk is Σ_i (t/K)·θ_i + (1−t)·θ_base over one chunk of each input (fp32, [`weighted_sum`]), so
    memory stays a few chunks whatever K and the model size. The weights may be negative (t < 0 when the task
    vectors point apart), which the uniform engine's plans do not take; this writer is folded into the engine once
    plans carry signed per-tensor weights.

    Args:
        readers (`Sequence[CheckpointReader]`): the K ≥ 2 fine-tunes.
        base (`CheckpointReader`): their pretrained base.
        directory (`str`): where the shards go (the caller makes it atomic).
        names (`Sequence[str]`, *optional*): the ingredients' names, for errors.
        max_shard_size (`int` or `str`, *optional*, defaults to `"5GB"`): the shard size.
        progress (`bool`, *optional*, defaults to `True`): progress bars for both passes.

    Returns:
        `tuple[list[str], dict[str, StockWeights]]`: the files written and each floating tensor's weights.

    Raises:
        [`SoupError`]: as [`collect_stats`] and [`stock_plan`].
    """
    import torch
    from huggingface_hub.utils import tqdm

    from .. import constants
    from ..checkpoint.format import DTYPES
    from ..checkpoint.writer import ShardedSafetensorsWriter
    from ..merge.plan import output_dtype
    from ..merge.stats import collect_stats, one_thread

    plan = stock_plan(collect_stats(readers, base, names=names, progress=progress))
    first = readers[0].tensors
    codes = {n: output_dtype([r.tensors[n].dtype for r in readers]) if n in plan else first[n].dtype for n in first}
    writer = ShardedSafetensorsWriter(directory, [(n, DTYPES[codes[n]], tuple(first[n].shape)) for n in first],
                                      max_shard_size)
    slots = [[torch.empty(0, dtype=torch.uint8)], [torch.empty(0, dtype=torch.uint8)]]
    bar = tqdm(total=sum(i.nbytes for i in first.values()), unit="B", unit_scale=True, unit_divisor=1024,
               desc="Writing the Model Stock soup", disable=not progress or constants.progress_disabled())
    try:
        with one_thread():
            _write_chunks(writer, readers, base, plan, codes, slots, bar)
        files = writer.close()
        for reader in [*readers, base]:
            reader.check_unchanged()
        return files, plan
    finally:
        writer.abort()
        bar.close()


def _write_chunks(writer: Any, readers: Sequence[CheckpointReader], base: CheckpointReader,
                  plan: Mapping[str, StockWeights], codes: Mapping[str, str], slots: list[list[torch.Tensor]],
                  bar: Any) -> None:
    """The writing pass: every output chunk from one chunk of each input."""
    from .. import constants
    from ..checkpoint.format import DTYPES
    from ..merge.ops import weighted_sum
    from ..merge.stats import read_chunk

    first = readers[0].tensors
    step = constants.chunk_elements()
    for name in writer.order:
        w = plan.get(name)
        numel = first[name].numel
        if w is None:  # an integer tensor: the base's (else the first ingredient's), never averaged
            writer.write(name, (base if name in base.tensors else readers[0]).read(name).reshape(-1), 0)
            continue
        inputs = list(readers) + ([base] if name in base.tensors else [])
        weights = list(w.ingredients) + ([w.base] if name in base.tensors else [])
        for start in range(0, numel, step):
            count = min(step, numel - start)
            # each input is read (a mapped view, else a copy into one of two byte buffers) just before it is
            # added: the kernel holds at most two inputs at once, as in the engine
            chunk = weighted_sum((read_chunk(r, name, start, count, slots[n % 2]) for n, r in enumerate(inputs)),
                                 weights)
            writer.write(name, chunk.to(DTYPES[codes[name]]), start)
            bar.update(first[name].nbytes * count // max(numel, 1))
