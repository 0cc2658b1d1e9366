"""Adapter soup benchmark (#26): a K=8 soup of LoRA adapters of a BERT-base-shaped base, two ways.

- `hf_soups`: `soup_from_hub(adapters)`, each adapter read as its merged weights, W + s·B·A, a chunk of rows at a time.
- `peft_then_soup`, what users do today: for each adapter, load the base, `PeftModel.from_pretrained(...)`,
  `merge_and_unload()`, `save_pretrained(...)`; then hf_soups' uniform soup of the K saved models.

Each contender runs as its own process, alternating, for `--rounds` rounds, with a warm page cache; per process the
wall time, the seconds after imports ("work") and private memory growth (peak RssAnon, sampled by the parent, minus
RssAnon when the work started), as `benchmarks/merge.py` measures them. Medians go to `benchmarks/results/adapters.json`
with the machine's load average, since a shared machine slows both contenders unevenly.

Usage:
    python benchmarks/adapters.py [--k 8] [--rank 16] [--rounds 3]
    python benchmarks/adapters.py --contender NAME OUT ADAPTER...   # one contender (run by the parent)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from _contenders import report, rss_anon  # noqa: E402
from merge import ROOT, contender_env, run_process, warm  # noqa: E402


def make_inputs(workdir: str, k: int, rank: int) -> tuple[str, list[str]]:
    """A BERT-base-shaped classifier (random weights) and K LoRA adapters of it with random, non-zero lora_B."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import BertConfig, BertForSequenceClassification

    base = os.path.join(workdir, "base")
    adapters = [os.path.join(workdir, f"adapter-{i}") for i in range(k)]
    if os.path.isfile(os.path.join(base, "model.safetensors")) and all(os.path.isdir(a) for a in adapters):
        return base, adapters
    torch.manual_seed(0)
    config = BertConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                        num_labels=3)
    BertForSequenceClassification(config).save_pretrained(base)
    from hf_soups.testing.factories import write_tiny_tokenizer

    write_tiny_tokenizer(base)
    for i, path in enumerate(adapters):
        torch.manual_seed(100 + i)
        model = get_peft_model(BertForSequenceClassification.from_pretrained(base),
                               LoraConfig(task_type="SEQ_CLS", r=rank, lora_alpha=2 * rank,
                                          target_modules=["query", "key", "value", "dense"]))
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.02)
        model.save_pretrained(path)
    return base, adapters


def contender_hf_soups(out: str, adapters: list[str]) -> None:
    import transformers

    from hf_soups import MergeOptions, soup_from_hub

    getattr(transformers, "BertForSequenceClassification")
    anon = rss_anon()
    start = time.perf_counter()
    soup_from_hub(adapters, output_dir=out, merge_options=MergeOptions(progress=False))
    report(start, anon)


def contender_peft_then_soup(out: str, adapters: list[str]) -> None:
    from peft import PeftModel
    from transformers import BertForSequenceClassification

    from hf_soups import MergeOptions, soup_from_hub

    base = json.load(open(os.path.join(adapters[0], "adapter_config.json")))["base_model_name_or_path"]
    anon = rss_anon()
    start = time.perf_counter()
    scratch = tempfile.mkdtemp(prefix="bench-merged-", dir=os.path.dirname(out))
    try:
        merged = []
        for i, adapter in enumerate(adapters):
            model = PeftModel.from_pretrained(BertForSequenceClassification.from_pretrained(base), adapter)
            path = os.path.join(scratch, f"merged-{i}")
            model.merge_and_unload().save_pretrained(path)
            merged.append(path)
            del model
        soup_from_hub(merged, output_dir=out, merge_options=MergeOptions(progress=False))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report(start, anon)


CONTENDERS = {"hf_soups": contender_hf_soups, "peft_then_soup": contender_peft_then_soup}


def max_difference(a: str, b: str) -> float:
    from safetensors.torch import load_file

    x, y = load_file(os.path.join(a, "model.safetensors")), load_file(os.path.join(b, "model.safetensors"))
    return max(float((x[n].float() - y[n].float()).abs().max()) for n in x if x[n].is_floating_point())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contender", nargs="+", metavar=("NAME", "OUT"))
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "hf-soups-bench-adapters"))
    args = parser.parse_args()
    if args.contender:
        name, out, *adapters = args.contender
        CONTENDERS[name](out, adapters)
        return
    os.makedirs(args.workdir, exist_ok=True)
    base, adapters = make_inputs(args.workdir, args.k, args.rank)
    warm([base, *adapters])
    env = contender_env("5GB", os.path.join(args.workdir, "cache"))
    runs: dict[str, list[dict[str, float]]] = {n: [] for n in CONTENDERS}
    outs = {n: os.path.join(args.workdir, f"out-{n}") for n in CONTENDERS}
    load = [os.getloadavg()]
    for r in range(args.rounds):
        for name in (CONTENDERS if r % 2 == 0 else reversed(list(CONTENDERS))):
            shutil.rmtree(outs[name], ignore_errors=True)
            runs[name].append(run_process([sys.executable, __file__, "--contender", name, outs[name], *adapters], env))
            print(name, {k: round(v, 2) for k, v in runs[name][-1].items()}, flush=True)
        load.append(os.getloadavg())
    summary = {n: {"wall_s": statistics.median(x["wall"] for x in rs), "work_s": statistics.median(x["work"] for x in rs),
                   "anon_growth_mib": statistics.median(x["anon_growth"] for x in rs) / 2**20,
                   "peak_anon_mib": max(x["peak_anon"] for x in rs) / 2**20} for n, rs in runs.items()}
    from safetensors import safe_open

    with safe_open(os.path.join(base, "model.safetensors"), "pt") as f:
        largest = max(f.get_slice(k).get_shape()[0] * (f.get_slice(k).get_shape() + [1])[1] for k in f.keys()) * 4
    result = {
        "args": {"k": args.k, "rank": args.rank, "rounds": args.rounds, "base": "BERT-base shape (768 x 12, fp32, "
                 "random)", "targets": ["query", "key", "value", "dense"], "modules_to_save": ["classifier"]},
        "machine": {"cpus": os.cpu_count(), "loadavg_per_round": load,
                    "note": "shared machine, run under load by other processes: 3 rounds, medians; both contenders "
                            "slowed, unevenly"},
        "contenders": summary,
        "speedup_wall": summary["peft_then_soup"]["wall_s"] / summary["hf_soups"]["wall_s"],
        "speedup_work": summary["peft_then_soup"]["work_s"] / summary["hf_soups"]["work_s"],
        "largest_base_tensor_mib": largest / 2**20,
        "memory_goal_mib": 64 + largest / 2**20,
        "max_abs_difference": max_difference(outs["hf_soups"], outs["peft_then_soup"]),
        "raw": runs,
    }
    os.makedirs(os.path.join(ROOT, "benchmarks", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "benchmarks", "results", "adapters.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps({k: v for k, v in result.items() if k != "raw"}, indent=2))


if __name__ == "__main__":
    main()
