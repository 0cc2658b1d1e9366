"""Lazy checkpoint readers: tensor names, shapes and dtypes from headers; weights only when asked for.

A reader is a `Mapping[str, torch.Tensor]`, so the merge math also accepts plain dicts.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping

import torch

from ..errors import (
    CorruptCheckpointError,
    IngredientNotFoundError,
    NoSafetensorsError,
    SoupError,
    UnsafeCheckpointError,
)
from .format import DTYPES, TensorInfo, dtype_code, parse_header
from .layout import (
    FULL_MODEL,
    SAFETENSORS_INDEX,
    SAFETENSORS_SINGLE,
    Layout,
    WeightFiles,
)
from .safe_files import open_inside, read_inside, resolve_inside
from .sources import ByteSource, LocalFileSource

__all__ = [
    "CheckpointReader",
    "SafetensorsReader",
    "StateDictReader",
    "open_checkpoint",
    "safe_join",
    "load_weight_map",
    "read_shard_index",
    "SAFETENSORS_SINGLE",
    "SAFETENSORS_INDEX",
]



class CheckpointReader(Mapping[str, torch.Tensor]):
    """Base class: `.tensors` maps names to [`TensorInfo`]; indexing returns a tensor that owns its memory."""

    tensors: dict[str, TensorInfo]
    ingredient: str | None = None

    def read(self, name: str, buffer: torch.Tensor | None = None) -> torch.Tensor:
        """Read one tensor, into `buffer` (a flat `uint8` tensor) when given. The result may alias `buffer`."""
        raise NotImplementedError

    def read_range(self, name: str, start: int, count: int, buffer: torch.Tensor | None = None) -> torch.Tensor:
        """Read elements `[start, start + count)` of the flattened tensor, into `buffer` when given."""
        return self.read(name).reshape(-1)[start : start + count]

    def view_range(self, name: str, start: int, count: int) -> torch.Tensor | None:
        """Elements `[start, start + count)` without a copy (a view of mapped pages), or `None` when not mappable.

        The view is read-only by contract and valid while the reader is open.
        """
        return None

    def check_unchanged(self) -> None:
        """Raise [`CorruptCheckpointError`] if a file was modified since it was opened (no-op when not applicable)."""

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self.tensors:
            raise KeyError(name)
        return self.read(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)

    def close(self) -> None:
        pass

    def __enter__(self) -> CheckpointReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SafetensorsReader(CheckpointReader):
    """Reads tensors from safetensors files through [`ByteSource`]s, parsing every header up front.

    Args:
        sources (`dict[str, ByteSource]`):
            One byte source per shard file name.
        weight_map (`dict[str, str]`, *optional*):
            The index's tensor -> file map. Checked against the headers when given.
        ingredient (`str`, *optional*):
            Name used in errors.
    """

    def __init__(
        self,
        sources: Mapping[str, ByteSource],
        weight_map: Mapping[str, str] | None = None,
        ingredient: str | None = None,
    ) -> None:
        self.ingredient = ingredient
        self.sources = dict(sources)
        self.tensors = {}
        self.metadata: dict[str, dict[str, str]] = {}
        for file, source in self.sources.items():
            infos, meta = parse_header(source.read, source.size, file, ingredient)
            self.metadata[file] = meta
            for name, info in infos.items():
                if weight_map is not None and weight_map.get(name, file) != file:
                    continue  # the index says another shard owns this name
                if name in self.tensors:
                    raise CorruptCheckpointError(
                        f"stored in both '{self.tensors[name].file}' and '{file}'.", ingredient=ingredient,
                        tensor=name, fix="re-export the checkpoint so that each tensor is stored once.",
                    )
                self.tensors[name] = info
        if weight_map is not None:
            for name, file in weight_map.items():
                if name not in self.tensors:
                    raise CorruptCheckpointError(
                        f"the index maps it to '{file}', whose header does not hold it.", ingredient=ingredient,
                        tensor=name, file=SAFETENSORS_INDEX, fix="re-download the checkpoint; the index and shards disagree.",
                    )

    def read(self, name: str, buffer: torch.Tensor | None = None) -> torch.Tensor:
        info = self.tensors[name]
        return self.read_range(name, 0, info.numel, buffer).view(info.shape)

    def read_range(self, name: str, start: int, count: int, buffer: torch.Tensor | None = None) -> torch.Tensor:
        info = self.tensors[name]
        dtype = DTYPES[info.dtype]
        size = torch.empty((), dtype=dtype).element_size()
        nbytes = count * size
        if nbytes == 0:
            return torch.empty(0, dtype=dtype)
        if buffer is None or buffer.numel() < nbytes:
            buffer = torch.empty(nbytes, dtype=torch.uint8)
        raw = buffer[:nbytes]
        offset = info.start + start * size
        got = self.sources[info.file].readinto(offset, memoryview(raw.numpy()))
        if got != nbytes:
            raise CorruptCheckpointError(
                f"expected {nbytes} bytes at offset {offset}, got {got}: the file is truncated.",
                ingredient=self.ingredient, file=info.file, tensor=name, fix="re-download the checkpoint.",
            )
        return raw.view(dtype)

    def view_range(self, name: str, start: int, count: int) -> torch.Tensor | None:
        info = self.tensors[name]
        mapped = getattr(self.sources[info.file], "mapped", None)
        dtype = DTYPES[info.dtype]
        size = dtype.itemsize
        offset = info.start + start * size
        if count == 0:
            return torch.empty(0, dtype=dtype)
        if mapped is None or offset % size:  # not a local file, or misaligned: the caller copies instead
            return None
        buffer = mapped()
        if buffer is None or offset + count * size > len(buffer):
            return None
        return torch.frombuffer(buffer, dtype=dtype, count=count, offset=offset)

    def check_unchanged(self) -> None:
        for file, source in self.sources.items():
            why = source.changed() if hasattr(source, "changed") else None
            if why:
                raise CorruptCheckpointError(
                    f"{why}; the soup was not written.", ingredient=self.ingredient, file=file,
                    fix="do not modify ingredients while souping them; run again once they are stable.",
                )

    def close(self) -> None:
        for source in self.sources.values():
            source.close()


class StateDictReader(CheckpointReader):
    """A reader over tensors already in memory (tests, pickled checkpoints loaded with `weights_only=True`)."""

    def __init__(self, state_dict: Mapping[str, torch.Tensor], ingredient: str | None = None, file: str = "<memory>"):
        self.ingredient = ingredient
        self._state = {k: v.detach() for k, v in state_dict.items()}
        self.tensors = {
            k: TensorInfo(k, dtype_code(v.dtype), tuple(v.shape), file, -1, v.numel() * v.element_size())
            for k, v in self._state.items()
        }

    def read(self, name: str, buffer: torch.Tensor | None = None) -> torch.Tensor:
        return self._state[name]


def safe_join(directory: str, relative: str, ingredient: str | None = None, file: str | None = None) -> str:
    """Join `relative` onto `directory`, refusing absolute paths, `..` and symlinks that escape it.

    The file need not exist yet (shards named by an index are checked before they are downloaded).

    Raises:
        [`UnsafeCheckpointError`]: when the path would leave the checkpoint directory.
    """
    resolve_inside(directory, relative, ingredient=ingredient, file=file, must_exist=False, regular=False)
    return os.path.join(directory, *[p for p in relative.replace("\\", "/").split("/") if p not in ("", ".")])


def read_shard_index(directory: str, ingredient: str | None,
                     index_name: str = SAFETENSORS_INDEX) -> tuple[dict[str, str], list[str]]:
    """The shard index of a checkpoint directory (local, or a Hub cache snapshot): its validated `weight_map` and
    its shard files, sorted, each checked to stay inside the directory before anything reads (or requests) it.

    Raises:
        [`CorruptCheckpointError`]: the index is missing, not JSON, or malformed.
        [`UnsafeCheckpointError`]: the index, or a shard it names, lies outside the directory.
    """
    weight_map = load_weight_map(os.path.join(directory, index_name), ingredient, index_name)
    shards = sorted(set(weight_map.values()))
    for shard in shards:
        safe_join(directory, shard, ingredient, index_name)
    return weight_map, shards


def load_weight_map(path: str, ingredient: str | None, index_name: str = SAFETENSORS_INDEX) -> dict[str, str]:
    """The `weight_map` of a shard index file, validated as a mapping of strings to strings.

    The index is read only if it is a regular file inside its directory (see [`open_inside`]).

    Raises:
        [`CorruptCheckpointError`]: the index is missing, not JSON, or malformed.
        [`UnsafeCheckpointError`]: the index is a link out of its directory, a FIFO or a device.
    """
    directory, name = os.path.split(os.path.abspath(path))
    try:
        index = json.loads(read_inside(directory, name, ingredient=ingredient, file=index_name))
        weight_map = index["weight_map"]
        if not isinstance(weight_map, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
        ):
            raise TypeError("weight_map must map strings to strings")
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as e:
        if isinstance(e, SoupError) and not isinstance(e, IngredientNotFoundError):
            raise
        raise CorruptCheckpointError(
            f"cannot read the shard index ({type(e).__name__}: {str(e)[:200]}).", ingredient=ingredient, file=index_name,
            fix="re-download or re-export the checkpoint.",
        ) from None
    return weight_map


def open_checkpoint(
    directory: str | os.PathLike[str], *, ingredient: str | None = None, allow_pickle: bool = False,
    layout: Layout = FULL_MODEL,
) -> CheckpointReader:
    """Open the weights of a transformers checkpoint directory lazily.

    Looks for `model.safetensors.index.json`, then `model.safetensors`. Pickled weights (`pytorch_model.bin`)
    are refused unless `allow_pickle=True`, and then loaded only with `torch.load(weights_only=True)`.

    Args:
        directory (`str` or `os.PathLike`):
            The checkpoint directory.
        ingredient (`str`, *optional*):
            Name used in errors; defaults to the directory.
        allow_pickle (`bool`, *optional*, defaults to `False`):
            Accept `pytorch_model.bin` checkpoints, loaded with `torch.load(weights_only=True)`.
        layout ([`Layout`], *optional*, defaults to the full-model layout):
            Which files hold the weights (see `checkpoint/layout.py`).

    Returns:
        [`CheckpointReader`]: a lazy mapping of tensor names to tensors.

    Raises:
        [`IngredientNotFoundError`]: the directory does not exist.
        [`NoSafetensorsError`]: no safetensors weights and `allow_pickle=False`.
        [`UnsafeCheckpointError`]: the index points outside the directory.
        [`CorruptCheckpointError`]: a header or index is malformed.
    """
    directory = os.fspath(directory)
    ingredient = ingredient or directory
    if not os.path.isdir(directory):
        raise IngredientNotFoundError(
            "no such checkpoint directory.", ingredient=ingredient, fix="check the path, or pass a Hub repo id."
        )
    weight_map: dict[str, str] | None
    found = layout.find(lambda name: os.path.lexists(os.path.join(directory, name)))
    if found is None or found.pickled:
        return _open_pickle(directory, ingredient, allow_pickle, layout, found)
    if found.index:
        weight_map, files = read_shard_index(directory, ingredient, found.file)
    else:
        weight_map, files = None, [found.file]
    sources: dict[str, ByteSource] = {}
    try:
        for file in files:
            if weight_map is None:
                safe_join(directory, file, ingredient)
            try:
                fd = open_inside(directory, file, ingredient=ingredient)
            except IngredientNotFoundError:
                raise CorruptCheckpointError(
                    "the index names this shard but it is missing.", ingredient=ingredient, file=file,
                    fix="re-download the checkpoint (all shards).",
                ) from None
            sources[file] = LocalFileSource(os.path.join(directory, file), name=file, fd=fd)
        return SafetensorsReader(sources, weight_map, ingredient)
    except BaseException:
        for source in sources.values():
            source.close()
        raise


def _open_pickle(directory: str, ingredient: str, allow_pickle: bool, layout: Layout,
                 found: WeightFiles | None) -> CheckpointReader:
    if found is None:
        named = " nor ".join(n for n in (layout.safetensors, layout.safetensors_index) if n)
        raise NoSafetensorsError(
            f"no weights found (neither {named}).",
            ingredient=ingredient, fix="point to a directory written by `save_pretrained`.",
        )
    if not allow_pickle:
        raise NoSafetensorsError(
            f"only pickled weights ({found.file}) were found, and loading pickles "
            "can run arbitrary code.", ingredient=ingredient,
            fix="convert the checkpoint to safetensors, or pass allow_pickle=True to load it with "
            "torch.load(weights_only=True).",
        )
    files = read_shard_index(directory, ingredient, found.file)[1] if found.index else [found.file]
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_pickled_state(directory, file, ingredient))
    return StateDictReader(state, ingredient, file=files[0])


def load_pickled_state(directory: str, file: str, ingredient: str) -> dict[str, torch.Tensor]:
    """A pickled state dict inside `directory`, loaded with `torch.load(weights_only=True)` only (the caller has been
    given `allow_pickle=True`).

    Raises:
        [`UnsafeCheckpointError`]: `weights_only` refused the file (it holds more than tensors).
        [`CorruptCheckpointError`]: not a mapping of tensors.
    """
    path = resolve_inside(directory, file, ingredient=ingredient)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # weights_only refuses anything but tensors and plain containers
        raise UnsafeCheckpointError(
            f"refused by torch.load(weights_only=True): {type(e).__name__}: {str(e).splitlines()[0][:200]}",
            ingredient=ingredient, file=file,
            fix="this file holds more than tensors; convert it to safetensors in a sandbox you trust.",
        ) from None
    if not isinstance(loaded, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                               for k, v in loaded.items()):
        raise CorruptCheckpointError("does not hold a state dict of tensors.", ingredient=ingredient, file=file)
    return loaded
