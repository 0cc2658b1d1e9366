"""Learned-soup memory: private memory growth (RssAnon) of learned soups at K ingredients, and Fisher's wall time.

Contenders, each run in a fresh process per K (RssAnon sampled every 20 ms from before the model skeleton is built to
the end, the growth over that start reported, also as a multiple of one fp32 model):

- `learned_by_layer`: `evaluation/learned_stream.py`, one weight per ingredient per layer group, ingredients streamed
  from their memory-mapped safetensors files;
- `learned`: `method="learned"` as registered today: the same optimiser with one group (the per-model learned soup
  on the memory-light path; called `learned_streamed` in runs measured before it became the method's path);
- `learned_in_memory`: the earlier `method="learned"` path (`recipes/learned.learn_weights`: every ingredient's fp32
  state in memory, autograd through their sum), only where K models fit in `--in-memory-limit-gb`;
- `fisher`: the registered `method="fisher"` (`recipes/fisher.py`: the Fisher-weighted merge of
  `evaluation/fisher.py`, its merged tensors streamed into a private checkpoint) and the engine writing the soup
  from it, against `uniform`: the engine's uniform soup written to disk; both wall times reported.

`--only` re-measures some contenders and keeps the other runs already in `--out` (each run carries its load).

The model is BERT-base-shaped by default (hidden 768, 12 layers, vocab 30522: 110M parameters, 418 MiB fp32),
randomly initialised and perturbed per ingredient, saved as safetensors; the held-out set is synthetic sentences.

Usage: python benchmarks/learned_memory.py [--k 2 4 8 16] [--hidden 768 --layers 12] [--steps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
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
GOAL = 4.0  # growth <= 4x one model, flat in K
CONTENDERS = ("learned_by_layer", "learned", "learned_in_memory", "fisher", "uniform")


def prepare(work: str, k: int, hidden: int, layers: int) -> list[str]:
    """K BERT-shaped classifiers (seeded random init, then a seeded perturbation each) with a tiny tokenizer."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from hf_soups.testing import write_tiny_tokenizer

    config = BertConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=max(1, hidden // 64),
                        intermediate_size=4 * hidden, num_labels=2)
    paths = []
    for i in range(k):
        path = os.path.join(work, f"ft{i}")
        paths.append(path)
        if os.path.exists(os.path.join(path, "model.safetensors")):
            continue
        torch.manual_seed(0)
        model = BertForSequenceClassification(config)
        gen = torch.Generator().manual_seed(i + 1)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=gen) * 0.01 * (p.std() if p.numel() > 1 else 1.0))
        model.save_pretrained(path)
        write_tiny_tokenizer(path)
        del model
    return paths


def measure(contender: str, paths: list[str], steps: int, examples: int) -> dict:
    """One measurement (run in a child process)."""
    import torch

    from hf_soups.checkpoint.meta import read_config
    from hf_soups.checkpoint.reader import open_checkpoint
    from hf_soups.evaluation.candidates import ModelHolder
    from hf_soups.evaluation.evaluator import Evaluator
    from hf_soups.merge.plan import build_plan
    from hf_soups.testing import sentiment_examples

    torch.set_num_threads(max(1, os.cpu_count() or 2))
    config = read_config(os.path.join(paths[0], "config.json"), paths[0])
    readers = [open_checkpoint(p) for p in paths]
    plan = build_plan([r.tensors for r in readers], [1.0] * len(paths))
    model_bytes = 4 * sum(tp.numel for tp in plan.tensors if tp.average)
    data = sentiment_examples(examples, seed=0)
    evaluator = Evaluator(data, paths[0], config, batch_size=8, device="cpu")
    start = rss_anon() / 2**20
    peak = [start]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_anon() / 2**20)
            time.sleep(0.02)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    extra: dict = {}
    if contender == "uniform":
        from hf_soups.merge.engine import merge_to_directory

        with tempfile.TemporaryDirectory() as out:
            merge_to_directory(plan, readers, out, progress=False)
    else:
        holder = ModelHolder(paths[0], config, device="cpu")
        if contender == "fisher":  # the registered method, then the engine reading its private input
            from hf_soups.evaluation.held_out import HeldOutEvaluation
            from hf_soups.merge.engine import merge_to_directory
            from hf_soups.recipes import EvalSpec, MethodContext
            from hf_soups.recipes.fisher import fisher

            held = HeldOutEvaluation(names=paths, plan=plan, readers=readers, evaluators=[evaluator], spec=EvalSpec(),
                                     seed=0)
            held.holder = holder  # the skeleton in memory, as choose_weights sets it
            with tempfile.TemporaryDirectory() as work, tempfile.TemporaryDirectory() as out:
                ctx = MethodContext(names=tuple(paths), plan=plan, readers=readers, held_out=held, workdir=work)
                result = fisher(ctx)
                private = [open_checkpoint(d) for d in result.inputs]
                merge_to_directory(result.plan, [*readers, *private], out, progress=False)
            extra = {"examples": result.parameters["examples"]}
        elif contender == "learned_in_memory":
            from hf_soups.evaluation.held_out import _learned_states
            from hf_soups.recipes.learned import learn_weights

            states = _learned_states(plan, readers, holder)
            weights, _ = learn_weights(holder.model, states, evaluator.batches, evaluator.references,
                                       lambda ws: evaluator.score(holder.load_combination(states, ws))[0],
                                       steps=steps, loss=evaluator.loss)
            extra = {"weights": weights}
        else:
            from hf_soups.evaluation.learned_stream import StreamedSoup, learn_layer_weights

            groups = "layer" if contender == "learned_by_layer" else "model"  # learned: one group
            soup = StreamedSoup(plan, readers, holder, groups)
            result = learn_layer_weights(soup, evaluator.batches, evaluator.loss,
                                         lambda m: evaluator.score(m)[0], steps=steps)
            extra = {"groups": len(result.groups)}
    seconds = time.perf_counter() - t0
    done.set()
    thread.join()
    peak[0] = max(peak[0], rss_anon() / 2**20)
    growth = peak[0] - start
    return {"contender": contender, "k": len(paths), "model_mib": round(model_bytes / 2**20, 1),
            "rss_anon_start_mib": round(start, 1), "growth_mib": round(growth, 1),
            "growth_models": round(growth / (model_bytes / 2**20), 2), "seconds": round(seconds, 2), **extra}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, nargs="+", default=[2, 4, 8, 16])
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--examples", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--in-memory-limit-gb", type=float, default=4.0)
    parser.add_argument("--fisher-k", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--only", nargs="+", choices=CONTENDERS,
                        help="measure only these contenders (at --k / --fisher-k); keep the other runs in --out")
    parser.add_argument("--work", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), ".work",
                                                       "learned_memory"))
    parser.add_argument("--out", default=os.path.join(RESULTS, "learned_memory.json"))
    parser.add_argument("--child", nargs=4, metavar=("CONTENDER", "PATHS", "STEPS", "EXAMPLES"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        contender, paths, steps, examples = args.child
        print(json.dumps(measure(contender, paths.split(","), int(steps), int(examples))))
        return
    work = os.path.join(args.work, f"h{args.hidden}-l{args.layers}")
    os.makedirs(work, exist_ok=True)
    paths = prepare(work, max(args.k + args.fisher_k), args.hidden, args.layers)
    model_mib = os.path.getsize(os.path.join(paths[0], "model.safetensors")) / 2**20
    plan: list[tuple[str, int]] = []
    for k in sorted(args.k):
        plan += [("learned_by_layer", k), ("learned", k)]
        if k * model_mib / 1024 <= args.in_memory_limit_gb:
            plan.append(("learned_in_memory", k))
    fisher = [(c, k) for k in sorted(args.fisher_k) for c in ("fisher", "uniform")]
    plan = plan[:-2] + fisher + plan[-2:]  # Fisher before the largest K: a run cut short still has it
    runs: list[dict] = []
    if args.only:
        plan = [(c, k) for c, k in plan if c in args.only]
        if os.path.exists(args.out):
            with open(args.out) as f:
                runs = [r for r in json.load(f)["runs"] if (r["contender"], r["k"]) not in plan]
    for _ in range(args.repeats):
        for contender, k in plan:
            out = subprocess.run([sys.executable, __file__, "--child", contender, ",".join(paths[:k]),
                                  str(args.steps), str(args.examples)], capture_output=True, text=True, check=True)
            runs.append({**json.loads(out.stdout.strip().splitlines()[-1]), "load_average": os.getloadavg()[0],
                         "cpu_count": os.cpu_count()})
            print({key: v for key, v in runs[-1].items() if key != "weights"}, flush=True)
            write(args, runs, model_mib)  # after every run: an interrupted benchmark keeps what it measured


def write(args: argparse.Namespace, runs: list[dict], model_mib: float) -> None:
    """The summary table of `runs` and the runs themselves, to `args.out`."""
    table: dict[str, dict[str, dict]] = {}
    for contender, k in dict.fromkeys((r["contender"], r["k"]) for r in runs):
        mine = [r for r in runs if r["contender"] == contender and r["k"] == k]
        table.setdefault(contender, {})[str(k)] = {
            "median_growth_mib": statistics.median(r["growth_mib"] for r in mine),
            "max_growth_models": max(r["growth_models"] for r in mine),
            "median_seconds": statistics.median(r["seconds"] for r in mine)}
    streamed = [row for c in ("learned_by_layer", "learned", "learned_streamed", "fisher")
                for row in table.get(c, {}).values()]
    flat = {c: (max(r["median_growth_mib"] for r in table[c].values()) - min(r["median_growth_mib"]
                                                                             for r in table[c].values()))
            for c in ("learned_by_layer", "learned", "learned_streamed", "fisher") if c in table}
    result = {
        "task": f"learned soups on BERT-shaped classifiers (hidden {args.hidden}, {args.layers} layers, "
                f"{model_mib:.0f} MiB fp32 each), {args.steps} optimisation steps on {args.examples} synthetic "
                "sentences (batch 8) plus the uniform-vs-learned held-out scoring; Fisher on the same sentences; "
                "private memory = RssAnon growth sampled every 20 ms in a fresh process per run",
        "goal": f"growth <= {GOAL}x one model and flat in K (streamed learned soups, fisher)",
        "within_goal": all(r["max_growth_models"] <= GOAL for r in streamed),
        "spread_over_k_mib": flat,
        "table": table,
        "runs": runs,
        "cpu_count": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
