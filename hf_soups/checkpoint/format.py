"""The safetensors file format: dtype codes, header parsing and validation, header writing.

The format is tiny (https://huggingface.co/docs/safetensors): 8 bytes of little-endian header length `N`, `N`
bytes of JSON mapping each tensor name to `{"dtype", "shape", "data_offsets"}` (plus an optional
`__metadata__` of strings), then the raw data. Parsing here never trusts the file: every size is checked
against the real file size before anything is allocated.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .. import constants
from ..errors import CorruptCheckpointError

__all__ = ["DTYPES", "TensorInfo", "parse_header", "build_header", "dtype_code", "numel", "nbytes"]

#: safetensors dtype code -> torch dtype.
DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
for _code, _name in (("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2"), ("U16", "uint16"),
                     ("U32", "uint32"), ("U64", "uint64")):
    if hasattr(torch, _name):
        DTYPES[_code] = getattr(torch, _name)
_CODES = {v: k for k, v in DTYPES.items()}

FLOAT_CODES = frozenset({"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"})


def dtype_code(dtype: torch.dtype) -> str:
    """The safetensors code of a torch dtype (`torch.float32` -> `"F32"`)."""
    try:
        return _CODES[dtype]
    except KeyError:
        raise CorruptCheckpointError(f"dtype {dtype} cannot be stored in safetensors.") from None


def numel(shape: tuple[int, ...] | list[int]) -> int:
    """Elements of a tensor of this shape (1 for a scalar): the one place element counts are computed."""
    return math.prod(shape)


def nbytes(code: str, shape: tuple[int, ...] | list[int]) -> int:
    """Bytes of a tensor of dtype `code` and this shape."""
    return numel(shape) * itemsize(code)


def itemsize(code: str) -> int:
    return torch.empty((), dtype=DTYPES[code]).element_size()


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: read from a header, no weights involved.

    Attributes:
        name (`str`): tensor name.
        dtype (`str`): safetensors dtype code (`"F32"`, `"BF16"`, ...).
        shape (`tuple[int, ...]`): the shape.
        file (`str`): the shard file name, relative to the checkpoint.
        start (`int`): absolute byte offset of the data in the file.
        nbytes (`int`): size of the data in bytes.
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    file: str
    start: int
    nbytes: int

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_CODES

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def numel(self) -> int:
        return numel(self.shape)


def parse_header(
    read: Callable[[int, int], bytes], file_size: int, file: str, ingredient: str | None = None
) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parse and validate the header of one safetensors file.

    Args:
        read (`Callable[[int, int], bytes]`):
            `read(offset, length)` returning exactly the requested bytes of the file (or fewer at its end).
        file_size (`int`):
            The real size of the file in bytes.
        file (`str`):
            The file name, used in errors and stored in each [`TensorInfo`].
        ingredient (`str`, *optional*):
            The ingredient the file belongs to, used in errors.

    Returns:
        `tuple[dict[str, TensorInfo], dict[str, str]]`: the tensors by name, and the `__metadata__` strings.

    Raises:
        [`CorruptCheckpointError`]: truncated file, absurd header size, non-JSON header, unknown dtype, a shape
            that does not match its byte range, offsets that overlap, leave gaps or run past the end.
    """

    def corrupt(msg: str, tensor: str | None = None) -> CorruptCheckpointError:
        return CorruptCheckpointError(
            msg, ingredient=ingredient, file=file, tensor=tensor,
            fix="re-download or re-export the checkpoint with safetensors (`model.save_pretrained(...)`).",
        )

    if file_size < 8:
        raise corrupt(f"the file is {file_size} bytes long, too short to hold a safetensors header.")
    prefix = read(0, 8)
    if len(prefix) != 8:
        raise corrupt("could not read the 8-byte header length.")
    (n,) = struct.unpack("<Q", prefix)
    if n > constants.MAX_HEADER_SIZE:
        raise corrupt(f"the header claims {n} bytes, more than the {constants.MAX_HEADER_SIZE}-byte limit.")
    if 8 + n > file_size:
        raise corrupt(f"the header claims {n} bytes but the file holds only {file_size - 8} after the length.")
    raw = read(8, n)
    if len(raw) != n:
        raise corrupt("the file ended inside the header.")
    try:  # strict JSON, as safetensors' serde parser: no NaN/Infinity literals
        header = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise corrupt(f"the header is not valid JSON ({type(e).__name__}).") from None
    if not isinstance(header, dict):
        raise corrupt("the header is not a JSON object.")
    metadata = header.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and _is_utf8(k) and _is_utf8(v) for k, v in metadata.items()
    ):
        raise corrupt("`__metadata__` must map strings to strings.")
    data_start = 8 + n
    data_size = file_size - data_start
    tensors: dict[str, TensorInfo] = {}
    spans: list[tuple[int, int, str]] = []
    for name, entry in header.items():
        if not _is_utf8(name):
            raise corrupt("a tensor name holds an unpaired UTF-16 surrogate escape.", _short(name))
        if not isinstance(entry, dict):
            raise corrupt("the entry is not an object.", name)
        code, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if not isinstance(code, str) or code not in DTYPES:
            raise corrupt(f"unknown dtype {code!r}.", name)
        if not isinstance(shape, list) or not all(type(d) is int and 0 <= d < _MAX_DIM for d in shape):
            raise corrupt(f"invalid shape {_short(shape)}.", name)
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(type(o) is int and 0 <= o < _U64 for o in offsets)
            or offsets[0] > offsets[1]
        ):
            raise corrupt(f"invalid data_offsets {_short(offsets)}.", name)
        begin, end = offsets
        if end > data_size:
            raise corrupt(f"data_offsets {offsets} run past the end of the data ({data_size} bytes).", name)
        count = 1
        for d in shape:  # the element count must not overflow 64 bits at any step (safetensors' checked_mul)
            count *= d
            if count >= _U64:
                raise corrupt(f"shape {_short(shape)} overflows a 64-bit element count.", name)
        size = count * itemsize(code)
        if size >= _U64:
            raise corrupt(f"shape {_short(shape)} of {code} overflows a 64-bit byte count.", name)
        if size != end - begin:
            raise corrupt(f"shape {shape} of {code} needs {size} bytes but data_offsets span {end - begin}.", name)
        spans.append((begin, end, name))
        tensors[name] = TensorInfo(name, code, tuple(shape), file, data_start + begin, end - begin)
    spans.sort()
    position = 0
    for begin, end, name in spans:
        if begin != position:
            kind = "overlap" if begin < position else "leave a gap before"
            raise corrupt(f"data_offsets [{begin}, {end}] {kind} the previous tensor.", name)
        position = end
    if position != data_size:
        raise corrupt(f"the tensors cover {position} bytes but the file holds {data_size} bytes of data.")
    return tensors, metadata


_U64 = 2**64
_MAX_DIM = 2**63  # torch shapes are int64


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate, which safetensors' JSON parser refuses
        return False
    return True


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def build_header(
    entries: list[tuple[str, str, tuple[int, ...]]], metadata: dict[str, str] | None = None
) -> tuple[bytes, dict[str, tuple[int, int]]]:
    """Serialise a header for tensors laid out contiguously in the given order.

    Args:
        entries (`list[tuple[str, str, tuple[int, ...]]]`): `(name, dtype code, shape)` in file order.
        metadata (`dict[str, str]`, *optional*): the `__metadata__` strings.

    Returns:
        `tuple[bytes, dict[str, tuple[int, int]]]`: the bytes to write first (length prefix, JSON padded with
        spaces to a multiple of 8) and each tensor's `(begin, end)` data offsets.
    """
    metadata = dict(metadata or {"format": "pt"})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise CorruptCheckpointError("the output's `__metadata__` must map strings to strings (safetensors refuses "
                                     "anything else).", fix="pass string values only.")
    header: dict[str, object] = {"__metadata__": metadata}
    offsets: dict[str, tuple[int, int]] = {}
    position = 0
    for name, code, shape in entries:
        size = nbytes(code, shape)
        offsets[name] = (position, position + size)
        header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [position, position + size]}
        position += size
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw, offsets
