"""Reliability and security catalogue: foreign code never runs, nothing half-written looks complete."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from conftest import state_dict_of

from hf_soups import DiskFullError, SoupError, UnsafeCheckpointError, soup_from_hub
from hf_soups.modeling import load_model
from hf_soups.testing import make_tiny_bert
from hf_soups import HubAccess, MergeOptions


def _with_auto_map(src, dst):
    shutil.copytree(src, dst)
    path = os.path.join(dst, "config.json")
    config = json.load(open(path))
    config["auto_map"] = {"AutoModelForSequenceClassification": "modeling_evil.EvilModel"}
    json.dump(config, open(path, "w"))
    (dst / "modeling_evil.py").write_text(f"open({str(dst / 'PWNED')!r}, 'w').close()\n")
    return dst


def test_remote_code_is_refused_unless_opted_in(family, tmp_path):
    evil = _with_auto_map(family["d"], tmp_path / "evil")
    with pytest.raises(UnsafeCheckpointError) as err:
        soup_from_hub([family["a"], evil], output_dir=tmp_path / "soup", merge_options=MergeOptions(progress=False))
    assert "auto_map" in str(err.value) and "trust_remote_code=True" in str(err.value)
    with pytest.raises(UnsafeCheckpointError):
        load_model(evil)
    assert not (evil / "PWNED").exists()
    soup = soup_from_hub([family["a"], evil], output_dir=tmp_path / "soup", trust_remote_code=True,
                         merge_options=MergeOptions(progress=False))
    assert soup.trust_remote_code and os.path.exists(os.path.join(soup.output_dir, "model.safetensors"))


_KILL_SCRIPT = textwrap.dedent("""
    import sys, time
    from hf_soups.checkpoint import writer
    original = writer.ShardedSafetensorsWriter.write
    def slow(self, name, tensor, *args):
        original(self, name, tensor, *args)
        print("WROTE", flush=True)
        time.sleep(0.05)
    writer.ShardedSafetensorsWriter.write = slow
    from hf_soups import MergeOptions, soup_from_hub
    soup_from_hub(sys.argv[2:], output_dir=sys.argv[1], merge_options=MergeOptions(progress=False))
""")


def test_sigkill_mid_merge_leaves_nothing_that_looks_complete(family, tmp_path):
    out = tmp_path / "soup"
    env = {**os.environ, "HF_SOUPS_CHUNK_ELEMENTS": "100"}
    proc = subprocess.Popen([sys.executable, "-c", _KILL_SCRIPT, str(out), family["a"], family["d"]],
                            stdout=subprocess.PIPE, env=env)
    deadline = time.time() + 120
    seen = 0
    while seen < 5 and time.time() < deadline:
        if proc.stdout.readline().startswith(b"WROTE"):
            seen += 1
    assert seen == 5, "the merge never started"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()  # only a hidden temporary sibling may remain
    leftovers = [p for p in os.listdir(tmp_path) if "hf-soups-tmp" in p]
    assert leftovers and all(p.startswith(".soup") for p in leftovers)
    soup = soup_from_hub([family["a"], family["d"]], output_dir=out, merge_options=MergeOptions(progress=False))
    assert os.path.exists(os.path.join(soup.output_dir, "model.safetensors"))
    assert not [p for p in os.listdir(tmp_path) if "hf-soups-tmp" in p]  # the stale sibling was cleaned up


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    yield mount, done.returncode == 0
    if done.returncode == 0:
        subprocess.run(["umount", str(mount)], check=False)


def test_disk_full_gives_clear_error_and_cleans_up(tmp_path, small_disk, monkeypatch):
    mount, mounted = small_disk
    big = [make_tiny_bert(tmp_path / f"big{i}", seed=0, hidden_size=128, num_hidden_layers=4) for i in range(2)]
    if not mounted:  # not root: simulate the file system filling up after 1 MB instead
        import builtins
        import errno
        import io

        real_open = builtins.open

        class _Full(io.FileIO):
            written = 0

            def write(self, b):
                _Full.written += len(memoryview(b))
                if _Full.written > 1_000_000:
                    raise OSError(errno.ENOSPC, "No space left on device")
                return super().write(b)

        def fake_open(file, mode="r", *a, **k):
            if str(file).startswith(str(mount)) and "w" in mode and "b" in mode:
                return _Full(file, "w")
            return real_open(file, mode, *a, **k)

        monkeypatch.setattr(builtins, "open", fake_open)
    with pytest.raises(DiskFullError) as err:
        soup_from_hub(big, output_dir=mount / "soup", merge_options=MergeOptions(progress=False))
    assert isinstance(err.value, OSError) and "Fix:" in str(err.value) and "soup" in str(err.value)
    assert os.listdir(mount) == []  # partial output removed


def test_load_streaming_eight_ingredients_concurrently_with_a_push(api, hub, family, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from conftest import WRITE_TOKEN, publish

    from hf_soups.testing import perturb_checkpoint

    refs = []
    for i in range(8):
        path = perturb_checkpoint(family["base"], tmp_path / f"ing{i}", seed=100 + i,
                                  max_shard_size="30KB" if i % 2 else "5GB")
        publish(api, path, f"alice/load-{i}")
        refs.append(f"alice/load-{i}")
    reference = state_dict_of(soup_from_hub(refs, output_dir=tmp_path / "ref",
                              merge_options=MergeOptions(progress=False)).output_dir)
    pusher = soup_from_hub(refs[:2], output_dir=tmp_path / "pusher", merge_options=MergeOptions(progress=False))

    def stream(k):
        return soup_from_hub(refs, output_dir=tmp_path / f"stream{k}", merge_options=MergeOptions(stream=True,
                             progress=False), access=HubAccess(cache_dir=str(tmp_path / f"cache{k}")))

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(stream, k) for k in range(3)]
        push = pool.submit(pusher.push_to_hub, "alice/load-soup", token=WRITE_TOKEN)
        soups = [f.result(timeout=300) for f in futures]
        assert push.result(timeout=300).oid
    for soup in soups:
        got = state_dict_of(soup.output_dir)
        assert got.keys() == reference.keys()
        assert all(torch.equal(got[k], reference[k]) for k in reference)


def test_every_error_is_a_soup_error_with_a_fix(family, tmp_path):
    cases = [
        lambda: soup_from_hub([str(tmp_path / "nowhere"), family["a"]], merge_options=MergeOptions(progress=False)),
        lambda: soup_from_hub(["not a repo id!!", family["a"]], merge_options=MergeOptions(progress=False)),
        lambda: soup_from_hub([family["a"], family["d"]], method="weighted",
                              merge_options=MergeOptions(progress=False)),
        lambda: soup_from_hub([family["a"], family["d"]], method="weighted", weights=[1, -1],
                              merge_options=MergeOptions(progress=False)),
        lambda: soup_from_hub([family["a"], family["d"]], method="greedy", merge_options=MergeOptions(progress=False)),
        lambda: soup_from_hub([family["a"], family["d"]], method="nope", merge_options=MergeOptions(progress=False)),
    ]
    for case in cases:
        with pytest.raises(SoupError) as err:
            case()
        assert "Fix:" in str(err.value)
