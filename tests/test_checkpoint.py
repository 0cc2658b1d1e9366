"""Safetensors header parsing, the lazy reader and the streaming writer, checked against safetensors itself."""

from __future__ import annotations

import json
import os
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from hf_soups import CorruptCheckpointError, NoSafetensorsError, UnsafeCheckpointError
from hf_soups.checkpoint import ShardedSafetensorsWriter, open_checkpoint


def _tensors():
    g = torch.Generator().manual_seed(0)
    return {
        "a.weight": torch.randn(7, 5, generator=g),
        "b.bias": torch.randn(5, generator=g).to(torch.bfloat16),
        "c.ids": torch.arange(11, dtype=torch.int64),
        "d.half": torch.randn(3, 2, generator=g).half(),
        "e.scalar": torch.tensor(3.5),
        "f.empty": torch.empty(0, 4),
        "g.mask": torch.tensor([True, False, True]),
    }


def test_reader_matches_safetensors(tmp_path):
    tensors = _tensors()
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "config.json").write_text("{}")
    with open_checkpoint(tmp_path) as reader:
        assert set(reader) == set(tensors)
        for name, t in tensors.items():
            info = reader.tensors[name]
            assert info.shape == tuple(t.shape)
            assert reader[name].dtype == t.dtype
            assert torch.equal(reader[name], t)
        flat = tensors["a.weight"].reshape(-1)
        assert torch.equal(reader.read_range("a.weight", 4, 9), flat[4:13])


def test_reader_reads_headers_only(tmp_path, monkeypatch):
    save_file(_tensors(), tmp_path / "model.safetensors")
    from hf_soups.checkpoint import sources

    seen = []
    original = sources.LocalFileSource.read

    def spy(self, offset, length):
        seen.append(length)
        return original(self, offset, length)

    monkeypatch.setattr(sources.LocalFileSource, "read", spy)
    with open_checkpoint(tmp_path) as reader:
        assert len(reader.tensors) == 7
    header_len = struct.unpack("<Q", (tmp_path / "model.safetensors").read_bytes()[:8])[0]
    assert sum(seen) == 8 + header_len  # the length prefix and the JSON header, no tensor data


@pytest.mark.parametrize("shard", ["1KB", "200", "10GB"])
def test_writer_roundtrip_with_safetensors(tmp_path, shard):
    tensors = _tensors()
    writer = ShardedSafetensorsWriter(str(tmp_path), [(n, t.dtype, tuple(t.shape)) for n, t in tensors.items()],
                                      max_shard_size=shard)
    for name in writer.order:  # write in chunks to exercise the streaming path
        flat = tensors[name].reshape(-1)
        for start in range(0, max(flat.numel(), 1), 4):
            writer.write(name, flat[start : start + 4])
    files = writer.close()
    if len(files) == 1:
        assert files == ["model.safetensors"]
    else:
        index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
        assert set(index["weight_map"]) == set(tensors)
        assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in tensors.values())
    seen = {}
    for file in files:
        if file.endswith(".safetensors"):
            with safe_open(tmp_path / file, "pt") as f:
                assert f.metadata()["format"] == "pt"
                for k in f.keys():
                    seen[k] = f.get_tensor(k)
    assert set(seen) == set(tensors)
    for k, t in tensors.items():
        assert seen[k].dtype == t.dtype and torch.equal(seen[k], t)


@pytest.mark.parametrize("shard", ["1KB", "10GB"])
def test_writer_places_chunks_from_many_threads_in_any_order(tmp_path, shard):
    """Chunks written with `start`, shuffled, from eight threads at once (positional writes, no shared file
    position) land where safetensors' own loader reads them."""
    import random
    from concurrent.futures import ThreadPoolExecutor

    g = torch.Generator().manual_seed(1)
    tensors = {f"t{i}": torch.randn(37 + i, 11, generator=g).to(dtype)
               for i, dtype in enumerate([torch.float32, torch.bfloat16, torch.float16] * 4)}
    writer = ShardedSafetensorsWriter(str(tmp_path), [(n, t.dtype, tuple(t.shape)) for n, t in tensors.items()],
                                      max_shard_size=shard)
    chunks = [(n, s) for n, t in tensors.items() for s in range(0, t.numel(), 13)]
    random.Random(0).shuffle(chunks)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda c: writer.write(c[0], tensors[c[0]].reshape(-1)[c[1] : c[1] + 13], start=c[1]), chunks))
    files = writer.close()
    seen = {}
    for file in files:
        if file.endswith(".safetensors"):
            seen.update(load_file(tmp_path / file))
    assert set(seen) == set(tensors)
    assert all(seen[k].dtype == t.dtype and torch.equal(seen[k], t) for k, t in tensors.items())


def test_writer_rejects_out_of_order(tmp_path):
    writer = ShardedSafetensorsWriter(str(tmp_path), [("x", torch.float32, (2,)), ("y", torch.float32, (2,))])
    from hf_soups import SoupError

    with pytest.raises(SoupError, match="expected tensor"):
        writer.write(writer.order[1], torch.zeros(2))
    writer.abort()


def _write_raw(path, header: bytes, data: bytes = b"", length: int | None = None):
    n = len(header) if length is None else length
    path.write_bytes(struct.pack("<Q", n) + header + data)


CORRUPT_CASES = {
    "truncated": lambda p: p.write_bytes(b"\x01\x02\x03"),
    "header_longer_than_file": lambda p: _write_raw(p, b"{}", length=1000),
    "header_not_json": lambda p: _write_raw(p, b"{not json!"),
    "memory_bomb_header_size": lambda p: _write_raw(p, b"{}", length=2**62),
    "offsets_past_end": lambda p: _write_raw(
        p, json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode(), b"\0" * 8),
    "offsets_overlap": lambda p: _write_raw(p, json.dumps({
        "w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "v": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}).encode(), b"\0" * 12),
    "shape_does_not_match_bytes": lambda p: _write_raw(
        p, json.dumps({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}).encode(), b"\0" * 8),
    "unknown_dtype": lambda p: _write_raw(
        p, json.dumps({"w": {"dtype": "Q7", "shape": [1], "data_offsets": [0, 1]}}).encode(), b"\0"),
    "data_truncated_after_header": lambda p: _write_raw(
        p, json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode(), b"\0" * 16)
        or p.write_bytes(p.read_bytes()[:-3]),
}


@pytest.mark.parametrize("case", sorted(CORRUPT_CASES))
def test_corrupt_safetensors_get_clear_errors(tmp_path, case):
    CORRUPT_CASES[case](tmp_path / "model.safetensors")
    with pytest.raises(CorruptCheckpointError) as err:
        open_checkpoint(tmp_path, ingredient="user/broken")
    text = str(err.value)
    assert "user/broken" in text and "model.safetensors" in text and "Fix:" in text


@pytest.mark.parametrize("target", ["../../etc/passwd", "/etc/passwd", "sub/../../escape.safetensors"])
def test_index_pointing_outside_is_refused(tmp_path, target):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": target}}))
    with pytest.raises(UnsafeCheckpointError, match="refers to"):
        open_checkpoint(ckpt, ingredient="evil/repo")


def test_symlink_escaping_checkpoint_is_refused(tmp_path):
    outside = tmp_path / "outside.safetensors"
    save_file({"w": torch.zeros(2)}, outside)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    os.symlink(outside, ckpt / "model-00001-of-00001.safetensors")
    (ckpt / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"w": "model-00001-of-00001.safetensors"}}))
    with pytest.raises(UnsafeCheckpointError, match="symlink"):
        open_checkpoint(ckpt, ingredient="evil/repo")


def test_pickle_only_checkpoint_is_refused_by_default(tmp_path):
    torch.save({"w": torch.ones(2)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(NoSafetensorsError, match="allow_pickle=True"):
        open_checkpoint(tmp_path, ingredient="old/model")
    with open_checkpoint(tmp_path, ingredient="old/model", allow_pickle=True) as reader:
        assert torch.equal(reader["w"], torch.ones(2))


class _Payload:
    """Unpickling this runs code: it writes a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pickle_never_runs(tmp_path):
    marker = tmp_path / "PWNED"
    torch.save({"w": torch.ones(2), "evil": _Payload(str(marker))}, tmp_path / "pytorch_model.bin")
    with pytest.raises(NoSafetensorsError):
        open_checkpoint(tmp_path)
    with pytest.raises(UnsafeCheckpointError, match="weights_only"):
        open_checkpoint(tmp_path, allow_pickle=True)
    assert not marker.exists()
