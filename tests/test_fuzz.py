"""Property-based fuzzing of the checkpoint-reading path: only `SoupError` may escape, never a crash or a hang.

`make test` runs a bounded budget (HF_SOUPS_FUZZ_EXAMPLES, default 6,000 per test, three tests); `make fuzz` runs more.
"""

from __future__ import annotations

import json
import os
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hf_soups import SoupError
from hf_soups.checkpoint import SafetensorsReader
from hf_soups.checkpoint.format import DTYPES

EXAMPLES = int(os.environ.get("HF_SOUPS_FUZZ_EXAMPLES", 6000))
_SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                     suppress_health_check=list(HealthCheck))


class MemorySource:
    def __init__(self, data: bytes) -> None:
        self.data, self.size, self.name = data, len(data), "model.safetensors"

    def read(self, offset: int, length: int) -> bytes:
        return self.data[offset : offset + length]

    def readinto(self, offset: int, buffer: memoryview) -> int:
        chunk = self.data[offset : offset + len(buffer)]
        buffer[: len(chunk)] = chunk
        return len(chunk)

    def close(self) -> None:
        pass


def _exercise(data: bytes) -> None:
    try:
        reader = SafetensorsReader({"model.safetensors": MemorySource(data)}, ingredient="fuzz")
        for name in list(reader.tensors)[:8]:
            t = reader[name]
            assert t.numel() * t.element_size() == reader.tensors[name].nbytes
    except SoupError:
        pass


_dtype = st.one_of(st.sampled_from(sorted(DTYPES)), st.sampled_from(["F7", "", "f32", "I128"]), st.integers(),
                   st.none())
_dim = st.one_of(st.integers(0, 6), st.integers(-3, -1), st.integers(2**40, 2**63), st.just("3"), st.floats())
_offset = st.one_of(st.integers(0, 200), st.integers(-5, -1), st.integers(2**62, 2**64), st.text(max_size=3))
_entry = st.one_of(
    st.fixed_dictionaries({"dtype": _dtype, "shape": st.one_of(st.lists(_dim, max_size=4), st.integers()),
                           "data_offsets": st.one_of(st.lists(_offset, min_size=0, max_size=3),
                                                     st.tuples(_offset, _offset).map(list))}),
    st.integers(), st.text(max_size=5), st.none(), st.lists(st.integers(), max_size=3),
)
_header = st.dictionaries(st.text(max_size=8), _entry, max_size=6).map(
    lambda d: d if not d or "__metadata__" in d else {**d})
_metadata = st.one_of(st.none(), st.dictionaries(st.text(max_size=4), st.one_of(st.text(max_size=4), st.integers()),
                                                 max_size=2))


@_SETTINGS
@given(header=_header, metadata=_metadata, data_len=st.integers(0, 300),
       length_delta=st.one_of(st.just(0), st.integers(-20, 20), st.integers(2**30, 2**64 - 1)),
       pad=st.binary(max_size=8))
def test_structured_headers_only_raise_soup_errors(header, metadata, data_len, length_delta, pad):
    if metadata is not None:
        header = {**header, "__metadata__": metadata}
    raw = json.dumps(header).encode() + pad
    n = max(0, min(len(raw) + length_delta, 2**64 - 1))
    _exercise(struct.pack("<Q", n) + raw + bytes(data_len))


@_SETTINGS
@given(data=st.binary(max_size=512))
def test_random_bytes_only_raise_soup_errors(data):
    _exercise(data)


def _valid_file() -> bytes:
    import torch
    from safetensors.torch import save

    return save({"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(3, dtype=torch.bfloat16),
                 "c": torch.tensor([1, 2], dtype=torch.int64)}, metadata={"format": "pt"})


_VALID = _valid_file()


@_SETTINGS
@given(edits=st.lists(st.tuples(st.integers(0, len(_VALID) - 1), st.integers(0, 255)), min_size=1, max_size=6),
       cut=st.one_of(st.none(), st.integers(0, len(_VALID))))
def test_mutated_valid_files_only_raise_soup_errors(edits, cut):
    data = bytearray(_VALID)
    for pos, value in edits:
        data[pos] = value
    _exercise(bytes(data[:cut] if cut is not None else data))

