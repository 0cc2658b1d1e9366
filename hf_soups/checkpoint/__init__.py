"""Checkpoint reading and writing: safetensors headers, lazy readers, streaming sharded writer. No HTTP here."""

from .format import DTYPES, TensorInfo, build_header, dtype_code, parse_header
from .reader import (
    SAFETENSORS_INDEX,
    SAFETENSORS_SINGLE,
    CheckpointReader,
    SafetensorsReader,
    StateDictReader,
    open_checkpoint,
    safe_join,
)
from .sources import ByteSource, LocalFileSource
from .writer import AtomicDirectory, ShardedSafetensorsWriter, parse_size

__all__ = [
    "DTYPES",
    "TensorInfo",
    "build_header",
    "dtype_code",
    "parse_header",
    "SAFETENSORS_INDEX",
    "SAFETENSORS_SINGLE",
    "CheckpointReader",
    "SafetensorsReader",
    "StateDictReader",
    "open_checkpoint",
    "safe_join",
    "ByteSource",
    "LocalFileSource",
    "AtomicDirectory",
    "ShardedSafetensorsWriter",
    "parse_size",
]
