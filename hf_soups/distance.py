"""The weight-space init check: pairwise relative L2 distances between ingredients over a small sample of tensors,
read chunk by chunk through the readers handed to it (the torch half of the verdict; [`hf_soups.compat`] stays pure).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from .checkpoint.reader import CheckpointReader
from .compat import Problem, init_outlier_warnings

__all__ = ["init_distance_warnings", "init_distances", "DISTANCE_CHUNK_ELEMENTS"]


def init_distance_warnings(
    names: Sequence[str], readers: Sequence[Mapping[str, torch.Tensor]], sample: Sequence[str]
) -> tuple[list[Problem], list[list[float]]]:
    """Flag the ingredients that do not share the others' pretrained init.

    The relative L2 distance between two ingredients over the sampled tensors is
    `||a - b|| / max(||a||, ||b||)`. Fine-tunes of one checkpoint sit around 1e-3..1e-1; independent inits sit
    near 1.4. Two ingredients closer than `HF_SOUPS_INIT_DISTANCE_WARNING` (default 0.5) share an init; the largest
    such group is the soup's family and only the ingredients outside it are blamed (with their median distance to
    the family). When no two ingredients are close, one warning says so.

    Returns:
        `tuple[list[Problem], list[list[float]]]`: the warnings and the pairwise distance matrix.
    """
    dist = init_distances(readers, sample)
    return init_outlier_warnings(names, dist, len(sample)), dist


#: fp32 elements of the chunk matrix of [`init_distances`] (4 MB, and as much again of scratch), split among the
#: ingredients: the check's memory stays the same whatever their number.
DISTANCE_CHUNK_ELEMENTS: int = 1 << 20


def init_distances(readers: Sequence[Mapping[str, torch.Tensor]], sample: Sequence[str]) -> list[list[float]]:
    """The pairwise relative L2 distances over the sampled tensors (see [`init_distance_warnings`]).

    Computed chunk by chunk: each step converts the same `DISTANCE_CHUNK_ELEMENTS // K` elements of every ingredient
    into one reused fp32 matrix (mapped pages are read in place, other readers through one reused byte buffer), then
    squares the differences of every pair into a second reused matrix. Memory is bounded by those two matrices,
    whatever the number of ingredients or the tensors' sizes (holding K fp32 copies of a tensor is what this avoids);
    the differences are exact (no `|a|^2 + |b|^2 - 2ab` cancellation) and the per-chunk fp32 sums add up in float64.
    """
    k = len(readers)
    dist = [[0.0] * k for _ in range(k)]
    if k < 2 or not sample:
        return dist
    diff2 = [[0.0] * k for _ in range(k)]
    norm2 = [0.0] * k
    step = max(1, DISTANCE_CHUNK_ELEMENTS // k)
    rows = torch.empty(k, step)  # the ingredients' chunks, as fp32
    scratch = torch.empty(k, step)
    chunks = _Chunks()
    saved = torch.get_num_threads()
    torch.set_num_threads(1)  # chunk-sized ops: a thread team costs more than it saves, far more on a busy machine
    try:
        for name in sample:
            numel = _numel(readers[0], name)
            for start in range(0, numel, step):
                count = min(step, numel - start)
                x, sq = rows[:, :count], scratch[:, :count]
                for i, reader in enumerate(readers):
                    x[i].copy_(chunks.get(reader, name, start, count))
                _add_squares(x, sq, norm2, diff2)
    finally:
        torch.set_num_threads(saved)
    for i in range(k):
        for j in range(i + 1, k):
            denom = math.sqrt(max(norm2[i], norm2[j])) or 1.0
            dist[i][j] = dist[j][i] = math.sqrt(diff2[i][j]) / denom
    return dist


def _add_squares(x: torch.Tensor, sq: torch.Tensor, norm2: list[float], diff2: list[list[float]]) -> None:
    """Add each row's squared norm and each pair of rows' squared distance over one chunk (`x`: K x count fp32),
    using `sq` (same shape) as scratch."""
    k = x.shape[0]
    torch.mul(x, x, out=sq)
    for i, v in enumerate(sq.sum(dim=1).tolist()):
        norm2[i] += v
    for i in range(k - 1):  # row i against every later row at once
        d = sq[: k - 1 - i]
        torch.sub(x[i + 1 :], x[i], out=d)
        d.square_()
        for j, v in enumerate(d.sum(dim=1).tolist(), start=i + 1):
            diff2[i][j] += v


def _numel(reader: Mapping[str, torch.Tensor], name: str) -> int:
    return reader.tensors[name].numel if isinstance(reader, CheckpointReader) else reader[name].numel()


class _Chunks:
    """Elements `[start, start + count)` of a flattened tensor from any reader: a view of mapped pages, a copy into
    one reused byte buffer (HTTP ranges), or a slice of a plain mapping's tensor (e.g. a dict)."""

    def __init__(self) -> None:
        self._raw = torch.empty(0, dtype=torch.uint8)

    def get(self, reader: Mapping[str, torch.Tensor], name: str, start: int, count: int) -> torch.Tensor:
        if not isinstance(reader, CheckpointReader):
            return reader[name].reshape(-1)[start : start + count]
        view = reader.view_range(name, start, count)
        if view is not None:
            return view
        info = reader.tensors[name]
        nbytes = info.nbytes // max(info.numel, 1) * count
        if self._raw.numel() < nbytes:
            self._raw = torch.empty(nbytes, dtype=torch.uint8)
        return reader.read_range(name, start, count, self._raw)
