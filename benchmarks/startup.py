"""Whole-process start-up of the CLI, as a user runs it: `hf-soups soup` with an empty ("cold", a first soup of an
architecture), a warm and a disabled (`HF_SOUPS_ARCH_CACHE=0`) architecture cache,
`mergekit-yaml` (when `.venv-mergekit` exists) and `python -c "import torch"`, alternating, medians.

A small soup (K=2 BERT-small-shaped checkpoints) keeps the merge itself short, so the wall is mostly start-up.
"start-up" = process wall - the soup's in-process work (timed by `_contenders.py`'s hf_soups runner) - import torch.

    python benchmarks/startup.py [--rounds 5] [--size small] [--output benchmarks/results/startup.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys

from merge import (BIN, HERE, MERGEKIT_BIN, ckpt_path, cli_hf_soups, cli_hf_soups_first, cli_mergekit, contender,
                   contender_env, run_process, warm)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="small", choices=["small", "base", "large"])
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workdir", default=os.path.join(HERE, ".work"))
    parser.add_argument("--output", default=os.path.join(HERE, "results", "startup.json"))
    parser.add_argument("--skip", nargs="*", default=[], choices=["cache_off", "mergekit"],
                        help="rows to leave out (a short device lease)")
    args = parser.parse_args()
    shard = "500MB"
    subprocess.run([sys.executable, os.path.join(HERE, "merge.py"), "--workdir", args.workdir, "--generate-only",
                    args.size, "float32", shard, str(args.k)], check=True, capture_output=True)
    inputs = [ckpt_path(args.workdir, args.size, "float32", shard, i) for i in range(args.k)]
    warm(inputs)
    env = contender_env(shard, os.path.join(args.workdir, "startup-cache"))
    out = os.path.join(args.workdir, "startup-out")
    runners = {
        "work": lambda: contender(sys.executable, "hf_soups", out, inputs, env),
        "cli_cold": lambda: cli_hf_soups_first(out, inputs, shard, env,
                                               os.path.join(args.workdir, "startup-cache-cold")),
        "cli_warm": lambda: cli_hf_soups(out, inputs, shard, env),
        "import_torch": lambda: run_process([sys.executable, "-c", "import torch"], env),
        "help": lambda: run_process([os.path.join(BIN, "hf-soups"), "--help"], env),
    }
    if "cache_off" not in args.skip:
        runners["cli_cache_off"] = lambda: cli_hf_soups(out, inputs, shard, {**env, "HF_SOUPS_ARCH_CACHE": "0"})
    if "mergekit" not in args.skip and os.path.exists(os.path.join(MERGEKIT_BIN, "python")):
        runners["cli_mergekit"] = lambda: cli_mergekit(out + "-mk", inputs, shard, "float32", args.workdir, env)
    cli_hf_soups(out, inputs, shard, env)  # fills the architecture cache: "warm" is every later soup
    runs: dict[str, list[dict]] = {name: [] for name in runners}
    for r in range(args.rounds):
        for name, run in runners.items():
            runs[name].append(run())
            print(f"  round {r + 1} {name:13s} wall {runs[name][-1]['wall']:6.2f}s", flush=True)
    median = {name: statistics.median(x["wall"] for x in rs) for name, rs in runs.items()}
    work = statistics.median(x["work"] for x in runs["work"])
    result = {
        "args": vars(args), "k": args.k, "size": args.size, "work_s": work, "median_wall_s": median,
        "startup_cold_s": median["cli_cold"] - work - median["import_torch"],
        "startup_warm_s": median["cli_warm"] - work - median["import_torch"],
        "startup_cache_off_s": (median["cli_cache_off"] - work - median["import_torch"]
                                if "cli_cache_off" in median else None),
        "mergekit_yaml_wall_over_hf_soups_wall_warm": (median["cli_mergekit"] / median["cli_warm"]
                                                       if "cli_mergekit" in median else None),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "load_average_at_end": os.getloadavg()},
        "runs": runs,
    }
    print(f"K={args.k} BERT-{args.size}: work {work:.2f}s; medians of {args.rounds} alternating rounds:")
    for name, wall in median.items():
        print(f"  {name:13s} {wall:6.2f}s")
    off = result["startup_cache_off_s"]
    print(f"  start-up (wall - work - import torch): cold cache {result['startup_cold_s']:.2f}s, "
          f"warm {result['startup_warm_s']:.2f}s" + (f", cache off {off:.2f}s" if off is not None else ""))
    if result["mergekit_yaml_wall_over_hf_soups_wall_warm"]:
        print(f"  mergekit-yaml wall / hf-soups soup wall (warm): {result['mergekit_yaml_wall_over_hf_soups_wall_warm']:.2f}")
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(result, f, indent=2)
    print(f"Wrote {args.output}")


if __name__ == "__main__":
    main()
