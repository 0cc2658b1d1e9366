"""Greedy-soup overhead: how much of the wall time is not model forward passes (goal: <= 10%).

Six MiniLM-L6 sequence classifiers (the real pretrained all-MiniLM-L6-v2 with one seeded head, perturbed per
ingredient) and 500 held-out movie-review snippets. The greedy recipe costs K individual evaluations plus K-1
candidate evaluations; everything else (reading weights, the running fp32 sum, swapping weights into the model) is
overhead.

Usage: python benchmarks/greedy.py [--k 6] [--n 500]
"""

from __future__ import annotations

import argparse
import json
import os
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
    args = parser.parse_args()
    from _hutto import splits
    from science_text import shared_base

    import hf_soups.evaluation.held_out as held_out
    from hf_soups import soup_from_hub
    from hf_soups.testing import perturb_checkpoint

    os.makedirs(args.workdir, exist_ok=True)
    base = shared_base(args.workdir)
    refs = []
    for i in range(args.k):
        path = os.path.join(args.workdir, f"ing{i}")
        if not os.path.exists(os.path.join(path, "config.json")):
            perturb_checkpoint(base, path, seed=i, scale=0.02)
        refs.append(path)
    val = splits(n_train=10, n_val=args.n, n_test=10, n_ood=10)["val"]
    phase = {}
    original = held_out.choose_weights

    def timed(*a, **k):
        start = time.perf_counter()
        chosen = original(*a, **k)
        phase["selection_s"] = time.perf_counter() - start
        phase["forward_s"] = chosen.evaluator.forward_seconds
        return chosen

    held_out.choose_weights = timed
    out = os.path.join(args.workdir, "soup")
    start = time.perf_counter()
    soup = soup_from_hub(refs, method="greedy", eval_dataset=val, output_dir=out, overwrite=True, progress=False)
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
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(result, f, indent=2)
    print(f"Wrote {args.output}")


if __name__ == "__main__":
    main()
