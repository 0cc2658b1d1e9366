"""Writing soups: a streaming sharded safetensors writer (the atomic output directory lives in `atomic`).

The writer knows every output tensor's name, dtype and shape before the first byte is written, so it writes each
shard's header up front and then streams tensor bytes: memory stays independent of the shard size.
"""

from __future__ import annotations

import json
import os

import torch
from huggingface_hub.serialization import split_state_dict_into_shards_factory

from .. import constants
from ..errors import SoupError
from .atomic import AtomicDirectory
from .format import build_header, dtype_code, itemsize
from .reader import SAFETENSORS_INDEX, SAFETENSORS_SINGLE

__all__ = ["AtomicDirectory", "ShardedSafetensorsWriter", "parse_size"]


def parse_size(size: int | str) -> int:
    """`"5GB"` -> 5_000_000_000; ints pass through."""
    if isinstance(size, int):
        return size
    if size.strip().isdigit():
        return int(size)
    from huggingface_hub.serialization._base import parse_size_to_int

    return parse_size_to_int(size)


class ShardedSafetensorsWriter:
    """Stream tensors into sharded safetensors files whose headers are written before the data.

    Sharding follows huggingface_hub's `split_state_dict_into_shards_factory` (the algorithm behind
    `split_torch_state_dict_into_shards`), fed with sizes known from the plan.

    Args:
        directory (`str`):
            Where to write the shards and, when there are several, `model.safetensors.index.json`.
        entries (`list[tuple[str, torch.dtype, tuple[int, ...]]]`):
            Every output tensor's name, dtype and shape.
        max_shard_size (`int` or `str`, *optional*, defaults to `"5GB"`):
            Largest shard.
        metadata (`dict[str, str]`, *optional*):
            Extra `__metadata__` strings; `{"format": "pt"}` is always set.

    Tensors must then be passed to [`write`] in the order of [`order`].
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
        sizes = {name: _nbytes(code, shape) for name, (code, shape) in specs.items()}
        split = split_state_dict_into_shards_factory(
            {name: _Planned(name) for name in specs},  # (plain strings would be skipped as bnb metadata)
            get_storage_size=lambda t: sizes[t.name],
            filename_pattern="model{suffix}.safetensors",
            max_shard_size=parse_size(max_shard_size),
        )
        self.files: list[tuple[str, list[str]]] = [
            (file, [n for n in specs if n in set(names)]) for file, names in split.filename_to_tensors.items()
        ]
        if len(self.files) == 1:
            self.files = [(SAFETENSORS_SINGLE, self.files[0][1])]
        self.specs = specs
        self.total_size = sum(sizes.values())
        self.order: list[str] = [n for _, names in self.files for n in names]
        self._position = 0
        self._file_index = -1
        self._handle = None
        self._remaining = 0
        self._offset = 0

    def _open_next(self) -> None:
        self._close_handle()
        self._file_index += 1
        file, names = self.files[self._file_index]
        header, _ = build_header([(n, *self.specs[n]) for n in names], self.metadata)
        self._handle = open(os.path.join(self.directory, file), "wb")
        self._handle.write(header)
        self._remaining = len(names)

    def _close_handle(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Append the next tensor, whole or as consecutive flat chunks of it, in the planned order and dtype."""
        expected = self.order[self._position] if self._position < len(self.order) else None
        if name != expected:
            raise SoupError(f"writer expected tensor {expected!r} next, got {name!r}.", tensor=name)
        code, shape = self.specs[name]
        if dtype_code(tensor.dtype) != code:
            raise SoupError(f"planned as {code} but got {dtype_code(tensor.dtype)}.", tensor=name)
        if self._offset == 0 and self._remaining == 0:
            self._open_next()
        assert self._handle is not None
        nbytes = tensor.numel() * tensor.element_size()
        total = _nbytes(code, shape)
        if self._offset + nbytes > total:
            raise SoupError(f"got {self._offset + nbytes} bytes for a {total}-byte tensor.", tensor=name)
        if nbytes:
            self._handle.write(memoryview(tensor.contiguous().reshape(-1).view(torch.uint8).numpy()))
        self._offset += nbytes
        if self._offset == total:
            self._offset = 0
            self._remaining -= 1
            self._position += 1

    def close(self) -> list[str]:
        """Finish the last shard and write the index; returns the files written."""
        if self._position != len(self.order):
            raise SoupError(f"writer closed after {self._position} of {len(self.order)} tensors.")
        if not self.order:  # an empty plan still yields a valid (empty) checkpoint
            self._open_next()
        self._close_handle()
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
        self._close_handle()


class _Planned:
    """A placeholder for a tensor not computed yet, sized from the plan."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


def _nbytes(code: str, shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n * itemsize(code)
