"""Writing soups: a streaming sharded safetensors writer (the atomic output directory lives in `atomic`).

The writer knows every output tensor's name, dtype and shape before the first byte is written, so it writes each
shard's header up front and then streams tensor bytes: memory stays independent of the shard size.
"""

from __future__ import annotations

import errno
import io
import json
import os
import threading

import torch
from huggingface_hub.serialization import split_state_dict_into_shards_factory

from .. import constants
from ..errors import SoupError
from ..validation import parse_size
from .atomic import AtomicDirectory
from .format import build_header, dtype_code
from .format import nbytes as tensor_nbytes
from .reader import SAFETENSORS_INDEX, SAFETENSORS_SINGLE

__all__ = ["AtomicDirectory", "ShardedSafetensorsWriter", "parse_size"]


class ShardedSafetensorsWriter:
    """Stream tensors into sharded safetensors files whose headers are written before the data.

    Sharding follows huggingface_hub's `split_state_dict_into_shards_factory` (the algorithm behind
    `split_torch_state_dict_into_shards`), fed with sizes known from the plan. Every tensor's place in its shard is
    known up front, so chunks may be written in any order and from several threads ([`write`] with `start`);
    without `start`, tensors are appended in the order of [`order`]. Planning and writing take time linear in the
    number of tensors.

    Args:
        directory (`str`):
            Where to write the shards and, when there are several, `model.safetensors.index.json`.
        entries (`list[tuple[str, torch.dtype, tuple[int, ...]]]`):
            Every output tensor's name, dtype and shape.
        max_shard_size (`int` or `str`, *optional*, defaults to `"5GB"`):
            Largest shard.
        metadata (`dict[str, str]`, *optional*):
            Extra `__metadata__` strings; `{"format": "pt"}` is always set.
    """

    def __init__(
        self,
        directory: str,
        entries: list[tuple[str, torch.dtype, tuple[int, ...]]],
        max_shard_size: int | str = constants.DEFAULT_MAX_SHARD_SIZE,
        metadata: dict[str, str] | None = None,
    ) -> None:
        self.directory = directory
        self.metadata = {**(metadata or {}), "format": "pt"}
        specs = {name: (dtype_code(dtype), tuple(shape)) for name, dtype, shape in entries}
        sizes = {name: tensor_nbytes(code, shape) for name, (code, shape) in specs.items()}
        split = split_state_dict_into_shards_factory(
            {name: _Planned(name) for name in specs},  # (plain strings would be skipped as bnb metadata)
            get_storage_size=lambda t: sizes[t.name],
            filename_pattern="model{suffix}.safetensors",
            max_shard_size=parse_size(max_shard_size),
        )
        owner = {n: file for file, names in split.filename_to_tensors.items() for n in names}
        buckets: dict[str, list[str]] = {file: [] for file in split.filename_to_tensors}
        for name in specs:  # each shard keeps the plan's order
            buckets[owner[name]].append(name)
        self.files: list[tuple[str, list[str]]] = list(buckets.items())
        if len(self.files) == 1:
            self.files = [(SAFETENSORS_SINGLE, self.files[0][1])]
        self.specs = specs
        self.total_size = sum(sizes.values())
        self.order: list[str] = [n for _, names in self.files for n in names]
        self._headers: list[bytes] = []
        self._places: dict[str, tuple[int, int, int]] = {}  # name -> (file index, absolute offset, nbytes)
        for index, (_, names) in enumerate(self.files):
            header, offsets = build_header([(n, *specs[n]) for n in names], self.metadata)
            self._headers.append(header)
            for n in names:
                begin, end = offsets[n]
                self._places[n] = (index, len(header) + begin, end - begin)
        self._handles: list[io.RawIOBase | None] = [None] * len(self.files)
        self._locks = [threading.Lock() for _ in self.files]
        self._open_lock = threading.Lock()
        self._written = 0
        self._position = 0  # sequential mode: the next tensor of `order`, and the bytes of it written so far
        self._offset = 0

    def _handle(self, index: int) -> io.RawIOBase:
        handle = self._handles[index]
        if handle is None:
            with self._open_lock:
                handle = self._handles[index]
                if handle is None:
                    handle = open(os.path.join(self.directory, self.files[index][0]), "wb", buffering=0)
                    _write_all(handle, self._headers[index])
                    self._handles[index] = handle
        return handle

    def write(self, name: str, tensor: torch.Tensor, start: int | None = None) -> None:
        """Write a tensor, whole or a flat chunk of it, in the planned dtype.

        Args:
            name (`str`): the tensor.
            tensor (`torch.Tensor`): its values, or the chunk of its flattened values starting at `start`.
            start (`int`, *optional*): the chunk's first element. Without it, chunks are appended in [`order`].
                With it, chunks may come in any order and from several threads at once.
        """
        if start is None:
            expected = self.order[self._position] if self._position < len(self.order) else None
            if name != expected:
                raise SoupError(f"writer expected tensor {expected!r} next, got {name!r}.", tensor=name)
        elif name not in self._places:
            raise SoupError("the writer did not plan this tensor.", tensor=name)
        code, _ = self.specs[name]
        if dtype_code(tensor.dtype) != code:
            raise SoupError(f"planned as {code} but got {dtype_code(tensor.dtype)}.", tensor=name)
        index, offset, total = self._places[name]
        nbytes = tensor.numel() * tensor.element_size()
        begin = self._offset if start is None else start * tensor.element_size()
        if begin + nbytes > total:
            raise SoupError(f"got {begin + nbytes} bytes for a {total}-byte tensor.", tensor=name)
        handle = self._handle(index)
        if nbytes:
            data = memoryview(tensor.contiguous().reshape(-1).view(torch.uint8).numpy())
            _pwrite_all(handle, data, offset + begin, self._locks[index])
            with self._open_lock:
                self._written += nbytes
        if start is None:
            self._offset += nbytes
            if self._offset == total:
                self._offset = 0
                self._position += 1

    def close(self) -> list[str]:
        """Finish the shards and write the index; returns the files written."""
        if self._written != self.total_size:
            raise SoupError(f"writer closed after {self._written} of {self.total_size} bytes "
                            f"({self._position} of {len(self.order)} tensors in order).")
        for index in range(len(self.files)):  # shards holding only empty tensors still get their header
            self._handle(index)
        self.abort()
        written = [file for file, _ in self.files]
        if len(self.files) > 1:
            index = {
                "metadata": {"total_size": self.total_size},
                "weight_map": {n: file for file, names in self.files for n in names},
            }
            with open(os.path.join(self.directory, SAFETENSORS_INDEX), "w", encoding="utf-8") as f:
                json.dump(index, f, indent=2, sort_keys=True)
                f.write("\n")
            written.append(SAFETENSORS_INDEX)
        return written

    def abort(self) -> None:
        """Close every open shard (the caller removes the partial output)."""
        for index, handle in enumerate(self._handles):
            if handle is not None:
                handle.close()
                self._handles[index] = None


def _write_all(handle: io.RawIOBase, data: bytes | memoryview) -> None:
    view = memoryview(data).cast("B")
    while view:
        n = handle.write(view)
        if not n:
            raise OSError(errno.EIO, "short write")
        view = view[n:]


def _pwrite_all(handle: io.RawIOBase, data: memoryview, offset: int, lock: threading.Lock) -> None:
    """Write `data` at `offset`: a positional `pwrite` needs no lock, so threads write one file concurrently (a
    shared seek position would serialise them); `seek` + `write` under `lock` where `os.pwrite` does not exist."""
    view = data.cast("B")
    if not hasattr(os, "pwrite"):  # pragma: no cover - Windows
        with lock:
            handle.seek(offset)
            _write_all(handle, view)
        return
    fd = handle.fileno()
    while view:
        n = os.pwrite(fd, view, offset)
        if not n:
            raise OSError(errno.EIO, "short write")
        view = view[n:]
        offset += n


class _Planned:
    """A placeholder for a tensor not computed yet, sized from the plan."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

