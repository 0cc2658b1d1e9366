"""The streaming merge engine: weighted averages computed chunk by chunk, with reads prefetched in threads.

Memory is bounded by a handful of chunk buffers whatever the number of ingredients, the tensor sizes or the shard
sizes: each tensor is processed as flat chunks of `HF_SOUPS_CHUNK_ELEMENTS` elements, accumulated in fp32
(`acc.add_(t, alpha=w)`), cast to the output dtype and streamed to the writer. Never imports `hub/`.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
from huggingface_hub.utils import tqdm

from .. import constants
from ..checkpoint.reader import CheckpointReader
from ..checkpoint.writer import ShardedSafetensorsWriter
from ..errors import SoupError
from .numerics import check_cast, computable, exact_piece, int_maximum
from .plan import MergePlan, TensorPlan

__all__ = ["merge_to_directory", "merge_state_dict", "iter_merged_chunks", "chunk_elements"]

logger = logging.getLogger(__name__)


def chunk_elements() -> int:
    """Elements per chunk (`HF_SOUPS_CHUNK_ELEMENTS`, default 4M: 16 MB of fp32)."""
    return int(os.environ.get("HF_SOUPS_CHUNK_ELEMENTS", 4 * 1024 * 1024))


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


class _Prefetcher:
    """Reads `(piece, ingredient)` chunks ahead in worker threads into a fixed pool of reused buffers.

    A yielded chunk's buffer is recycled once the consumer has advanced the iterator twice, so the consumer may keep
    the previous chunk alive while it handles the current one (to fuse the first two ingredients in one add).
    """

    def __init__(self, readers: Sequence[CheckpointReader], depth: int = 5) -> None:
        self.readers = readers
        self.depth = depth
        self.pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="hf-soups-read")

    def run(self, tasks: Iterable[tuple[_Piece, int]], max_bytes: int) -> Iterator[tuple[_Piece, int, torch.Tensor]]:
        buffers = [torch.empty(max_bytes, dtype=torch.uint8) for _ in range(self.depth)]
        free = list(range(self.depth))
        inflight: deque = deque()
        task_iter = iter(tasks)

        def submit() -> bool:
            task = next(task_iter, None)
            if task is None:
                return False
            piece, i = task
            slot = free.pop()
            fut = self.pool.submit(self.readers[i].read_range, piece.tensor.name, piece.start, piece.count, buffers[slot])
            inflight.append((piece, i, slot, fut))
            return True

        try:
            while free and submit():
                pass
            held: int | None = None
            while inflight:
                piece, i, slot, fut = inflight.popleft()
                yield piece, i, fut.result()
                if held is not None:
                    free.append(held)
                held = slot
                while free and submit():
                    pass
        finally:
            for *_, fut in inflight:
                fut.cancel()
            for *_, fut in inflight:
                try:
                    fut.result()
                except BaseException:
                    pass
            self.pool.shutdown(wait=True)


def iter_merged_chunks(
    plan: MergePlan,
    readers: Sequence[CheckpointReader],
    names: Sequence[str] | None = None,
    order: Sequence[str] | None = None,
    slots: int = 1,
    device: str | torch.device | None = None,
    stage: bool | None = None,
) -> Iterator[tuple[TensorPlan, int, torch.Tensor]]:
    """Yield `(tensor plan, flat start, chunk)` for every output chunk, in `order` (default: plan order).

    Yielded chunks live in `slots` rotating buffers: a consumer may hold at most `slots - 1` earlier chunks (for
    example in a writer thread) while it receives the next one. With `device="cuda"`, the fp32 accumulation runs on
    the GPU (element-wise fp32 arithmetic is correctly rounded there too, so the result is bit-identical); yielded
    chunks are always on the CPU. `stage` forces (or skips) the copy through `device` buffers; it defaults to "when
    `device` is not the CPU".

    Raises:
        [`NonFiniteTensorError`]: an ingredient holds NaN/Inf in an averaged tensor (when `plan.check_finite`).
        [`SoupError`]: integer tensors differ and `plan.int_rule == "error"`.
    """
    names = list(names or [getattr(r, "ingredient", None) or f"ingredient {i}" for i, r in enumerate(readers)])
    if len(readers) != len(plan.weights):
        raise SoupError(f"{len(readers)} readers for {len(plan.weights)} weights.")
    by_name = {t.name: t for t in plan.tensors}
    tensors = [by_name[n] for n in order] if order is not None else list(plan.tensors)
    active = [i for i, w in enumerate(plan.weights) if w > 0]
    weights = [plan.weights[i] for i in active]
    equal = len(set(weights)) == 1
    pieces = list(_pieces(tensors))
    max_in = max((max(r.tensors[p.tensor.name].nbytes // max(p.tensor.numel, 1) for r in readers) * p.count
                  for p in pieces), default=1)
    max_out = max((p.count for p in pieces), default=1)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    on_gpu = dev.type != "cpu" if stage is None else stage
    acc_bufs = [torch.empty(max_out, dtype=torch.float32, device=dev) for _ in range(slots)]
    host_bufs = [torch.empty(max_out, dtype=torch.float32) for _ in range(slots)] if on_gpu else acc_bufs
    out_bufs: dict[torch.dtype, list[torch.Tensor]] = {}
    tasks = ((p, i) for p in pieces for i in active)
    stream = _Prefetcher(readers).run(tasks, max(max_in, 1))
    for n_piece, piece in enumerate(pieces):
        tp = piece.tensor
        slot = n_piece % slots
        acc_buf = acc_bufs[slot]
        chunks: list = []
        first: torch.Tensor | None = None
        for n_seen in range(len(active)):
            got_piece, i, chunk = next(stream)
            assert got_piece is piece
            chunk = computable(chunk)  # float8 is storage-only in torch
            perm = plan.label_permutations[i] if tp.permute_rows and plan.label_permutations else None
            if perm is not None:
                chunk = chunk.view(tp.shape)[list(perm)].reshape(-1)
            if tp.average and on_gpu:
                chunk = chunk.to(dev)
            if tp.average:
                acc = acc_buf[: piece.count]
                w = plan.weights[i]
                if n_seen == 0 and len(active) > 1 and equal and chunk.dtype == torch.float32:
                    first = chunk  # kept alive by the prefetcher until the next chunk: fused below
                elif first is not None:
                    torch.add(first, chunk, out=acc)  # copy and first add in one pass
                    first = None
                elif n_seen == 0:
                    acc.copy_(chunk)
                    if not equal:
                        acc.mul_(w)
                else:
                    acc.add_(chunk, alpha=1.0 if equal else w)
            else:
                chunks.append(chunk.clone() if not chunks else chunk)
                if len(chunks) > 1:
                    chunks[0] = _resolve_int(tp, chunks[0], chunk, names[active[0]], names[i], plan.int_rule)
                    chunks.pop()
        if tp.average:
            acc = acc_buf[: piece.count]
            if equal:
                acc.div_(len(active))
            # NaN and Inf propagate through the sum, so one reduction finds them; the exact check runs only then
            if plan.check_finite and piece.count and not bool(torch.isfinite(acc.sum())) \
                    and not bool(torch.isfinite(acc).all()):
                # fp32 sum overflowed or an input is NaN/Inf: exact fp64 recomputation, or an error naming the culprit
                exact = exact_piece(tp, piece.start, piece.count, readers, active, plan.weights, names,
                                    plan.label_permutations)
                yield tp, piece.start, exact.to(tp.torch_dtype)
                continue
            if on_gpu:
                host = host_bufs[slot][: piece.count]
                host.copy_(acc)
                acc = host
            if tp.torch_dtype == torch.float32:
                yield tp, piece.start, acc
            else:
                bufs = out_bufs.setdefault(tp.torch_dtype, [torch.empty(max_out, dtype=tp.torch_dtype)
                                                            for _ in range(slots)])
                out = bufs[slot][: piece.count]
                out.copy_(acc)
                if plan.check_finite:
                    check_cast(tp, acc, out)  # what is written must be finite too
                yield tp, piece.start, out
        else:
            yield tp, piece.start, chunks[0].to(tp.torch_dtype)


def _resolve_int(tp: TensorPlan, current: torch.Tensor, other: torch.Tensor, first: str, name: str,
                 rule: str) -> torch.Tensor:
    if torch.equal(current, other.to(current.dtype)):
        return current
    if rule == "error":
        raise SoupError(
            f"integer tensor differs from '{first}'; integer buffers are never averaged.", ingredient=name,
            tensor=tp.name, fix="pass int_rule='first' (keep the first ingredient's) or int_rule='max'.",
        )
    logger.warning("Integer tensor '%s' differs between '%s' and '%s'; resolved with int_rule=%r.",
                   tp.name, first, name, rule)
    if rule == "max":
        return int_maximum(current, other.to(current.dtype))
    return current


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
    """Stream the merge into sharded safetensors files in `directory` (which the caller makes atomic).

    `device` defaults to `"cuda"` when CUDA is available (accumulation on the GPU), else the CPU.

    Returns:
        `list[str]`: the files written (shards and, when sharded, the index).
    """
    if device is None and torch.cuda.is_available():
        device = "cuda"
    writer = ShardedSafetensorsWriter(
        directory, [(t.name, t.torch_dtype, t.shape) for t in plan.tensors], max_shard_size,
        metadata=dict(plan.metadata),
    )
    bar = tqdm(total=writer.total_size, unit="B", unit_scale=True, unit_divisor=1024,
               desc=f"Souping {len(plan.tensors)} tensors",
               disable=not progress or constants.progress_disabled())
    pending: deque = deque()
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hf-soups-write")  # writes overlap the math
    try:
        for tp, _, chunk in iter_merged_chunks(plan, readers, names, order=writer.order, slots=3, device=device):
            pending.append(pool.submit(writer.write, tp.name, chunk))
            bar.update(chunk.numel() * chunk.element_size())
            while len(pending) >= 2:  # keep at most 2 of the 3 rotating buffers with the writer
                pending.popleft().result()
        while pending:
            pending.popleft().result()
        return writer.close()
    finally:
        for fut in pending:
            fut.cancel()
        pool.shutdown(wait=True)
        writer.abort()
        bar.close()


def merge_state_dict(
    plan: MergePlan, readers: Sequence[CheckpointReader], names: Sequence[str] | None = None
) -> dict[str, torch.Tensor]:
    """Compute the merge in memory (for evaluation); same math and chunk order as [`merge_to_directory`]."""
    out: dict[str, torch.Tensor] = {}
    for tp, start, chunk in iter_merged_chunks(plan, readers, names):
        if tp.name not in out:
            out[tp.name] = torch.empty(tp.shape, dtype=tp.torch_dtype)
        out[tp.name].view(-1)[start : start + chunk.numel()] = chunk
    return out
