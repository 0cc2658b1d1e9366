"""Greedy-soup overhead: how much of the wall time is not model forward passes (goal: <= 10%).

Six MiniLM-L6 sequence classifiers (the real pretrained all-MiniLM-L6-v2 with one seeded head, perturbed per
ingredient) and 500 held-out movie-review snippets. The greedy recipe costs K individual evaluations plus K-1
candidate evaluations; everything else (reading weights, the running fp32 sum, swapping weights into the model) is
overhead.

Device section: the same greedy soup with every evaluation on the CPU, then on the GPU (`EvalSpec(device=...)`), in
separate processes, alternating, `--repeats` times each: median selection wall time, evaluations per second, and
whether the accept/reject decisions are identical. The GPU half runs only where CUDA exists (a skip line otherwise).

Usage: python benchmarks/greedy.py [--k 6] [--n 500] [--repeats 3] [--no-device-section]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=6)
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--workdir", default=os.path.join(HERE, ".work", "greedy"))
    parser.add_argument("--output", default=os.path.join(HERE, "results", "greedy.json"))
    parser.add_argument("--repeats", type=int, default=3, help="runs per device in the device section")
    parser.add_argument("--no-device-section", action="store_true", help="skip the CPU vs GPU section")
    parser.add_argument("--worker-device", default=None, help=argparse.SUPPRESS)  # one timed run, JSON on stdout
    args = parser.parse_args()
    if args.worker_device:
        return device_worker(args)
    from hf_soups import MergeOptions, soup_from_hub

    refs, val = ingredients(args)
    phase = time_selection()
    out = os.path.join(args.workdir, "soup")
    start = time.perf_counter()
    soup = soup_from_hub(refs, method="greedy", eval_dataset=val, output_dir=out, overwrite=True,
                         merge_options=MergeOptions(progress=False))
    total = time.perf_counter() - start
    evaluations = len(refs) + len(refs) - 1
    result = {
        "k": args.k, "n_held_out": args.n, "evaluations": evaluations,
        "selection_seconds": phase["selection_s"], "forward_seconds": phase["forward_s"], "total_seconds": total,
        "overhead_fraction_of_selection": 1 - phase["forward_s"] / phase["selection_s"],
        "overhead_fraction_of_total": 1 - phase["forward_s"] / total,
        "kept": sum(1 for s in soup.trace if s["accepted"]),
    }
    print(f"greedy soup of {args.k} MiniLM-L6 classifiers on {args.n} held-out sentences ({evaluations} evaluations)")
    print(f"  forward passes {phase['forward_s']:.2f}s of selection {phase['selection_s']:.2f}s "
          f"-> overhead {100 * result['overhead_fraction_of_selection']:.1f}% (goal <= 10%)")
    print(f"  whole soup_from_hub call {total:.2f}s (plus compatibility check, streaming merge to disk, card) "
          f"-> non-forward {100 * result['overhead_fraction_of_total']:.1f}%")
    if not args.no_device_section:
        result["device_section"] = device_section(args)
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(result, f, indent=2)
    print(f"Wrote {args.output}")


def ingredients(args: argparse.Namespace) -> tuple[list[str], object]:
    """The K perturbed MiniLM classifiers (cached under --workdir) and the held-out set."""
    from _hutto import splits
    from science_text import shared_base

    from hf_soups.testing import perturb_checkpoint

    os.makedirs(args.workdir, exist_ok=True)
    base = shared_base(args.workdir)
    refs = []
    for i in range(args.k):
        path = os.path.join(args.workdir, f"ing{i}")
        if not os.path.exists(os.path.join(path, "config.json")):
            perturb_checkpoint(base, path, seed=i, scale=0.02)
        refs.append(path)
    return refs, splits(n_train=10, n_val=args.n, n_test=10, n_ood=10)["val"]


def time_selection() -> dict:
    """Time the held-out selection of the next soups (a wrapper around `choose_weights`); fills the returned dict."""
    import torch

    import hf_soups.evaluation.held_out as held_out

    record: dict = {}
    original = held_out.choose_weights

    def timed(*a, **k):
        start = time.perf_counter()
        chosen = original(*a, **k)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        record.update(selection_s=time.perf_counter() - start, forward_s=chosen.evaluator.forward_seconds,
                      evaluations=chosen.evaluator.evaluations, device=str(chosen.evaluator.device),
                      batch_size=chosen.evaluator.batch_size)
        return chosen

    held_out.choose_weights = timed
    return record


def device_worker(args: argparse.Namespace) -> None:
    """One greedy soup with every evaluation on --worker-device; prints one JSON line."""
    from hf_soups import EvalSpec, MergeOptions, soup_from_hub

    refs, val = ingredients(args)
    timing = time_selection()
    soup = soup_from_hub(refs, method="greedy", eval_dataset=val, merge_options=MergeOptions(progress=False),
                         output_dir=os.path.join(args.workdir, f"soup-{args.worker_device.replace(':', '')}"),
                         overwrite=True, eval_spec=EvalSpec(device=args.worker_device))
    timing["decisions"] = [[s["ingredient"].rsplit("/", 1)[-1], s["accepted"]] for s in soup.trace]
    timing["scores"] = [s["score"] for s in soup.trace]
    print("RESULT " + json.dumps(timing))


def device_section(args: argparse.Namespace) -> dict:
    """CPU vs GPU greedy selection, separate processes, alternating; the GPU half only where CUDA exists."""
    import torch

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    runs: dict[str, list[dict]] = {d: [] for d in devices}
    for _ in range(args.repeats):
        for device in devices:
            cmd = [sys.executable, os.path.abspath(__file__), "--k", str(args.k), "--n", str(args.n),
                   "--workdir", args.workdir, "--worker-device", device]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            runs[device].append(json.loads(next(x for x in out.splitlines() if x.startswith("RESULT "))[7:]))
    section: dict = {"repeats": args.repeats}
    print(f"device section: greedy selection of {args.k} MiniLM-L6 classifiers on {args.n} held-out sentences, "
          f"{args.repeats} alternating runs per device (separate processes)")
    for device, results in runs.items():
        wall = statistics.median(r["selection_s"] for r in results)
        evaluations = results[0]["evaluations"]
        section[device] = {"median_selection_seconds": wall, "evaluations": evaluations,
                           "evaluations_per_second": evaluations / wall, "batch_size": results[0]["batch_size"],
                           "eval_device": results[0]["device"], "runs_seconds": [r["selection_s"] for r in results]}
        print(f"  {device:>4}: {wall:7.2f}s median ({evaluations} evaluations, {evaluations / wall:6.2f}/s, "
              f"batch {results[0]['batch_size']}, on {results[0]['device']})")
    decisions = {json.dumps(r["decisions"]) for results in runs.values() for r in results}
    section["identical_decisions"] = len(decisions) == 1
    section["decisions"] = runs["cpu"][0]["decisions"]
    if "cuda" in runs:
        section["machine"] = torch.cuda.get_device_name(0)
        section["speedup"] = section["cpu"]["median_selection_seconds"] / section["cuda"]["median_selection_seconds"]
        section["max_score_difference"] = max(abs(a - b) for a, b in zip(runs["cpu"][0]["scores"],
                                                                          runs["cuda"][0]["scores"]))
        print(f"  GPU speed-up {section['speedup']:.1f}x on {section['machine']}; identical decisions: "
              f"{section['identical_decisions']}; largest score difference {section['max_score_difference']:.2e}")
    else:
        section["cuda"] = None
        section["skipped"] = "GPU half skipped: no CUDA device (torch.cuda.is_available() is False)"
        print(f"  {section['skipped']}; run this benchmark on a CUDA machine for the GPU numbers. "
              f"Identical decisions across CPU runs: {section['identical_decisions']}")
    return section


if __name__ == "__main__":
    main()
