"""Scale: offloaded evaluation through accelerate's big-model path, `accelerate launch` distributed greedy soups."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from datasets import Dataset

from hf_soups import soup_from_hub
from hf_soups.evaluation import evaluate_checkpoint
from hf_soups.testing import make_tiny_sweep, sentiment_examples, write_csv
from hf_soups import EvalSpec, MergeOptions


@pytest.fixture(scope="module")
def ingredients(tmp_path_factory):
    root = tmp_path_factory.mktemp("scale")
    refs = make_tiny_sweep(root)["refs"]
    data = sentiment_examples(160, seed=11)
    return {"refs": refs, "val": Dataset.from_dict(data), "csv": write_csv(root / "val.csv", data)}


def test_offloaded_evaluation_matches_in_memory(ingredients, tmp_path):
    val = ingredients["val"]
    path = ingredients["refs"][0]
    in_memory = evaluate_checkpoint(path, val)
    offloaded = evaluate_checkpoint(path, val, max_memory={"cpu": "40KB"}, offload_folder=str(tmp_path / "off"))
    assert offloaded == in_memory
    mem = soup_from_hub(ingredients["refs"], method="greedy", eval_dataset=val, output_dir=tmp_path / "mem",
                        merge_options=MergeOptions(progress=False))
    disk = soup_from_hub(ingredients["refs"], method="greedy", eval_dataset=val, output_dir=tmp_path / "disk",
                         merge_options=MergeOptions(progress=False), eval_spec=EvalSpec(max_memory={"cpu": "40KB"},
                                                                                        offload_folder=str(tmp_path / "off2")))
    assert disk.scores == mem.scores
    assert [(s["ingredient"], s["accepted"]) for s in disk.trace] == [(s["ingredient"], s["accepted"])
                                                                       for s in mem.trace]
    for a, b in zip(disk.trace, mem.trace):
        assert a["score"] == pytest.approx(b["score"], abs=1e-9)
    assert disk.weights == mem.weights


def test_accelerate_launch_two_processes_matches_single_process(ingredients, tmp_path):
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable))
    assert accelerate, "accelerate's launcher is not installed"
    args = ["soup", *ingredients["refs"], "--method", "greedy", "--eval-dataset", str(ingredients["csv"])]
    single = subprocess.run([sys.executable, "-m", "hf_soups", *args, "--output", str(tmp_path / "single")],
                            capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    multi = subprocess.run([accelerate, "launch", "--num_processes", "2", "--cpu", "--num_machines", "1",
                            "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "hf_soups", *args,
                            "--output", str(tmp_path / "multi")], capture_output=True, text=True, timeout=600,
                           env=env)
    assert multi.returncode == 0, multi.stderr[-3000:]

    def trace(path):
        text = (path / "README.md").read_text()
        return text[text.index("## Greedy trace") : text.index("## Recipe")]

    assert trace(tmp_path / "multi") == trace(tmp_path / "single")
    assert "accepted" in trace(tmp_path / "single") and "rejected" in trace(tmp_path / "single")
    assert multi.stdout.count("Soup written to") == 1  # only the main process reports and writes
