"""Merge benchmark: hf_soups against the IO floor, a naive merge and mergekit, side by side in one run.

Every contender runs as its own process, alternating, for several rounds, on the same synthetic checkpoints (real
transformers models, randomly initialised, then perturbed per ingredient). Wall time and peak RSS come from the
OS (`wait4`); each contender also reports the seconds of the work itself, after imports. Ratios are computed on
those; the JSON lands in benchmarks/results/.

Usage:
    python benchmarks/merge.py [--k 4] [--size large] [--dtype float32] [--shard-size 500MB] [--rounds 3]
    make bench-setup   # once: mergekit 0.1.5 in its own venv (.venv-mergekit), since its pins differ
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SIZES = {  # hidden, layers, heads, intermediate
    "large": (1024, 24, 16, 4096),
    "base": (768, 12, 12, 3072),
    "small": (384, 6, 12, 1536),
}
MERGEKIT_PY = os.path.join(ROOT, ".venv-mergekit", "bin", "python")


def make_checkpoints(workdir: str, size: str, dtype: str, shard: str, count: int) -> list[str]:
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    hidden, layers, heads, inter = SIZES[size]
    paths = [os.path.join(workdir, f"ckpt-{size}-{dtype}-{shard}-{i}") for i in range(count)]
    missing = [p for p in paths if not os.path.exists(os.path.join(p, "config.json"))]
    if not missing:
        return paths
    config = BertConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=inter, num_labels=3)
    torch.manual_seed(0)
    model = BertForSequenceClassification(config).to(getattr(torch, dtype))
    base = {k: v.clone() for k, v in model.state_dict().items()}
    for i, path in enumerate(paths):
        if path not in missing:
            continue
        gen = torch.Generator().manual_seed(1000 + i)
        with torch.no_grad():
            for k, p in model.state_dict().items():
                if p.is_floating_point():
                    p.copy_(base[k] + 0.01 * torch.randn(p.shape, generator=gen).to(p.dtype) * base[k].float().std())
        model.save_pretrained(path + ".tmp", max_shard_size=shard)
        os.replace(path + ".tmp", path)
        print(f"  generated {path}", flush=True)
    return paths


def run_contender(python: str, name: str, out: str, inputs: list[str], env: dict[str, str]) -> dict[str, float]:
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    proc = subprocess.Popen([python, os.path.join(HERE, "_contenders.py"), name, out, *inputs],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    stdout, stderr = proc.stdout.read().decode(), proc.stderr.read().decode()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed ({proc.returncode}):\n{stderr[-3000:]}")
    work = json.loads(stdout.strip().splitlines()[-1])["seconds"]
    return {"wall": wall, "work": work, "peak_rss": usage.ru_maxrss * 1024}


def compare_outputs(a: str, b: str) -> dict[str, float]:
    import torch
    from safetensors.torch import load_file

    def load(path):
        out = {}
        for f in sorted(os.listdir(path)):
            if f.endswith(".safetensors"):
                out.update(load_file(os.path.join(path, f)))
        return out

    x, y = load(a), load(b)
    common = sorted(set(x) & set(y))
    diff = max(((x[k].float() - y[k].float()).abs().max().item() for k in common), default=float("nan"))
    identical = all(torch.equal(x[k], y[k]) for k in common)
    return {"tensors_compared": len(common), "only_in_hf_soups": len(set(x) - set(y)),
            "only_in_other": len(set(y) - set(x)), "max_abs_diff": diff, "bitwise_identical": identical}


def _drop_caches_warm(paths: list[str]) -> None:
    for p in paths:  # warm the page cache: every contender reads from memory, as in the table
        for f in os.listdir(p):
            with open(os.path.join(p, f), "rb") as fh:
                while fh.read(64 << 20):
                    pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--size", choices=sorted(SIZES), default="large")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--shard-size", default="500MB")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--k-flat", type=int, nargs=2, default=(2, 8), metavar=("K_LOW", "K_HIGH"))
    parser.add_argument("--workdir", default=os.path.join(HERE, ".work"))
    parser.add_argument("--skip", nargs="*", default=[], help="contenders to skip (naive, mergekit)")
    parser.add_argument("--output", default=os.path.join(HERE, "results", "merge.json"))
    parser.add_argument("--generate-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    count = max(args.k, args.k_flat[1])
    if args.generate_only:
        make_checkpoints(args.workdir, args.size, args.dtype, args.shard_size, count)
        return
    print(f"Generating {count} BERT-{args.size} {args.dtype} checkpoints (cached)...", flush=True)
    # In a child process: a forked contender inherits the parent's peak RSS, so the parent stays small (no torch).
    subprocess.run([sys.executable, __file__, "--generate-only", "--size", args.size, "--dtype", args.dtype,
                    "--shard-size", args.shard_size, "--k", str(args.k), "--k-flat", *map(str, args.k_flat),
                    "--workdir", args.workdir], check=True)
    paths = [os.path.join(args.workdir, f"ckpt-{args.size}-{args.dtype}-{args.shard_size}-{i}") for i in range(count)]
    inputs = paths[: args.k]
    model_bytes = sum(os.path.getsize(os.path.join(inputs[0], f)) for f in os.listdir(inputs[0])
                      if f.endswith(".safetensors"))
    env = {**os.environ, "BENCH_SHARD_SIZE": args.shard_size, "BENCH_DTYPE": args.dtype,
           "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    py = sys.executable
    cuda = subprocess.run([py, "-c", "import torch; print(torch.cuda.is_available())"], capture_output=True,
                          text=True).stdout.strip() == "True"
    env["BENCH_DEVICE"] = "cpu"  # the CPU path; with CUDA present the GPU accumulation runs as its own contender
    contenders = [("floor", py), ("hf_soups", py)] + ([("hf_soups_gpu", py)] if cuda else [])
    if "naive" not in args.skip:
        contenders.append(("naive", py))
    mergekit_note = None
    if "mergekit" in args.skip:
        mergekit_note = "skipped (--skip mergekit)"
    elif os.path.exists(MERGEKIT_PY):
        contenders.append(("mergekit", MERGEKIT_PY))
    else:
        mergekit_note = "skipped: mergekit is not installed; run `make bench-setup` to install it in .venv-mergekit"
        print(mergekit_note)
    _drop_caches_warm(paths)
    idle = [run_contender(py, "idle", os.path.join(args.workdir, "out-idle"), [], env)["peak_rss"] for _ in range(2)]
    idle_rss = min(idle)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name, _ in contenders}
    for r in range(args.rounds):
        for name, python in contenders:
            res = run_contender(python, name, os.path.join(args.workdir, f"out-{name}"), inputs, env)
            runs[name].append(res)
            print(f"  round {r + 1} {name:9s} work {res['work']:7.2f}s  wall {res['wall']:7.2f}s  "
                  f"peak RSS {res['peak_rss'] / 1e9:5.2f} GB", flush=True)
    summary = {}
    for name, rs in runs.items():
        summary[name] = {"work_s": statistics.median(r["work"] for r in rs),
                         "wall_s": statistics.median(r["wall"] for r in rs),
                         "peak_rss_bytes": max(r["peak_rss"] for r in rs)}
        summary[name]["rss_growth_bytes"] = summary[name]["peak_rss_bytes"] - idle_rss
    flat = {}
    for k in args.k_flat:
        res = run_contender(py, "hf_soups", os.path.join(args.workdir, f"out-flat-{k}"), paths[:k], env)
        flat[k] = {"work_s": res["work"], "rss_growth_bytes": res["peak_rss"] - idle_rss}
    checks = {}
    out_hf = os.path.join(args.workdir, "out-hf_soups")
    for other in ("mergekit", "naive"):  # the last outputs of every contender are still on disk
        if other in runs:
            checks[other] = compare_outputs(out_hf, os.path.join(args.workdir, f"out-{other}"))
    floor_s, hf_s = summary["floor"]["work_s"], summary["hf_soups"]["work_s"]
    lo, hi = args.k_flat
    goals = {
        "hf_soups / floor (goal <= 1.25)": hf_s / floor_s,
        "mergekit / hf_soups (goal >= 4)": summary["mergekit"]["work_s"] / hf_s if "mergekit" in summary else None,
        "naive / hf_soups (goal >= 6)": summary["naive"]["work_s"] / hf_s if "naive" in summary else None,
        "hf_soups RSS growth / model bytes (goal <= 0.25)": summary["hf_soups"]["rss_growth_bytes"] / model_bytes,
        f"RSS growth K={hi} / K={lo} (goal <= 1.10)": flat[hi]["rss_growth_bytes"] / max(flat[lo]["rss_growth_bytes"], 1),
    }
    if "hf_soups_gpu" in summary:
        goals["GPU accumulation speed-up (hf_soups cpu / gpu)"] = hf_s / summary["hf_soups_gpu"]["work_s"]
    print(f"\nK={args.k} BERT-{args.size} {args.dtype} sequence classifiers, {model_bytes / 1e9:.2f} GB each, "
          f"sharded at {args.shard_size}; median of {args.rounds} rounds; idle interpreter RSS {idle_rss / 1e9:.2f} GB\n")
    print("| contender | work (s) | x floor | x hf_soups | process wall (s) | peak RSS (GB) | RSS growth (GB) |")
    print("|---|---|---|---|---|---|---|")
    for name, s in summary.items():
        print(f"| {name} | {s['work_s']:.2f} | {s['work_s'] / floor_s:.2f} | {s['work_s'] / hf_s:.2f} | "
              f"{s['wall_s']:.2f} | {s['peak_rss_bytes'] / 1e9:.2f} | {s['rss_growth_bytes'] / 1e9:.2f} |")
    if mergekit_note:
        print(f"| mergekit | {mergekit_note} | | | | | |")
    print()
    for goal, value in goals.items():
        print(f"  {goal}: {'n/a' if value is None else f'{value:.3f}'}")
    for other, c in checks.items():
        print(f"  hf_soups vs {other}: {c}")
    result = {
        "args": vars(args), "model_bytes": model_bytes, "idle_rss_bytes": idle_rss, "summary": summary,
        "runs": runs, "k_flat": flat, "ratios": goals, "output_checks": checks, "mergekit": mergekit_note or "ran",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "cuda": _cuda(),
    }
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(result, f, indent=2, default=str)
    print(f"\nWrote {args.output}")


def _cuda() -> str:
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    except Exception:
        return "none"


if __name__ == "__main__":
    main()
