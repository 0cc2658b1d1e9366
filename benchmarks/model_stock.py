"""Model Stock side by side with mergekit's `model_stock`, and its wall time against the uniform soup.

On the same synthetic checkpoints (a random BERT base, and K fine-tunes θ_i = base + 0.01·std·(√0.4·shared +
√0.6·noise_i) per tensor, so that the task-vector cosines are about 0.4 as in real fine-tunes of one base), in fp32
and in bf16:

- hf_soups' Model Stock (`soup_from_hub(method="model_stock", base=...)`: the statistics pass, then the engine),
- mergekit 0.1.5's `model_stock` (its default, not filter-wise), run in its own venv (`make bench-setup`); in bf16
  twice: computing in bf16 (`dtype: bfloat16`, mergekit's usual config) and computing in fp32, writing bf16
  (`dtype: float32, out_dtype: bfloat16`, what hf_soups does),
- hf_soups' uniform soup of the same fine-tunes (`soup_from_hub`), the cost reference.

Each runs as its own process (benchmarks/_contenders.py), alternating, for several rounds, on a warm page cache.
Reported: the median wall and work time, the private memory growth, and per mergekit variant the max abs difference
of every tensor against hf_soups' output and whether they are bitwise identical. Results land in
benchmarks/results/model_stock.json.

Usage:
    python benchmarks/model_stock.py [--k 3] [--size small] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time

from merge import HERE, MERGEKIT_BIN, ROOT, SIZES, compare_outputs, contender, contender_env, warm

BIN = os.path.dirname(sys.executable)


def make_family(workdir: str, size: str, dtype: str, k: int) -> tuple[str, list[str]]:
    """The base and k fine-tunes with a shared direction (cosines ≈ 0.4), generated once per (size, dtype, k)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    hidden, layers, heads, inter = SIZES[size]
    base_path = os.path.join(workdir, f"stock-{size}-{dtype}-base")
    paths = [os.path.join(workdir, f"stock-{size}-{dtype}-{i}") for i in range(k)]
    if all(os.path.exists(os.path.join(p, "config.json")) for p in [base_path, *paths]):
        return base_path, paths
    config = BertConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=inter, num_labels=3)
    torch.manual_seed(0)
    model = BertForSequenceClassification(config)
    base = {n: v.clone() for n, v in model.state_dict().items()}
    model.to(getattr(torch, dtype)).save_pretrained(base_path)
    gen = torch.Generator().manual_seed(7)
    shared = {n: torch.randn(v.shape, generator=gen) for n, v in base.items() if v.is_floating_point()}
    for i, path in enumerate(paths):
        model = BertForSequenceClassification(config)
        state = {}
        for n, v in base.items():
            if not v.is_floating_point():
                state[n] = v
                continue
            noise = torch.randn(v.shape, generator=gen)
            scale = 0.01 * (float(v.std()) if v.numel() > 1 else 1.0) or 0.01
            state[n] = v + scale * (math.sqrt(0.4) * shared[n] + math.sqrt(0.6) * noise)
        model.load_state_dict(state)
        model.to(getattr(torch, dtype)).save_pretrained(path)
        print(f"  generated {path}", flush=True)
    return base_path, paths


def differences(a: str, b: str) -> dict[str, float]:
    """Elements that differ at all, and the largest difference relative to its tensor's largest magnitude (a
    scale-free rounding measure: bf16 keeps 8 significant bits, so one rounding step is up to 2^-8 = 0.0039 of it)."""
    import torch
    from safetensors.torch import load_file

    def load(path: str) -> dict:
        out: dict = {}
        for f in sorted(os.listdir(path)):
            if f.endswith(".safetensors"):
                out.update(load_file(os.path.join(path, f)))
        return out

    x, y = load(a), load(b)
    differing, total, worst = 0, 0, 0.0
    for name in sorted(set(x) & set(y)):
        u, v = x[name], y[name]
        if not u.is_floating_point():
            continue
        gap = (u.double() - v.double()).abs()
        differing += int((gap > 0).sum())
        total += gap.numel()
        scale = float(u.double().abs().max())
        if scale > 0:
            worst = max(worst, float(gap.max()) / scale)
    return {"elements_differing": differing, "elements": total, "max_diff_relative_to_tensor_max": worst}


def t_precision(base: str, paths: list[str]) -> dict[str, float | str]:
    """On the largest tensor: Model Stock's t from statistics accumulated in fp32 (as mergekit computes them, in the
    tensors' dtype) and in fp64 (as hf_soups does). The gap is what separates the two outputs beyond rounding."""
    import itertools

    import torch
    from safetensors.torch import load_file

    base_sd = load_file(os.path.join(base, "model.safetensors"))
    name = max((n for n, v in base_sd.items() if v.is_floating_point()), key=lambda n: base_sd[n].numel())
    b = base_sd[name].reshape(-1)
    fts = [load_file(os.path.join(p, "model.safetensors"))[name].reshape(-1) for p in paths]
    out: dict[str, float | str] = {"tensor": name, "elements": b.numel()}
    for label, dtype in (("fp32", torch.float32), ("fp64", torch.float64)):
        offsets = [(f.to(dtype) - b.to(dtype)) for f in fts]
        cos = [float((x * y).sum() / (x.norm() * y.norm())) for x, y in itertools.combinations(offsets, 2)]
        c = sum(cos) / len(cos)
        out[f"t_{label}_statistics"] = len(fts) * c / (1 + (len(fts) - 1) * c)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k", type=int, default=3, help="fine-tunes (default 3)")
    parser.add_argument("--size", choices=sorted(SIZES), default="small", help="BERT size (default small)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    parser.add_argument("--shard-size", default="500MB")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "model_stock.json"))
    args = parser.parse_args()
    workdir = os.path.join(HERE, ".work")
    os.makedirs(workdir, exist_ok=True)
    mergekit_py = os.path.join(MERGEKIT_BIN, "python")
    have_mergekit = os.path.exists(mergekit_py)
    notes = [
        "work_s is the time after imports; both hf_soups contenders run soup_from_hub (verdict, plan, engine); "
        "Model Stock adds the statistics pass and reads the base",
        "hf_soups accumulates the statistics in fp64; mergekit in the tensors' dtype: t_on_the_largest_tensor shows "
        "the t each gives, the gap that separates the outputs beyond the order of the additions",
    ]
    if not have_mergekit:
        notes.append("mergekit: skipped, not installed; run `make bench-setup` to install it in .venv-mergekit")
    results: dict[str, dict] = {}
    for dtype in ("float32", "bfloat16"):
        base, paths = make_family(workdir, args.size, dtype, args.k)
        env = {**contender_env(args.shard_size, os.path.join(workdir, "stock-cache")), "BENCH_BASE": base}
        out = os.path.join(workdir, f"stock-out-{dtype}")
        runners = {
            "hf_soups_model_stock": lambda: contender(sys.executable, "hf_soups_model_stock", f"{out}-hf", paths, env),
            "hf_soups_uniform": lambda: contender(sys.executable, "hf_soups", f"{out}-uniform", paths, env),
        }
        variants = {"mergekit_model_stock": {"BENCH_DTYPE": dtype}}
        if dtype == "bfloat16":
            variants["mergekit_model_stock_fp32_compute"] = {"BENCH_DTYPE": "float32", "BENCH_OUT_DTYPE": "bfloat16"}
        if have_mergekit:
            for name, extra in variants.items():
                runners[name] = (lambda name=name, extra=extra:
                                 contender(mergekit_py, "mergekit_model_stock", f"{out}-{name}", paths, {**env, **extra}))
        warm([base, *paths])
        rounds: dict[str, list[dict]] = {name: [] for name in runners}
        for r in range(args.rounds):
            for name, run in runners.items():
                rounds[name].append(run())
                print(f"  {dtype} round {r + 1}: {name} {rounds[name][-1]['wall']:.2f} s", flush=True)
        summary: dict[str, dict] = {}
        for name, rs in rounds.items():
            summary[name] = {"wall_s": statistics.median(x["wall"] for x in rs),
                             "work_s": statistics.median(x["work"] for x in rs),
                             "anon_growth_mib": max(x["anon_growth"] for x in rs) / 2**20}
        for name in variants:
            if name in summary:
                summary[name]["vs_hf_soups"] = {**compare_outputs(f"{out}-hf", f"{out}-{name}"),
                                                **differences(f"{out}-hf", f"{out}-{name}")}
        summary["t_on_the_largest_tensor"] = t_precision(base, paths)
        hf, uniform = summary["hf_soups_model_stock"], summary["hf_soups_uniform"]
        summary["ratios"] = {"model_stock work / uniform work": hf["work_s"] / uniform["work_s"],
                             "model_stock wall / uniform wall": hf["wall_s"] / uniform["wall_s"]}
        if "mergekit_model_stock" in summary:
            summary["ratios"]["mergekit model_stock work / hf_soups model_stock work"] = (
                summary["mergekit_model_stock"]["work_s"] / hf["work_s"])
        results[dtype] = summary
    report = {
        "what": "Model Stock: hf_soups against mergekit 0.1.5's model_stock (default, not filter-wise), and against "
                "hf_soups' uniform soup; medians over alternating rounds, each contender its own process",
        "k": args.k, "size": args.size, "rounds": args.rounds, "machine": {
            "cpus": os.cpu_count(), "python": platform.python_version(), "when": time.strftime("%Y-%m-%d")},
        "notes": notes, "results": results,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    main()
