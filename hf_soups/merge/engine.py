"""The merge engine: weighted averages computed chunk by chunk, in parallel, straight from the inputs' pages.

Local inputs are memory-mapped, so each chunk of each ingredient is a zero-copy view of the page cache. A chunk is
accumulated in fp32 into a per-thread buffer by [`weighted_sum`], the one kernel (for a uniform soup
`torch.add(a, b, out=acc); acc.add_(c) ...; acc.div_(K)`, bitwise identical to `torch.stack(...).sum(0) / K` and to
mergekit's `linear`), cast to the output dtype when that is not fp32, and written straight to its place in the
output shard (headers are written first, so every tensor's place is known). Inputs read over HTTP (`stream=True`)
are copied into per-thread buffers instead.

Parallelism: one thread per available core, each taking whole chunks (torch's kernels release the GIL) and running
its kernels on one intra-op thread; this measured faster than torch's intra-op threads on one chunk at a time,
chiefly on a loaded machine. Memory stays bounded by a few chunk buffers per thread, whatever the number of
ingredients, the tensor sizes or the shard sizes. Never imports `hub/`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

import torch
from huggingface_hub.utils import tqdm

from .. import constants
from ..checkpoint.reader import CheckpointReader
from ..checkpoint.writer import ShardedSafetensorsWriter
from ..errors import SoupError
from .numerics import check_cast, computable, exact_piece, int_maximum
from .ops import mix_sum
from .plan import MergePlan, TensorPlan

__all__ = ["merge_to_directory", "merge_state_dict", "iter_merged_chunks", "chunk_elements", "merge_threads"]

logger = logging.getLogger(__name__)

_HALF_CODES = ("BF16", "F16")


def chunk_elements() -> int:
    """Elements per chunk: [`constants.chunk_elements`] (`HF_SOUPS_CHUNK_ELEMENTS`, default 256Ki, 1 MiB of fp32)."""
    return constants.chunk_elements()


def merge_threads() -> int:
    """Threads that merge chunks: `HF_SOUPS_NUM_THREADS`, else the cores this process may run on."""
    return constants.merge_threads()


@dataclass(frozen=True)
class _Piece:
    tensor: TensorPlan
    start: int
    count: int


def _pieces(tensors: Iterable[TensorPlan]) -> Iterator[_Piece]:
    step = chunk_elements()
    for t in tensors:
        n = t.numel
        if t.permute_rows or n <= step:
            yield _Piece(t, 0, n)
            continue
        for start in range(0, n, step):
            yield _Piece(t, start, min(step, n - start))


class _Buffers:
    """Grow-only scratch tensors of one thread (or one rotating slot), reused from chunk to chunk."""

    def __init__(self) -> None:
        self._bufs: dict[tuple, torch.Tensor] = {}

    def get(self, key: str, count: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        buf = self._bufs.get((key, dtype, device))
        if buf is None or buf.numel() < count:
            buf = self._bufs[(key, dtype, device)] = torch.empty(max(count, 1), dtype=dtype, device=device)
        return buf[:count]


class _Merger:
    """The math of one chunk, shared by the parallel writer path and the in-memory iterator."""

    def __init__(self, plan: MergePlan, readers: Sequence[CheckpointReader], names: Sequence[str] | None,
                 device: str | torch.device | None, stage: bool | None) -> None:
        if len(readers) != plan.num_inputs:
            raise SoupError(f"{len(readers)} readers for {plan.num_inputs} inputs"
                            + (" (the ingredients, then the base)." if plan.base else "."), fix="report this bug.")
        self.plan = plan
        self.readers = readers
        self.names = list(names or [getattr(r, "ingredient", None) or f"ingredient {i}" for i, r in enumerate(readers)])
        self.names += [getattr(r, "ingredient", None) or "base" for r in readers[len(self.names):]]
        self.active = [i for i, w in enumerate(plan.weights) if w > 0]
        self.weights = [plan.weights[i] for i in self.active]
        plan.check_inputs([r.tensors for r in readers], self.names)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.staged = self.device.type != "cpu" if stage is None else stage
        self.cpu = torch.device("cpu")

    def _input(self, i: int, piece: _Piece, bufs: _Buffers, slot: int) -> torch.Tensor:
        tp = piece.tensor
        reader = self.readers[i]
        chunk = reader.view_range(tp.name, piece.start, piece.count)
        if chunk is None:  # not memory-mappable (HTTP, misaligned): copy into this thread's buffer
            nbytes = reader.tensors[tp.name].nbytes // max(tp.numel, 1) * piece.count
            chunk = reader.read_range(tp.name, piece.start, piece.count,
                                      bufs.get(f"in{slot}", nbytes, torch.uint8, self.cpu))
        chunk = computable(chunk)  # float8 is storage-only in torch
        perm = self.plan.row_order(tp, i)
        if perm is not None:
            chunk = chunk.view(tp.shape)[list(perm)].reshape(-1)
        return chunk

    def compute(self, piece: _Piece, bufs: _Buffers) -> torch.Tensor:
        """The merged chunk, on the CPU, in the output dtype (it may alias `bufs`)."""
        tp = piece.tensor
        if not tp.average:
            return self._integer(piece, bufs)
        active, weights = (self.active, self.weights) if tp.weights is None and tp.source is None \
            else self.plan.mix(tp)
        acc = bufs.get("acc", piece.count, torch.float32, self.device)
        chunks = (self._input(i, piece, bufs, n % 2) for n, i in enumerate(active))
        if self.staged:
            chunks = (chunk.to(self.device) for chunk in chunks)
        # at most two input chunks are alive at once (the kernel fuses the first two), hence the two input slots
        acc = mix_sum(chunks, weights, out=acc, scratch=self._scratch(piece, bufs, active), exact_weights=
                      tp.weights is not None)
        # NaN and Inf propagate through the sum, so one reduction finds them; the exact check runs only then
        if self.plan.check_finite and piece.count and not bool(torch.isfinite(acc.sum())) \
                and not bool(torch.isfinite(acc).all()):
            # fp32 sum overflowed or an input is NaN/Inf: exact fp64 recomputation, or an error naming the culprit
            full = [0.0] * self.plan.num_inputs
            for i, w in zip(active, weights):
                full[i] = w
            exact = exact_piece(tp, piece.start, piece.count, self.readers, active, full,
                                self.names, self.plan.label_permutations)
            return exact.to(tp.torch_dtype)
        if self.staged:
            host = bufs.get("host", piece.count, torch.float32, self.cpu)
            host.copy_(acc)
            acc = host
        if tp.torch_dtype == torch.float32:
            return acc
        out = bufs.get("out", piece.count, tp.torch_dtype, self.cpu)
        out.copy_(acc)
        if self.plan.check_finite:
            check_cast(tp, acc, out)  # what is written must be finite too
        return out

    def _scratch(self, piece: _Piece, bufs: _Buffers, active: Sequence[int]) -> torch.Tensor | None:
        """A reused fp32 buffer for the kernel to convert bf16/fp16 inputs into (on the CPU, torch would allocate a
        temporary per add: churn that fragments the allocator's heaps and grows private memory), else `None`."""
        if self.device.type != "cpu" or not any(self.readers[i].tensors[piece.tensor.name].dtype in _HALF_CODES
                                                for i in active):
            return None
        return bufs.get("cast", piece.count, torch.float32, self.device)

    def _integer(self, piece: _Piece, bufs: _Buffers) -> torch.Tensor:
        tp = piece.tensor
        if tp.source is not None:
            return self._input(tp.source, piece, bufs, 0).clone().to(tp.torch_dtype)
        current: torch.Tensor | None = None
        for n, i in enumerate(self.active):
            chunk = self._input(i, piece, bufs, n % 2)
            if current is None:
                current = chunk.clone()
            else:
                current = _resolve_int(tp, current, chunk, self.names[self.active[0]], self.names[i],
                                       self.plan.int_rule)
        if current is None:
            raise SoupError("no ingredient contributed to a tensor.", tensor=tp.name, fix="report this bug.")
        return current.to(tp.torch_dtype)


def _resolve_int(tp: TensorPlan, current: torch.Tensor, other: torch.Tensor, first: str, name: str,
                 rule: str) -> torch.Tensor:
    if torch.equal(current, other.to(current.dtype)):
        return current
    if rule == "error":
        raise SoupError(
            f"integer tensor differs from '{first}'; integer buffers are never averaged.", ingredient=name,
            tensor=tp.name,
            fix="pass merge_options=MergeOptions(int_rule='first') (keep the first ingredient's) or int_rule='max'.",
        )
    logger.warning("Integer tensor '%s' differs between '%s' and '%s'; resolved with int_rule=%r.",
                   tp.name, first, name, rule)
    if rule == "max":
        return int_maximum(current, other.to(current.dtype))
    return current


def iter_merged_chunks(
    plan: MergePlan,
    readers: Sequence[CheckpointReader],
    names: Sequence[str] | None = None,
    order: Sequence[str] | None = None,
    slots: int = 1,
    device: str | torch.device | None = None,
    stage: bool | None = None,
) -> Iterator[tuple[TensorPlan, int, torch.Tensor]]:
    """Yield `(tensor plan, flat start, chunk)` for every output chunk, in `order` (default: plan order), serially.

    Yielded chunks live in `slots` rotating buffers: a consumer may hold at most `slots - 1` earlier chunks while it
    receives the next one. With `device="cuda"`, the fp32 accumulation runs on the GPU (element-wise fp32 arithmetic
    is correctly rounded there too, so the result is bit-identical); yielded chunks are always on the CPU. `stage`
    forces (or skips) the copy through `device` buffers; it defaults to "when `device` is not the CPU".

    Raises:
        [`NonFiniteTensorError`]: an ingredient holds NaN/Inf in an averaged tensor (when `plan.check_finite`).
        [`SoupError`]: integer tensors differ and `plan.int_rule == "error"`.
    """
    merger = _Merger(plan, readers, names, device, stage)
    by_name = {t.name: t for t in plan.tensors}
    tensors = [by_name[n] for n in order] if order is not None else list(plan.tensors)
    rotating = [_Buffers() for _ in range(max(slots, 1))]
    for n, piece in enumerate(_pieces(tensors)):
        yield piece.tensor, piece.start, merger.compute(piece, rotating[n % len(rotating)])


def merge_to_directory(
    plan: MergePlan,
    readers: Sequence[CheckpointReader],
    directory: str,
    *,
    max_shard_size: int | str = constants.DEFAULT_MAX_SHARD_SIZE,
    names: Sequence[str] | None = None,
    progress: bool = True,
    device: str | torch.device | None = None,
) -> list[str]:
    """Merge into sharded safetensors files in `directory` (which the caller makes atomic), chunks in parallel.

    Args:
        device (`str` or `torch.device`, *optional*):
            Where the fp32 accumulation runs. Defaults to the CPU, reading mapped pages in place; `"cuda"` stages
            every chunk through the GPU (bit-identical; it pays off only where host copies are cheap).

    Returns:
        `list[str]`: the files written (shards and, when sharded, the index).

    Raises:
        [`CorruptCheckpointError`]: a local input file changed while it was read (nothing is returned to commit).
        [`NonFiniteTensorError`], [`SoupError`]: as [`iter_merged_chunks`].
    """
    merger = _Merger(plan, readers, names, device, None)
    writer = ShardedSafetensorsWriter(
        directory, [(t.name, t.torch_dtype, t.shape) for t in plan.tensors], max_shard_size,
        metadata=dict(plan.metadata),
    )
    by_name = {t.name: t for t in plan.tensors}
    pieces = _pieces(by_name[n] for n in writer.order)
    bar = tqdm(total=writer.total_size, unit="B", unit_scale=True, unit_divisor=1024,
               desc=f"Souping {len(plan.tensors)} tensors",
               disable=not progress or constants.progress_disabled())
    try:
        threads = merge_threads()
        if threads == 1:  # one core: no pool, torch's own threads (if any) do the work
            bufs = _Buffers()
            for piece in pieces:
                bar.update(_merge_and_write(merger, writer, piece, bufs))
        else:
            _run_pool(merger, writer, pieces, threads, bar)
        files = writer.close()
        for reader in readers:  # before the caller commits: an input rewritten meanwhile voids the soup
            reader.check_unchanged()
        return files
    finally:
        writer.abort()
        bar.close()


def _merge_and_write(merger: _Merger, writer: ShardedSafetensorsWriter, piece: _Piece, bufs: _Buffers) -> int:
    chunk = merger.compute(piece, bufs)
    writer.write(piece.tensor.name, chunk, piece.start)
    return chunk.numel() * chunk.element_size()


def _run_pool(merger: _Merger, writer: ShardedSafetensorsWriter, pieces: Iterator[_Piece], threads: int,
              bar: tqdm) -> None:
    local = threading.local()
    saved = torch.get_num_threads()

    def work(piece: _Piece) -> int:
        bufs = getattr(local, "bufs", None)
        if bufs is None:
            torch.set_num_threads(1)  # this thread's kernels run serially: the pool is the parallelism
            bufs = local.bufs = _Buffers()
        return _merge_and_write(merger, writer, piece, bufs)

    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="hf-soups-merge")
    inflight: set[Future] = set()
    try:
        for piece in pieces:
            inflight.add(pool.submit(work, piece))
            if len(inflight) >= 2 * threads:
                done, inflight = wait(inflight, return_when=FIRST_COMPLETED)
                for fut in done:
                    bar.update(fut.result())
        for fut in inflight:
            bar.update(fut.result())
        inflight = set()
    finally:
        for fut in inflight:
            fut.cancel()
        pool.shutdown(wait=True)
        torch.set_num_threads(saved)  # the workers' setting also reached torch's global default: put it back


def merge_state_dict(
    plan: MergePlan, readers: Sequence[CheckpointReader], names: Sequence[str] | None = None
) -> dict[str, torch.Tensor]:
    """Compute the merge in memory (for evaluation); same math as [`merge_to_directory`]."""
    out: dict[str, torch.Tensor] = {}
    for tp, start, chunk in iter_merged_chunks(plan, readers, names):
        if tp.name not in out:
            out[tp.name] = torch.empty(tp.shape, dtype=tp.torch_dtype)
        out[tp.name].view(-1)[start : start + chunk.numel()] = chunk
    return out
