"""Evaluation on a CUDA GPU: greedy, learned, offloaded and `accelerate launch` runs put the model on the GPU and
decide as on the CPU. Skipped, with the reason, on machines without CUDA (the CPU suite covers the same wiring with
fake accelerate states in tests/test_eval_device.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from datasets import Dataset

from hf_soups import EvalSpec, MergeOptions, soup_from_hub
from hf_soups.evaluation import evaluate_checkpoint
from hf_soups.testing import make_tiny_sweep, sentiment_examples, write_csv

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
QUIET = MergeOptions(progress=False)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu")
    refs = make_tiny_sweep(root)
    data = sentiment_examples(200, seed=21)
    return {"refs": [*refs["good"], refs["bad"]], "base": refs["base"], "val": Dataset.from_dict(data),
            "test": Dataset.from_dict(sentiment_examples(160, seed=22)), "csv": write_csv(root / "val.csv", data)}


@pytest.fixture
def forward_devices():
    """The devices of the parameters of every module called during the test (a global forward pre-hook)."""
    seen: set[str] = set()

    def hook(module, args):
        seen.update(str(p.device) for p in module.parameters(recurse=False))

    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    yield seen
    handle.remove()


def _decisions(soup):
    return [(s["ingredient"], s["accepted"]) for s in soup.trace]


def test_greedy_and_evaluate_run_on_the_gpu_by_default(sweep, forward_devices, tmp_path):
    soup = soup_from_hub(sweep["refs"], "greedy", eval_dataset=sweep["val"], output_dir=tmp_path / "g",
                         merge_options=QUIET)
    assert forward_devices == {"cuda:0"}
    forward_devices.clear()
    report = soup.evaluate({"test": sweep["test"]}, base=sweep["base"], progress=False)
    assert forward_devices == {"cuda:0"}
    cpu = soup.evaluate({"test": sweep["test"]}, base=sweep["base"], device="cpu", progress=False)
    for method, score in cpu.results["test"].items():
        assert report.results["test"][method] == pytest.approx(score, abs=1e-4), method


def test_greedy_on_gpu_decides_as_on_cpu(sweep, tmp_path):
    gpu = soup_from_hub(sweep["refs"], "greedy", eval_dataset=sweep["val"], output_dir=tmp_path / "gpu",
                        eval_spec=EvalSpec(device="cuda"), merge_options=QUIET)
    cpu = soup_from_hub(sweep["refs"], "greedy", eval_dataset=sweep["val"], output_dir=tmp_path / "cpu",
                        eval_spec=EvalSpec(device="cpu"), merge_options=QUIET)
    assert _decisions(gpu) == _decisions(cpu) and gpu.weights == cpu.weights
    for a, b in zip(gpu.trace, cpu.trace):
        assert a["score"] == pytest.approx(b["score"], abs=1e-4)
    assert gpu.scores == pytest.approx(cpu.scores, abs=1e-4)
    bf16 = soup_from_hub(sweep["refs"], "greedy", eval_dataset=sweep["val"], output_dir=tmp_path / "bf16",
                         eval_spec=EvalSpec(device="cuda", dtype="bfloat16"), merge_options=QUIET)
    assert bf16.scores == pytest.approx(cpu.scores, abs=0.05)  # reduced precision: close, not exact
    assert bf16.recipe.evaluation.to_dict()["dtype"] == "bfloat16"


def test_learned_soup_on_gpu_converges_to_the_cpu_weights(sweep, tmp_path):
    runs = {}
    for device in ("cuda", "cpu"):
        runs[device] = soup_from_hub(sweep["refs"], "learned", eval_dataset=sweep["val"], output_dir=tmp_path / device,
                                     eval_spec=EvalSpec(device=device, learned_steps=20), merge_options=QUIET)
    assert runs["cuda"].weights == pytest.approx(runs["cpu"].weights, abs=2e-3)


def test_offloaded_evaluation_with_a_gpu_in_max_memory_equals_in_memory(sweep, forward_devices, tmp_path):
    path = sweep["refs"][0]
    in_memory = evaluate_checkpoint(path, sweep["val"], device="cpu")
    offloaded = evaluate_checkpoint(path, sweep["val"], max_memory={0: "60KB", "cpu": "40KB"},
                                    offload_folder=str(tmp_path / "off"))
    assert offloaded == pytest.approx(in_memory, abs=1e-4)
    assert "cuda:0" in forward_devices
    mem = soup_from_hub(sweep["refs"], "greedy", eval_dataset=sweep["val"], output_dir=tmp_path / "mem",
                        eval_spec=EvalSpec(device="cuda"), merge_options=QUIET)
    disk = soup_from_hub(sweep["refs"], "greedy", eval_dataset=sweep["val"], output_dir=tmp_path / "disk",
                         eval_spec=EvalSpec(max_memory={0: "60KB", "cpu": "40KB"},
                                            offload_folder=str(tmp_path / "off2")), merge_options=QUIET)
    assert _decisions(disk) == _decisions(mem) and disk.weights == mem.weights
    assert disk.scores == pytest.approx(mem.scores, abs=1e-4)


_PROBE = textwrap.dedent('''
    import json, sys, torch
    from hf_soups import MergeOptions, soup_from_hub
    from hf_soups.evaluation.data import load_eval_dataset
    from hf_soups.evaluation.distributed import state
    seen = set()
    torch.nn.modules.module.register_module_forward_pre_hook(
        lambda m, a: seen.update(str(p.device) for p in m.parameters(recurse=False)))
    refs, csv, out = sys.argv[1:-2], sys.argv[-2], sys.argv[-1]
    soup = soup_from_hub(refs, "greedy", eval_dataset=load_eval_dataset(csv), output_dir=out,
                         merge_options=MergeOptions(progress=False))
    print("PROBE " + json.dumps({"rank": state().process_index, "devices": sorted(seen),
                                 "trace": [[s["ingredient"], s["accepted"]] for s in soup.trace]}))
''')


def _launch(sweep, tmp_path, num_processes):
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable))
    assert accelerate, "accelerate's launcher is not installed"
    script = tmp_path / "probe.py"
    script.write_text(_PROBE)
    run = subprocess.run([accelerate, "launch", "--num_processes", str(num_processes), "--num_machines", "1",
                          "--mixed_precision", "no", "--dynamo_backend", "no", str(script), *sweep["refs"],
                          str(sweep["csv"]), str(tmp_path / f"soup{num_processes}")],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return [json.loads(line[6:]) for line in run.stdout.splitlines() if line.startswith("PROBE ")]


def test_accelerate_launch_one_process_puts_the_model_on_cuda0(sweep, tmp_path):
    (probe,) = _launch(sweep, tmp_path, 1)
    assert probe["devices"] == ["cuda:0"]
    single = soup_from_hub(sweep["refs"], "greedy", eval_dataset=sweep["val"], output_dir=tmp_path / "single",
                           eval_spec=EvalSpec(device="cpu"), merge_options=QUIET)
    assert [tuple(t) for t in probe["trace"]] == _decisions(single)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_accelerate_launch_two_gpus_each_rank_on_its_own_device(sweep, tmp_path):
    probes = sorted(_launch(sweep, tmp_path, 2), key=lambda p: p["rank"])
    assert [p["devices"] for p in probes] == [["cuda:0"], ["cuda:1"]]  # NCCL: each rank on its own GPU
    assert probes[0]["trace"] == probes[1]["trace"]
