"""Evaluation memory on images: private memory growth (RssAnon) while scoring a model on 20,000 images at 224 px.

Real Fashion-MNIST images (Debian's `dataset-fashion-mnist`) stored with `save_to_disk` (memory-mapped, as a held-out
set on disk is), upscaled to 224x224 by the model's image processor; a tiny BatchNorm ConvNet so that the run takes
minutes on 2 cores. Each measurement runs in a fresh process; RssAnon is sampled every 20 ms from the moment before
the `Evaluator` is built to the end of `score()`, and the growth over that starting point is reported.

For contrast, the same code with an unlimited preprocessing cache (`HF_SOUPS_EVAL_CACHE_MB=1e9`: every preprocessed
fp32 image kept, as the evaluator did before per-batch preprocessing) on 2,000 images.

Usage: python benchmarks/vision_eval_memory.py [--n 20000] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _contenders import rss_anon  # noqa: E402 (the benchmarks folder is on the path from here)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
LIMIT_MB = 300


def rss_anon_mb() -> float:
    anon = rss_anon()
    if not anon:
        raise RuntimeError("no RssAnon in /proc/self/status")
    return anon / 2**20


def prepare(work: str, n: int) -> tuple[str, str]:
    """The images on disk (save_to_disk) and a tiny BatchNorm ConvNet with a 224-px image processor."""
    import torch
    from _fashion import NAMES, arrays, to_dataset
    from transformers import ResNetConfig, ResNetForImageClassification, ViTImageProcessor

    train_x, train_y, _, _ = arrays()
    data = os.path.join(work, "images")
    to_dataset(train_x[:n], train_y[:n]).save_to_disk(data)
    model_dir = os.path.join(work, "model")
    config = ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
                          num_labels=10, id2label=dict(enumerate(NAMES)), label2id={v: k for k, v in enumerate(NAMES)})
    torch.manual_seed(0)
    ResNetForImageClassification(config).save_pretrained(model_dir)
    ViTImageProcessor(size={"height": 224, "width": 224}, image_mean=[0.5] * 3,
                      image_std=[0.5] * 3).save_pretrained(model_dir)
    return data, model_dir


def measure(data: str, model_dir: str, n: int) -> dict:
    """One measurement (run in a child process)."""
    import datasets
    import torch

    from hf_soups.checkpoint.meta import read_config
    from hf_soups.evaluation import Evaluator
    from hf_soups.modeling import load_model

    torch.set_num_threads(max(1, (os.cpu_count() or 2)))
    ds = datasets.load_from_disk(data).select(range(n))
    config = read_config(os.path.join(model_dir, "config.json"), model_dir)
    model = load_model(model_dir, config, dtype=torch.float32).eval()
    start = rss_anon_mb()
    peak = [start]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_anon_mb())
            time.sleep(0.02)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    evaluator = Evaluator(ds, model_dir, config, batch_size=64)
    score, logits = evaluator.score(model)
    seconds = time.perf_counter() - t0
    done.set()
    thread.join()
    peak[0] = max(peak[0], rss_anon_mb())
    return {"images": n, "image_size": 224, "rss_anon_start_mb": round(start, 1), "rss_anon_peak_mb": round(peak[0], 1),
            "growth_mb": round(peak[0] - start, 1), "seconds": round(seconds, 1), "accuracy": score,
            "cache_mb": os.environ.get("HF_SOUPS_EVAL_CACHE_MB", "64 (default)")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--contrast-n", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child", nargs=3, metavar=("DATA", "MODEL", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], args.child[1], int(args.child[2]))))
        return
    import statistics

    work = tempfile.mkdtemp(prefix="vision-eval-memory-")
    data, model_dir = prepare(work, max(args.n, args.contrast_n))
    runs: dict[str, list[dict]] = {"per_batch": [], "cache_everything": []}
    for _ in range(args.repeats):  # alternating, each in a fresh process
        for name, n, env in (("per_batch", args.n, {}), ("cache_everything", args.contrast_n,
                                                        {"HF_SOUPS_EVAL_CACHE_MB": "1e9"})):
            out = subprocess.run([sys.executable, __file__, "--child", data, model_dir, str(n)], capture_output=True,
                                 text=True, env={**os.environ, **env}, check=True)
            runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(name, runs[name][-1], flush=True)
    summary = {name: {"images": r[0]["images"], "median_growth_mb": statistics.median(x["growth_mb"] for x in r),
                      "max_growth_mb": max(x["growth_mb"] for x in r),
                      "median_seconds": statistics.median(x["seconds"] for x in r)} for name, r in runs.items()}
    result = {
        "task": f"score a tiny BatchNorm ConvNet on {args.n} real Fashion-MNIST images upscaled to 224x224 by its "
                "image processor (dataset on disk via save_to_disk); private memory = RssAnon sampled every 20 ms",
        "limit_mb": LIMIT_MB,
        "within_limit": summary["per_batch"]["max_growth_mb"] < LIMIT_MB,
        "summary": summary,
        "runs": runs,
        "cpu_count": os.cpu_count(),
    }
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "vision_eval_memory.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
