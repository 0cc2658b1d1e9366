"""The merge engine's paths against independently computed means (torch.stack over safetensors' own loader).

Paths: memory-mapped local files (zero-copy views), copies where a tensor cannot be viewed in place (misaligned
offsets), ranged HTTP (`stream=True` against the loopback Hub), fp32/bf16/fp16, weights, permuted classifier rows,
integer buffers, one thread or several, and the check that refuses an input modified during the merge.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import publish, state_dict_of
from safetensors.torch import save_file

from hf_soups import CorruptCheckpointError, soup_from_hub
from hf_soups.checkpoint import ShardedSafetensorsWriter, open_checkpoint
from hf_soups.checkpoint.format import build_header
from hf_soups.checkpoint.reader import SafetensorsReader
from hf_soups.merge import build_plan, merge_to_directory
from hf_soups import HubAccess, MergeOptions


def _checkpoints(tmp_path, k, dtype, seed=0):
    paths = []
    for i in range(k):
        gen = torch.Generator().manual_seed(seed + i)
        tensors = {
            "big.weight": torch.randn(61, 47, generator=gen).to(dtype),  # several chunks of 333 elements
            "odd.bias": torch.randn(1001, generator=gen).to(dtype),
            "tiny": torch.randn(3, generator=gen).to(dtype),
            "empty": torch.zeros(0, 4, dtype=dtype),
            "steps": torch.tensor([7, 8, 9], dtype=torch.int64),
        }
        path = tmp_path / f"ing{i}"
        path.mkdir()
        save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
        paths.append(path)
    return paths


def _merge(paths, tmp_path, out="out", weights=None, **plan_kw):
    readers = [open_checkpoint(p) for p in paths]
    try:
        plan = build_plan([r.tensors for r in readers], weights or [1.0] * len(readers), **plan_kw)
        target = tmp_path / out
        target.mkdir()
        merge_to_directory(plan, readers, str(target), progress=False)
    finally:
        for r in readers:
            r.close()
    return state_dict_of(target)


def _no_copies(monkeypatch):
    """Fail if the engine copies tensor data instead of viewing the mapped pages."""
    def refuse(self, name, *a, **k):
        raise AssertionError(f"{name} was copied, not viewed in place")

    monkeypatch.setattr(SafetensorsReader, "read_range", refuse)


@pytest.mark.parametrize("threads", ["1", "3"])
@pytest.mark.parametrize("k", [2, 3, 4])
def test_mapped_fp32_is_bitwise_the_stacked_mean(tmp_path, monkeypatch, threads, k):
    monkeypatch.setenv("HF_SOUPS_NUM_THREADS", threads)
    paths = _checkpoints(tmp_path, k, torch.float32)
    sds = [state_dict_of(p) for p in paths]
    _no_copies(monkeypatch)
    out = _merge(paths, tmp_path)
    for name in ("big.weight", "odd.bias", "tiny"):
        stacked = torch.stack([sd[name] for sd in sds])
        assert torch.equal(out[name], stacked.sum(0) / k), name  # mergekit linear's order of operations
        torch.testing.assert_close(out[name], stacked.mean(0), rtol=0, atol=1e-6)
    assert out["empty"].shape == (0, 4)
    assert torch.equal(out["steps"], sds[0]["steps"])  # integer buffers are copied, never averaged


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_accumulates_in_fp32(tmp_path, monkeypatch, dtype):
    paths = _checkpoints(tmp_path, 3, dtype)
    sds = [state_dict_of(p) for p in paths]
    _no_copies(monkeypatch)
    out = _merge(paths, tmp_path)
    for name in ("big.weight", "odd.bias", "tiny"):
        expected = torch.stack([sd[name].float() for sd in sds]).sum(0).div(3).to(dtype)
        assert out[name].dtype == dtype and torch.equal(out[name], expected), name


def test_half_precision_chunks_allocate_nothing_per_chunk(monkeypatch):
    """bf16 inputs are converted into one reused fp32 buffer per thread, not into a fresh temporary per add (torch's
    CPU default): per-chunk allocations fragment the allocator's heaps and grow private memory."""
    from torch.profiler import ProfilerActivity, profile

    from hf_soups.checkpoint.reader import StateDictReader
    from hf_soups.merge import iter_merged_chunks

    chunk = 4096
    monkeypatch.setenv("HF_SOUPS_CHUNK_ELEMENTS", str(chunk))
    gen = torch.Generator().manual_seed(0)
    readers = [StateDictReader({"w": torch.randn(64, 1024, generator=gen).to(torch.bfloat16)}) for _ in range(4)]
    plan = build_plan([r.tensors for r in readers], [1.0] * 4)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        chunks = [(start, c.clone()) for _, start, c in iter_merged_chunks(plan, readers)]
    assert len(chunks) == 16
    expected = torch.stack([r["w"].float() for r in readers]).sum(0).div(4).to(torch.bfloat16).reshape(-1)
    assert all(torch.equal(c, expected[s : s + c.numel()]) for s, c in chunks)
    fp32_chunks = [e for e in prof.events() if e.name in ("aten::empty", "aten::empty_strided")
                   and e.cpu_memory_usage >= chunk * 4]
    assert len(fp32_chunks) <= 2, fp32_chunks  # the accumulator and the conversion buffer, once each


def test_weighted_and_forced_dtype(tmp_path):
    paths = _checkpoints(tmp_path, 3, torch.bfloat16)
    sds = [state_dict_of(p) for p in paths]
    out = _merge(paths, tmp_path, weights=[0.5, 0.25, 0.25], dtype=torch.float32)
    for name in ("big.weight", "odd.bias"):
        expected = sum(w * sd[name].float() for w, sd in zip([0.5, 0.25, 0.25], sds))
        assert out[name].dtype == torch.float32
        torch.testing.assert_close(out[name], expected, rtol=0, atol=1e-6)


def test_misaligned_tensors_are_copied_and_still_exact(tmp_path, monkeypatch):
    """A file whose fp32 data starts at an odd offset cannot be viewed in place: the engine reads a copy."""
    paths, values = [], []
    for i in range(2):
        flags = torch.tensor([1, 0, 1], dtype=torch.uint8)
        w = torch.randn(500, generator=torch.Generator().manual_seed(i))
        header, _ = build_header([("flags", "U8", (3,)), ("w", "F32", (500,))], {"format": "pt"})
        path = tmp_path / f"mis{i}"
        path.mkdir()
        (path / "model.safetensors").write_bytes(header + flags.numpy().tobytes() + w.numpy().tobytes())
        paths.append(path)
        values.append(w)
    with open_checkpoint(paths[0]) as reader:
        assert reader.view_range("w", 0, 10) is None and reader.view_range("flags", 0, 3) is not None
    out = _merge(paths, tmp_path)
    assert torch.equal(out["w"], (values[0] + values[1]) / 2)
    assert torch.equal(out["flags"], torch.tensor([1, 0, 1], dtype=torch.uint8))


def test_permuted_label_rows(tmp_path):
    gen = torch.Generator().manual_seed(3)
    heads = [torch.randn(3, 8, generator=gen) for _ in range(2)]
    paths = []
    for i, head in enumerate(heads):
        path = tmp_path / f"p{i}"
        path.mkdir()
        save_file({"classifier.weight": head, "body": torch.randn(8, 8, generator=gen)}, path / "model.safetensors")
        paths.append(path)
    perm = (2, 0, 1)  # ingredient 1's row j is ingredient 0's label perm[j]
    out = _merge(paths, tmp_path, label_permutations=[None, perm], num_labels=3)
    assert torch.equal(out["classifier.weight"], (heads[0] + heads[1][list(perm)]) / 2)


def test_threads_give_identical_bytes(family, tmp_path, monkeypatch):
    outputs = []
    for threads in ("1", "2", "5"):
        monkeypatch.setenv("HF_SOUPS_NUM_THREADS", threads)
        soup = soup_from_hub([family["a"], family["b"], family["c"]], output_dir=tmp_path / threads,
                             merge_options=MergeOptions(max_shard_size="30KB", progress=False))
        files = sorted(f for f in os.listdir(soup.output_dir) if f.startswith("model"))
        outputs.append({f: (tmp_path / threads / f).read_bytes() for f in files})
    assert len(outputs[0]) > 2 and outputs[0] == outputs[1] == outputs[2]


def test_streamed_soup_is_the_independent_mean(hub, api, family, tmp_path):
    for key in ("a", "c"):
        publish(api, family[key], f"alice/engine-{key}")
    soup = soup_from_hub(["alice/engine-a", "alice/engine-c"], output_dir=tmp_path / "st",
                         merge_options=MergeOptions(stream=True, progress=False),
                         access=HubAccess(cache_dir=str(tmp_path / "cache")))
    a, c, out = state_dict_of(family["a"]), state_dict_of(family["c"]), state_dict_of(soup.output_dir)
    for name in a:
        expected = torch.stack([a[name], c[name]]).sum(0) / 2 if a[name].is_floating_point() else a[name]
        assert torch.equal(out[name], expected), name


def test_input_modified_during_merge_is_refused(family, tmp_path, monkeypatch):
    from hf_soups.checkpoint import writer as writer_mod

    victim = tmp_path / "victim"
    victim.mkdir()
    shutil.copytree(family["d"], victim, dirs_exist_ok=True)
    original = writer_mod.ShardedSafetensorsWriter.close

    def rewrite_then_close(self):
        with open(victim / "model.safetensors", "r+b") as f:  # same size, new bytes: no SIGBUS, but not the input
            f.seek(-4, os.SEEK_END)
            f.write(b"\x00\x00\x80\x7f")
        stat = os.stat(victim / "model.safetensors")
        os.utime(victim / "model.safetensors", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
        return original(self)

    monkeypatch.setattr(writer_mod.ShardedSafetensorsWriter, "close", rewrite_then_close)
    with pytest.raises(CorruptCheckpointError) as err:
        soup_from_hub([family["a"], victim], output_dir=tmp_path / "soup", merge_options=MergeOptions(progress=False))
    assert "model.safetensors" in str(err.value) and str(victim) in str(err.value) and "Fix:" in str(err.value)
    assert not (tmp_path / "soup").exists()
    assert not [p for p in os.listdir(tmp_path) if "hf-soups-tmp" in p]


def test_architecture_check_runs_beside_the_merge_and_still_blocks_the_commit(family, tmp_path):
    """The meta-device check overlaps the merge (it mostly imports transformers), but its verdict still decides."""
    from safetensors.torch import load_file

    from hf_soups import IncompatibleIngredientsError

    renamed = []
    for name in ("x", "y"):  # renamed alike: only the config's model can tell
        d = tmp_path / name
        shutil.copytree(family["d"], d)
        t = load_file(d / "model.safetensors")
        t["classifier.kernel"] = t.pop("classifier.weight")
        save_file(t, d / "model.safetensors", metadata={"format": "pt"})
        renamed.append(d)
    with pytest.raises(IncompatibleIngredientsError, match="classifier.kernel"):
        soup_from_hub(renamed, output_dir=tmp_path / "soup", merge_options=MergeOptions(progress=False))
    assert not (tmp_path / "soup").exists() and not [p for p in os.listdir(tmp_path) if "hf-soups-tmp" in p]


class _CountedName(str):
    """A tensor name that counts how often it is hashed: the writer's planning must touch each name O(1) times."""

    hashes = 0

    def __hash__(self):
        _CountedName.hashes += 1
        return str.__hash__(self)


def test_writer_plans_fifty_thousand_tensors_in_linear_time(tmp_path):
    small = 3000  # counted first on a size where a quadratic planner still fails fast
    _CountedName.hashes = 0
    ShardedSafetensorsWriter(str(tmp_path), [(_CountedName(f"t{i}"), torch.float32, (2,)) for i in range(small)])
    assert _CountedName.hashes <= 20 * small  # rebuilding a shard's name set per tensor would hash ~small**2 times
    n = 50_000
    writer = ShardedSafetensorsWriter(str(tmp_path), [(f"layer.{i}.w", torch.float32, (2,)) for i in range(n)],
                                      max_shard_size=20_000)
    assert len(writer.files) > 10
    ones = torch.ones(2)
    for name in writer.order:
        writer.write(name, ones)
    files = writer.close()
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(index["weight_map"]) == n and len(files) == len(writer.files) + 1
    with open_checkpoint(tmp_path) as reader:
        assert len(reader.tensors) == n and torch.equal(reader["layer.49999.w"], ones)


def _modules_after(code: str) -> set[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code + "\nimport sys\nprint(' '.join(sorted(sys.modules)))"],
                          capture_output=True, text=True, env=env, check=True)
    return {m.split(".")[0] for m in done.stdout.split()}


def test_import_and_help_load_only_what_they_use():
    heavy = {"datasets", "evaluate", "matplotlib"}
    assert not _modules_after("import hf_soups") & (heavy | {"torch", "transformers"})
    assert not _modules_after(
        "from hf_soups.cli.main import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass") & {"torch"}
    loaded = _modules_after("import hf_soups\nhf_soups.soup_from_hub")
    assert "torch" in loaded and not loaded & heavy  # the API itself, still without evaluation or plotting


def test_version_flag():
    from hf_soups import __version__

    done = subprocess.run([sys.executable, "-m", "hf_soups", "--version"], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert done.returncode == 0 and done.stdout.strip() == f"hf-soups {__version__}"
