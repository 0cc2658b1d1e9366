"""The weight-space init check (`distance.init_distances`): the same distances as a direct computation on the full
tensors, whatever the reader (mapped file, HTTP-like copying reader, in-memory state dict, plain dict) or the chunk
size, and peak memory that does not grow with the number of ingredients."""

from __future__ import annotations

import math
import os

import pytest
import torch
from safetensors.torch import save_file

from hf_soups import compat, distance
from hf_soups.checkpoint import open_checkpoint
from hf_soups.checkpoint.reader import SafetensorsReader, StateDictReader
from hf_soups.checkpoint.sources import LocalFileSource

SHAPES = {"a.weight": (37, 53), "b.weight": (128, 64), "c.weight": (5, 7)}  # ragged against every chunk size


class _Unmapped:
    """A local file read only by copies (like an HTTP range source): `view_range` finds no mapped pages."""

    def __init__(self, path):
        self._src = LocalFileSource(path)
        self.size, self.name = self._src.size, self._src.name
        self.reads = 0

    def read(self, offset, length):
        return self._src.read(offset, length)

    def readinto(self, offset, buffer):
        self.reads += 1
        return self._src.readinto(offset, buffer)

    def close(self):
        self._src.close()


def _state(seed, base=None, scale=0.01):
    gen = torch.Generator().manual_seed(seed)
    if base is None:
        return {n: torch.randn(s, generator=gen) for n, s in SHAPES.items()}
    return {n: base[n] + scale * torch.randn(s, generator=gen) for n, s in SHAPES.items()}


def _direct(readers, sample):
    """Independent truth: full tensors in float64, `||a - b|| / max(||a||, ||b||)`."""
    flat = [torch.cat([torch.as_tensor(r[n]).double().reshape(-1) for n in sample]) for r in readers]
    k = len(flat)
    return [[float((flat[i] - flat[j]).norm() / max(flat[i].norm(), flat[j].norm())) if i != j else 0.0
             for j in range(k)] for i in range(k)]


@pytest.mark.parametrize("chunk", [None, 1000, 7])
def test_distances_equal_a_direct_computation_for_every_reader(tmp_path, monkeypatch, chunk):
    if chunk is not None:
        monkeypatch.setattr(distance, "DISTANCE_CHUNK_ELEMENTS", chunk)
    base = _state(0)
    mapped_dir, copied_dir = tmp_path / "mapped", tmp_path / "copied"
    mapped_dir.mkdir()
    copied_dir.mkdir()
    tuned_bf16 = {n: t.to(torch.bfloat16) for n, t in _state(1, base).items()}
    save_file(tuned_bf16, mapped_dir / "model.safetensors")
    save_file({n: t.to(torch.float16) for n, t in _state(2, base).items()}, copied_dir / "model.safetensors")
    unmapped = _Unmapped(copied_dir / "model.safetensors")
    readers = [
        open_checkpoint(mapped_dir),  # bf16, zero-copy views of mapped pages
        SafetensorsReader({"model.safetensors": unmapped}),  # fp16, copied through the reused byte buffer
        StateDictReader(_state(3, base)),  # fp32 in memory
        {n: t.float() for n, t in tuned_bf16.items()},  # a plain dict: the bf16 ingredient again, as fp32
        StateDictReader(_state(99)),  # another random init
    ]
    names = ["mapped", "copied", "memory", "duplicate", "stranger"]
    sample = list(SHAPES)
    try:
        dist = distance.init_distances(readers, sample)
        direct = _direct(readers, sample)
        warnings, returned = distance.init_distance_warnings(names, readers, sample)
    finally:
        readers[0].close()
        readers[1].close()
    assert returned == dist
    for i in range(len(readers)):
        assert dist[i][i] == 0.0
        for j in range(len(readers)):
            assert dist[i][j] == dist[j][i]
            assert math.isclose(dist[i][j], direct[i][j], rel_tol=1e-5, abs_tol=1e-12), (names[i], names[j])
    assert dist[0][3] == 0.0  # the same values in another dtype: exactly no distance
    assert 1e-3 < dist[0][2] < 0.1 and dist[0][4] > 1.0  # fine-tunes vs another init, far apart either way
    if chunk == 7:
        assert unmapped.reads > len(sample)  # the copying reader was read chunk by chunk, not whole tensors
    assert [w.ingredient for w in warnings] == ["stranger"]
    assert warnings == compat.init_outlier_warnings(names, direct, len(sample))  # the same verdict and message


def _peak_rss_growth(fn):
    """Bytes of peak resident memory above the current one while `fn` runs, from the kernel's own high-water mark
    (`VmHWM`, reset through /proc/self/clear_refs): no sampling, nothing missed."""

    def status(key):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    before = status("VmRSS:")
    fn()
    return status("VmHWM:") - before


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK),
                    reason="needs Linux's /proc/self/clear_refs to reset the peak-RSS mark")
def test_peak_memory_does_not_grow_with_the_number_of_ingredients():
    k, numel = 16, 1 << 20
    gen = torch.Generator().manual_seed(0)
    base = {n: torch.randn(numel, generator=gen) for n in ("x", "y")}
    readers = [StateDictReader({n: (t + 0.01 * torch.randn(numel, generator=gen)).to(torch.bfloat16)
                                for n, t in base.items()}) for _ in range(k)]  # 64 MB of bf16 inputs, resident
    small = [StateDictReader({"x": r["x"][:4096]}) for r in readers]
    distance.init_distances(small, ["x"])  # warm-up: the code paths' pages are resident before measuring
    growth = _peak_rss_growth(lambda: distance.init_distances(readers, ["x", "y"]))
    one_fp32_copy_each = k * numel * 4  # 64 MiB: what holding every ingredient's tensor as fp32 at once costs
    assert growth < 32 * 2**20 < one_fp32_copy_each, f"peak growth {growth / 2**20:.1f} MiB"
