"""One streaming statistics pass over K ingredients (and a base): per-tensor norms, dot products and distances.

The pass reads the checkpoints chunk by chunk, the way the merge engine does (memory-mapped views where possible,
else a copy into a reused buffer), and holds one chunk of each input at a time in a `(K, chunk)` fp64 buffer: memory
is a few MiB whatever the model size, and grows with K only by one chunk per ingredient. Every sum is accumulated
in fp64. Per floating tensor it records:

- `sq_norms`: ‖θ_i‖² of each ingredient (and ‖θ_base‖²),
- with a base, `dots`: the K(K+1)/2 dot products ⟨τ_i, τ_j⟩ of the task vectors τ_i = θ_i − θ_base,
- `sq_distances`: ‖θ_i − θ_j‖². They come from the Gram matrix of differences to a reference (the base, else the
  first ingredient), so they do not suffer the cancellation of ‖θ_i‖² + ‖θ_j‖² − 2⟨θ_i, θ_j⟩ for nearby models.

Model Stock ([`hf_soups.recipes.model_stock`]) and [`hf_soups.diagnose`] read their numbers from here. No HTTP: the
readers are already open.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from huggingface_hub.utils import tqdm

from .. import constants
from ..checkpoint.format import FLOAT_CODES
from ..checkpoint.reader import CheckpointReader
from ..errors import SoupError
from .numerics import computable

__all__ = ["TensorStats", "SoupStats", "collect_stats", "tensor_statistics"]

Matrix = tuple[tuple[float, ...], ...]


def _matrix(t: torch.Tensor) -> Matrix:
    return tuple(tuple(float(x) for x in row) for row in t.tolist())


@dataclass(frozen=True)
class TensorStats:
    """The fp64 statistics of one floating tensor.

    Attributes:
        name (`str`): the tensor name.
        numel (`int`): its number of elements.
        sq_norms (`tuple[float, ...]`): ‖θ_i‖² per ingredient.
        base_sq_norm (`float`, *optional*): ‖θ_base‖², `None` without a base (or when the base lacks the tensor).
        dots (`Matrix`, *optional*): the K×K symmetric matrix ⟨τ_i, τ_j⟩ of task vectors, `None` without a base.
        sq_distances (`Matrix`): the K×K symmetric matrix ‖θ_i − θ_j‖².
    """

    name: str
    numel: int
    sq_norms: tuple[float, ...]
    base_sq_norm: float | None
    dots: Matrix | None
    sq_distances: Matrix

    @property
    def has_base(self) -> bool:
        return self.dots is not None

    def cosines(self) -> Matrix | None:
        """The K×K task-vector cosines ⟨τ_i, τ_j⟩ / (‖τ_i‖·‖τ_j‖), NaN where a task vector is zero; `None` without a base."""
        if self.dots is None:
            return None
        k = len(self.dots)
        norms = [math.sqrt(max(self.dots[i][i], 0.0)) for i in range(k)]
        return tuple(
            tuple(self.dots[i][j] / (norms[i] * norms[j]) if norms[i] * norms[j] > 0 else math.nan for j in range(k))
            for i in range(k)
        )


@dataclass(frozen=True)
class SoupStats:
    """The statistics pass's result: one [`TensorStats`] per floating tensor, in the first ingredient's order.

    Attributes:
        names (`tuple[str, ...]`): the ingredients' names.
        base (`str`, *optional*): the base's name, `None` without a base.
        tensors (`Mapping[str, TensorStats]`): per tensor.
    """

    names: tuple[str, ...]
    base: str | None
    tensors: Mapping[str, TensorStats]

    def totals(self) -> TensorStats:
        """The statistics of the whole model as one flat vector (sums over tensors; with a base, over the tensors
        the base holds)."""
        k = len(self.names)
        sq = [0.0] * k
        dist = [[0.0] * k for _ in range(k)]
        dots = [[0.0] * k for _ in range(k)] if self.base is not None else None
        base_sq = 0.0 if self.base is not None else None
        numel = 0
        for ts in self.tensors.values():
            numel += ts.numel
            for i in range(k):
                sq[i] += ts.sq_norms[i]
                for j in range(k):
                    dist[i][j] += ts.sq_distances[i][j]
            if dots is not None and ts.dots is not None:
                base_sq += ts.base_sq_norm or 0.0  # type: ignore[operator]
                for i in range(k):
                    for j in range(k):
                        dots[i][j] += ts.dots[i][j]
        return TensorStats("<all>", numel, tuple(sq), base_sq, None if dots is None else tuple(map(tuple, dots)),
                           tuple(map(tuple, dist)))


def _floating_tensors(readers: Sequence[CheckpointReader], names: Sequence[str],
                      tensors: Sequence[str] | None) -> list[str]:
    first = readers[0].tensors
    chosen = list(tensors) if tensors is not None else [n for n, info in first.items() if info.dtype in FLOAT_CODES]
    for name in chosen:
        info = first.get(name)
        if info is None:
            raise SoupError("the tensor is missing.", ingredient=names[0], tensor=name,
                            fix="pass tensor names that every ingredient holds.")
        for reader, who in zip(readers[1:], names[1:]):
            other = reader.tensors.get(name)
            if other is None:
                raise SoupError("the tensor is missing.", ingredient=who, tensor=name,
                                fix="run check_compatibility() to see every difference.")
            if tuple(other.shape) != tuple(info.shape):
                raise SoupError(f"shape {list(other.shape)} differs from {list(info.shape)}.", ingredient=who,
                                tensor=name, fix="compare only checkpoints of the same architecture and size.")
    return chosen


def _read_chunk(reader: CheckpointReader, name: str, start: int, count: int, scratch: list[torch.Tensor]) -> torch.Tensor:
    """Elements `[start, start + count)` of one tensor: a mapped view, else a copy into the reused byte buffer."""
    view = reader.view_range(name, start, count)
    if view is None:
        info = reader.tensors[name]
        nbytes = info.nbytes // max(info.numel, 1) * count
        if scratch[0].numel() < nbytes:
            scratch[0] = torch.empty(nbytes, dtype=torch.uint8)
        view = reader.read_range(name, start, count, scratch[0])
    return computable(view.reshape(-1))


def _aligned_chunk(reader: CheckpointReader, index: int, name: str, start: int, count: int,
                   scratch: list[torch.Tensor],
                   row_orders: Callable[[int, str], Sequence[int] | None] | None) -> torch.Tensor:
    order = row_orders(index, name) if row_orders is not None else None
    if order is None:
        return _read_chunk(reader, name, start, count, scratch)
    return computable(reader.read(name))[list(order)].reshape(-1)[start : start + count]


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch's kernels on one intra-op thread, then restore the setting. A chunk (1 MiB) is too small to split:
    with two threads on a loaded 2-core machine, the fp32->fp64 copies and the small fp64 products of a chunk
    measured 5-15x slower than on one."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def _ranges(numel: int, step: int) -> Iterator[tuple[int, int]]:
    for start in range(0, max(numel, 1), step):
        yield start, min(step, numel - start)


def collect_stats(
    readers: Sequence[CheckpointReader],
    base: CheckpointReader | None = None,
    *,
    names: Sequence[str] | None = None,
    base_name: str | None = None,
    tensors: Sequence[str] | None = None,
    row_orders: Callable[[int, str], Sequence[int] | None] | None = None,
    progress: bool = True,
) -> SoupStats:
    """Accumulate, in one streaming pass, each floating tensor's norms, task-vector dot products and distances.

    Args:
        readers (`Sequence[CheckpointReader]`):
            The K ≥ 2 ingredients, already open (local or streamed).
        base (`CheckpointReader`, *optional*):
            The pretrained checkpoint the ingredients were fine-tuned from; enables the task-vector `dots`. A tensor
            the base lacks (a new head) gets no `dots` and no `base_sq_norm`.
        names (`Sequence[str]`, *optional*):
            The ingredients' names, for errors and the result; default each reader's `ingredient`.
        base_name (`str`, *optional*):
            The base's name, for errors and the result.
        tensors (`Sequence[str]`, *optional*):
            Only these tensors; default every floating tensor of the first ingredient.
        row_orders (`Callable[[int, str], Sequence[int] | None]`, *optional*):
            `row_orders(i, name)`: the row order aligning input `i`'s tensor `name` (an ingredient, or the base at
            index K) to the first ingredient's labels, `None` when aligned. A tensor with a row order (a classifier
            head, small) is read whole and permuted; every other one chunk by chunk.
        progress (`bool`, *optional*, defaults to `True`):
            Show a progress bar (huggingface_hub's tqdm, off with `HF_HUB_DISABLE_PROGRESS_BARS`).

    Returns:
        [`SoupStats`]: per tensor, fp64 sums.

    Raises:
        [`SoupError`]: fewer than two ingredients, or a tensor missing from an ingredient or of another shape, or of
            another shape in the base.
    """
    if len(readers) < 2:
        raise SoupError(f"got {len(readers)} ingredient(s); the statistics compare two or more.",
                        fix="pass two or more checkpoints.")
    names = tuple(names or [r.ingredient or f"ingredient {i}" for i, r in enumerate(readers)])
    base_label = base_name or (base.ingredient if base is not None else None) or ("base" if base is not None else None)
    chosen = _floating_tensors(readers, names, tensors)
    if base is not None:
        for name in chosen:
            info = base.tensors.get(name)
            if info is not None and tuple(info.shape) != tuple(readers[0].tensors[name].shape):
                raise SoupError(f"shape {list(info.shape)} in the base differs from the ingredients' "
                                f"{list(readers[0].tensors[name].shape)}.", ingredient=base_label, tensor=name,
                                fix="pass the pretrained checkpoint these models were fine-tuned from as the base.")
    k = len(readers)
    step = constants.chunk_elements()
    longest = max((readers[0].tensors[n].numel for n in chosen), default=1)
    # rows 0..K-1: one chunk of each ingredient; row K: the reference (the base's chunk, else ingredient 0's)
    block = torch.empty((k + 1, max(min(step, longest), 1)), dtype=torch.float64)
    scratch = [torch.empty(0, dtype=torch.uint8)]
    total_bytes = sum(r.tensors[n].nbytes for n in chosen for r in readers)
    if base is not None:
        total_bytes += sum(base.tensors[n].nbytes for n in chosen if n in base.tensors)
    bar = tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1024,
               desc=f"Statistics of {k} checkpoints", disable=not progress or constants.progress_disabled())
    out: dict[str, TensorStats] = {}
    try:
        with _one_thread():
            for name in chosen:
                numel = readers[0].tensors[name].numel
                with_base = base is not None and name in base.tensors
                sq = torch.zeros(k + 1, dtype=torch.float64)
                gram = torch.zeros((k, k), dtype=torch.float64)
                for start, count in _ranges(numel, step):
                    x = block[:, :count]
                    for i, reader in enumerate(readers):
                        x[i].copy_(_aligned_chunk(reader, i, name, start, count, scratch, row_orders))
                    if with_base:
                        x[k].copy_(_aligned_chunk(base, k, name, start, count, scratch, row_orders))  # type: ignore[arg-type]
                    else:
                        x[k].copy_(x[0])
                    sq += torch.diagonal(x @ x.T)
                    x[:k].sub_(x[k])  # differences to the reference: the task vectors, with a base
                    gram += x[:k] @ x[:k].T
                    nbytes = sum(rd.tensors[name].nbytes for rd in readers)
                    nbytes += base.tensors[name].nbytes if with_base else 0  # type: ignore[union-attr]
                    bar.update(nbytes * count // max(numel, 1))
                diag = torch.diagonal(gram)
                dist = (diag[:, None] + diag[None, :] - 2 * gram).clamp_(min=0)
                dist.fill_diagonal_(0)
                out[name] = TensorStats(name, numel, tuple(float(v) for v in sq[:k]),
                                        float(sq[k]) if with_base else None, _matrix(gram) if with_base else None,
                                        _matrix(dist))
    finally:
        bar.close()
    return SoupStats(names, base_label if base is not None else None, out)


def tensor_statistics(plan: Any, readers: Sequence[CheckpointReader], *, progress: bool = True) -> SoupStats:
    """[`collect_stats`] for a merge plan: its averaged tensors, its inputs (the ingredients, then the base when
    `plan.base`), classifier rows aligned as the plan says (`plan.row_order`, when the plan has one).

    Args:
        plan ([`MergePlan`]): the plan whose inputs `readers` are.
        readers (`Sequence[CheckpointReader]`): one per plan input.
        progress (`bool`, *optional*, defaults to `True`): show the progress bar.

    Returns:
        [`SoupStats`]: with a base when the plan has one.

    Raises:
        [`SoupError`]: as [`collect_stats`].
    """
    k = len(plan.weights)
    has_base = bool(getattr(plan, "base", False)) and len(readers) > k
    by_name = {tp.name: tp for tp in plan.tensors}
    row_order = getattr(plan, "row_order", None)

    def orders(index: int, name: str) -> Sequence[int] | None:
        tp = by_name[name]
        if row_order is not None:
            return row_order(tp, index)
        perms = plan.label_permutations
        return perms[index] if tp.permute_rows and perms and index < len(perms) else None

    return collect_stats(readers[:k], readers[k] if has_base else None,
                         names=[r.ingredient or f"ingredient {i}" for i, r in enumerate(readers[:k])],
                         tensors=[tp.name for tp in plan.tensors if tp.average], row_orders=orders, progress=progress)
