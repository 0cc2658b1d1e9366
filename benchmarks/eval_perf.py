"""Held-out evaluation performance (issue #29): greedy against a plain reference loop, private memory of offloaded
greedy and of `Soup.evaluate` with ensembles, and the user's workflow against an older checkout.

Every measurement runs in its own process; contenders alternate round by round; medians are reported. Private
memory is the growth of RssAnon (read from /proc/PID/status every 10 ms by a thread of the measured process) over
its value just before the measured call. Each worker imports what both contenders import the same way (torch,
transformers and the model's own transformers module, datasets, pandas, hf_soups) before the measured call: a tiny
model's forward passes take milliseconds, and the 1.8 s import of its modeling module would otherwise be most of
either contender's time.

(a) greedy vs a 60-line reference loop (length-sorted batches, `inference_mode`, every candidate evaluated in full,
    the same `>=` rule), same decisions asserted, on K=6 tiny real fine-tunes and on a K=16 sweep where half the
    candidates are under-trained; the ratio and examples evaluated / (examples x candidates); greedy's profile:
    the selection's wall time, its forward passes, and the non-forward share of the selection.
(b) offloaded greedy (`EvalSpec(max_memory={"cpu": "100MiB"})`) at K=4/8 on a BERT-base-shaped model (random init).
(c) `Soup.evaluate` with the ensembles at K=8 on the same model.
(d) the workflow: greedy, `Soup.evaluate` on val and test, then a learned soup on val; this tree against
    `--base-tree` (default: main before #29, `--base-rev 6bef35d`, exported from this repository's history with
    `git archive` into the workdir), the numbers compared.
(e) (a) on `make demo`'s real MiniLM fine-tunes and its held-out snippets (`--demo`, default .cache/demo).

Usage: python benchmarks/eval_perf.py [--rounds 3] [--n 400] [--bert-base] [--base-tree DIR | --base-rev REV] [--note ...]
       [--only abcde --demo .cache/demo --demo-n 1000]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BASE_REV = "6bef35d"  # main before #29: the workflow's base


class RssAnon:
    """Peak RssAnon growth of this process over the block, sampled every 10 ms."""

    def __enter__(self) -> RssAnon:
        self.base = self.peak = _rss_anon()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, _rss_anon())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_anon())
        self.growth_mib = (self.peak - self.base) / 1024


def _rss_anon() -> int:
    with open(f"/proc/{os.getpid()}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    return 0


# ---------------------------------------------------------------------------------------------------- fixtures
def tiny_sweep(root: str, k: int, under_trained: int) -> list[str]:
    """K tiny BERT fine-tunes of one init on the sentiment task; the last `under_trained` take 1 step (clearly
    worse)."""
    from hf_soups.testing import finetune_tiny_classifier, make_tiny_bert

    init = os.path.join(root, "init")
    if not os.path.exists(os.path.join(init, "config.json")):
        make_tiny_bert(init, seed=0, num_labels=2, id2label={0: "negative", 1: "positive"}, hidden_size=64,
                       initializer_range=0.1)
    refs = []
    for i in range(k):
        path = os.path.join(root, f"ft{i}")
        if not os.path.exists(os.path.join(path, "config.json")):
            weak = i >= k - under_trained
            finetune_tiny_classifier(init, path, seed=i, lr=1e-3, steps=1 if weak else 40)
        refs.append(path)
    return refs


def bert_base_sweep(root: str, k: int, full_size: bool) -> list[str]:
    """K randomly initialised BERT-base-shaped classifiers (a tiny tokenizer); smaller layers without --bert-base."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from hf_soups.testing.factories import write_tiny_tokenizer

    refs = []
    for i in range(k):
        path = os.path.join(root, f"bb{i}")
        if not os.path.exists(os.path.join(path, "config.json")):
            torch.manual_seed(0 if i == 0 else 1000 + i)
            shape = {} if full_size else dict(hidden_size=256, num_hidden_layers=4, intermediate_size=1024,
                                                num_attention_heads=4)
            model = BertForSequenceClassification(BertConfig(num_labels=2, **shape))
            if i:  # fine-tunes of one init: the first model plus a small perturbation
                first = BertForSequenceClassification.from_pretrained(refs[0]).state_dict()
                model.load_state_dict({n: t + 0.01 * torch.randn_like(t) if t.is_floating_point() else t
                                       for n, t in first.items()})
            model.save_pretrained(path)
            write_tiny_tokenizer(path)
        refs.append(path)
    return refs


def val_csv(root: str, n: int, seed: int = 5, name: str = "val.csv") -> str:
    from hf_soups.testing import sentiment_examples, write_csv

    path = os.path.join(root, f"{n}-{seed}-{name}")
    return path if os.path.exists(path) else write_csv(path, sentiment_examples(n, seed=seed))


def demo_fine_tunes(demo_workdir: str, root: str, n: int) -> tuple[list[str], str]:
    """`make demo`'s real MiniLM fine-tunes (its newest full run) and the first `n` of its held-out snippets as a CSV."""
    sys.path.insert(0, HERE)
    from _hutto import splits
    from _search import N_TRAIN, N_VAL, SPLIT_SEED

    runs = sorted(glob.glob(os.path.join(demo_workdir, "full-*")), key=os.path.getmtime)
    refs = sorted(glob.glob(os.path.join(runs[-1], "ft-rs*"))) if runs else []
    if not refs:
        raise SystemExit(f"no fine-tunes under {demo_workdir}/full-*/: run `make demo` first")
    path = os.path.join(root, f"demo-val-{n}.csv")
    if not os.path.exists(path):
        val = splits(n_train=N_TRAIN, n_val=N_VAL, n_test=None, n_ood=None, seed=SPLIT_SEED)["val"].select(range(n))
        val.to_pandas().to_csv(path, index=False)
    return refs, path


def export_tree(rev: str, path: str) -> str | None:
    """`rev`'s files (`git archive`) under `path`, once; `None` when git or the commit is not there."""
    if os.path.exists(os.path.join(path, "hf_soups", "__init__.py")):
        return path
    try:
        archive = subprocess.run(["git", "-C", ROOT, "archive", "--format=tar", rev], capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    os.makedirs(path, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", path], input=archive.stdout, check=True)
    return path


# ----------------------------------------------------------------------------------------------------- workers
def reference_loop(refs: list[str], val: str, batch_size: int = 64) -> dict:
    """The plain greedy soup: every candidate evaluated in full, `>=`, uniform averages of fp32 state dicts."""
    import pandas as pd
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    data = pd.read_csv(val)
    tok = AutoTokenizer.from_pretrained(refs[0])
    enc = [tok(t, truncation=True, max_length=256)["input_ids"] for t in data["text"]]
    order = sorted(range(len(enc)), key=lambda i: len(enc[i]))
    labels = torch.tensor(data["label"].tolist())
    batches = []
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        batches.append((torch.tensor(idx), tok.pad({"input_ids": [enc[i] for i in idx]}, return_tensors="pt")))
    model = AutoModelForSequenceClassification.from_pretrained(refs[0]).float().eval()
    states = [{k: v.float() for k, v in AutoModelForSequenceClassification.from_pretrained(r).state_dict().items()}
              for r in refs]

    def accuracy(state: dict) -> float:
        model.load_state_dict(state)
        preds = torch.empty(len(enc), dtype=torch.long)
        with torch.inference_mode():
            for idx, inputs in batches:
                preds[idx] = model(**inputs).logits.argmax(-1)
        return float((preds == labels).float().mean())

    scores = [accuracy(s) for s in states]
    ranked = sorted(range(len(refs)), key=lambda i: -scores[i])
    soup, best, decisions = [ranked[0]], scores[ranked[0]], [[refs[ranked[0]], True]]
    for i in ranked[1:]:
        members = soup + [i]
        trial = {k: torch.stack([states[m][k] for m in members]).mean(0) for k in states[0]}
        score = accuracy(trial)
        decisions.append([refs[i], score >= best])
        if score >= best:
            soup, best = members, score
    return {"decisions": decisions, "examples": len(enc) * (2 * len(refs) - 1)}


def greedy_run(refs: list[str], val: str, **spec: object) -> dict:
    """Greedy through `soup_from_hub`, with its profile: the selection (`choose_weights`: every ingredient scored,
    then the candidates) and the forward passes inside it (`Evaluator.forward_seconds`)."""
    from hf_soups import EvalSpec, MergeOptions, soup_from_hub
    from hf_soups.evaluation import held_out

    profile: dict = {}
    choose = held_out.choose_weights

    def timed(*args: object, **kwargs: object) -> object:
        start = time.perf_counter()
        chosen = choose(*args, **kwargs)
        profile.update(selection_s=time.perf_counter() - start, forward_s=chosen.evaluator.forward_seconds)
        return chosen

    held_out.choose_weights = timed
    try:
        with tempfile.TemporaryDirectory() as out:
            soup = soup_from_hub(refs, method="greedy", output_dir=os.path.join(out, "soup"),
                                 eval_spec=EvalSpec(dataset=val, **spec), merge_options=MergeOptions(progress=False))
    finally:
        held_out.choose_weights = choose
    n = len(open(val).read().strip().splitlines()) - 1
    examples = len(refs) * n + sum(s.get("examples", n) for s in soup.trace[1:])
    return {"decisions": [[s["ingredient"], s["accepted"]] for s in soup.trace], "examples": examples,
            "candidate_examples": sum(s.get("examples", n) for s in soup.trace[1:]),
            "candidates": len(refs) - 1, "n": n, **profile}


def evaluate_run(refs: list[str], val: str) -> dict:
    from hf_soups import MergeOptions, soup_from_hub

    with tempfile.TemporaryDirectory() as out:
        soup = soup_from_hub(refs, method="uniform", output_dir=os.path.join(out, "soup"),
                             merge_options=MergeOptions(progress=False))
        with RssAnon() as mem:
            report = soup.evaluate({"val": val}, progress=False)
    return {"private_mib": mem.growth_mib, "results": getattr(report, "results", report)}


def workflow_run(refs: list[str], val: str, test: str) -> dict:
    from hf_soups import EvalSpec, MergeOptions, soup_from_hub

    with tempfile.TemporaryDirectory() as out:
        greedy = soup_from_hub(refs, method="greedy", output_dir=os.path.join(out, "g"), eval_dataset=val,
                               merge_options=MergeOptions(progress=False))
        report = greedy.evaluate({"val": val, "test": test}, progress=False)
        learned = soup_from_hub(refs, method="learned", output_dir=os.path.join(out, "l"), eval_dataset=val,
                                eval_spec=EvalSpec(learned_steps=5), merge_options=MergeOptions(progress=False))
    return {"greedy_weights": list(greedy.weights), "results": getattr(report, "results", report),
            "learned_weights": list(learned.weights)}


def worker(args: argparse.Namespace) -> None:
    spec = json.loads(args.worker)
    os.environ["HF_SOUPS_CACHE"] = tempfile.mkdtemp(prefix="eval-perf-cache-")  # a cold cache: no head start
    kind, refs = spec["kind"], spec["refs"]
    import datasets  # noqa: F401  (imports are not the measured call's memory or time: greedy reads the CSV
    import pandas  # noqa: F401    with datasets, the reference loop with pandas)
    import transformers  # noqa: F401

    import hf_soups.api  # noqa: F401

    with open(os.path.join(refs[0], "config.json")) as f:  # the model's transformers module: imported by both
        getattr(transformers, json.load(f)["architectures"][0])  # contenders the same way, not what is measured

    start = time.perf_counter()
    with RssAnon() as mem:
        if kind == "reference":
            out = reference_loop(refs, spec["val"])
        elif kind == "greedy":
            out = greedy_run(refs, spec["val"], **spec.get("eval_spec", {}))
        elif kind == "evaluate":
            out = evaluate_run(refs, spec["val"])
        else:
            out = workflow_run(refs, spec["val"], spec["test"])
    out.update(seconds=time.perf_counter() - start, run_private_mib=mem.growth_mib)
    print("RESULT " + json.dumps(out))


def run(spec: dict, pythonpath: str = ROOT) -> dict:
    env = {**os.environ, "PYTHONPATH": pythonpath, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)], env=env,
                          capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"worker {spec['kind']} failed:\n{proc.stderr[-3000:]}")
    return json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])


def alternate(contenders: dict[str, tuple[dict, str]], rounds: int) -> dict[str, list[dict]]:
    runs: dict[str, list[dict]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, (spec, path) in contenders.items():
            runs[name].append(run(spec, path))
    return runs


def median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def greedy_against_reference(label: str, refs: list[str], val: str, rounds: int) -> dict:
    """(a)/(e): greedy and the reference loop, alternating; the same decisions asserted; medians, the ratio and
    greedy's profile."""
    runs = alternate({"greedy": ({"kind": "greedy", "refs": refs, "val": val}, ROOT),
                      "reference": ({"kind": "reference", "refs": refs, "val": val}, ROOT)}, rounds)
    if not all(g["decisions"] == r["decisions"] for g, r in zip(runs["greedy"], runs["reference"])):
        raise SystemExit(f"{label}: greedy and the reference loop decided differently")
    g = runs["greedy"][0]
    return {"same_decisions": True, "n_held_out": g["n"],
            "greedy_s": median(runs["greedy"], "seconds"),
            "reference_s": median(runs["reference"], "seconds"),
            "ratio": median(runs["reference"], "seconds") / median(runs["greedy"], "seconds"),
            "candidate_examples_fraction": g["candidate_examples"] / (g["n"] * g["candidates"]),
            "greedy_selection_s": median(runs["greedy"], "selection_s"),
            "greedy_forward_s": median(runs["greedy"], "forward_s"),
            "non_forward_fraction_of_selection": statistics.median(
                1 - r["forward_s"] / r["selection_s"] for r in runs["greedy"])}


# -------------------------------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--n", type=int, default=400, help="held-out examples")
    parser.add_argument("--bert-base", action="store_true", help="memory rows on full BERT-base size (110M)")
    parser.add_argument("--base-tree", default=None, help="(d)'s base: a checkout of main before #29 (default: "
                        "--base-rev exported from this repository's git history into the workdir)")
    parser.add_argument("--base-rev", default=BASE_REV, help="(d)'s base commit when --base-tree is not given")
    parser.add_argument("--workdir", default=os.path.join(HERE, ".work", "eval_perf"))
    parser.add_argument("--output", default=os.path.join(HERE, "results", "eval_perf.json"))
    parser.add_argument("--only", default="abcde")
    parser.add_argument("--note", default=None, help="recorded with this run (e.g. the machine's load)")
    parser.add_argument("--demo", default=os.path.join(ROOT, ".cache", "demo"),
                        help="(e): the `make demo` workdir (default .cache/demo, there once `make demo` ran): greedy "
                             "against the reference loop on its real MiniLM fine-tunes and the first --demo-n of its "
                             "held-out snippets")
    parser.add_argument("--demo-n", type=int, default=1000)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    os.makedirs(args.workdir, exist_ok=True)
    result: dict = {}
    if os.path.exists(args.output):  # runs of some parts (--only) add to the same file
        with open(args.output) as f:
            result = json.load(f)
    result.setdefault("runs", []).append({"only": args.only, "rounds": args.rounds, "n_held_out": args.n,
                                          "load_before": os.getloadavg(), "cpus": os.cpu_count(),
                                          **({"note": args.note} if args.note else {})})
    val = val_csv(args.workdir, args.n)
    if "a" in args.only:
        for label, k, weak in (("tiny_fine_tunes_k6", 6, 0), ("k16_half_under_trained", 16, 8)):
            refs = tiny_sweep(os.path.join(args.workdir, label), k, weak)
            result[label] = {"k": k, "under_trained": weak,
                             **greedy_against_reference(label, refs, val, args.rounds)}
            print(label, json.dumps(result[label]))
    if "e" in args.only and not glob.glob(os.path.join(args.demo, "full-*", "ft-rs*")):
        print(f"(e) skipped: no `make demo` fine-tunes under {args.demo}/full-*/ (run `make demo`, or pass --demo)")
    elif "e" in args.only:
        refs, demo_val = demo_fine_tunes(args.demo, args.workdir, args.demo_n)
        result["demo_minilm"] = {"k": len(refs), "fine_tunes": [os.path.basename(r) for r in refs],
                                 **greedy_against_reference("demo fine-tunes", refs, demo_val, args.rounds)}
        print("demo_minilm", json.dumps(result["demo_minilm"]))
    if "b" in args.only or "c" in args.only:
        refs = bert_base_sweep(os.path.join(args.workdir, "bert" + ("-base" if args.bert_base else "-small")), 8,
                               args.bert_base)
        one = sum(os.path.getsize(os.path.join(refs[0], f)) for f in os.listdir(refs[0]) if f.endswith(".safetensors"))
        result["model_mib"] = one / 2**20
        small = val_csv(args.workdir, 64, seed=9)
        if "b" in args.only:
            for k in (4, 8):
                runs = alternate({"offloaded": ({"kind": "greedy", "refs": refs[:k], "val": small,
                                                 "eval_spec": {"max_memory": {"cpu": "100MiB"}}}, ROOT)}, args.rounds)
                result[f"offloaded_greedy_k{k}"] = {"private_mib": median(runs["offloaded"], "run_private_mib"),
                                                    "seconds": median(runs["offloaded"], "seconds")}
                print(f"offloaded greedy K={k}", json.dumps(result[f"offloaded_greedy_k{k}"]))
        if "c" in args.only:
            runs = alternate({"evaluate": ({"kind": "evaluate", "refs": refs, "val": small}, ROOT)}, args.rounds)
            result["evaluate_ensembles_k8"] = {"private_mib": median(runs["evaluate"], "private_mib")}
            print("evaluate K=8", json.dumps(result["evaluate_ensembles_k8"]))
    if "d" in args.only and args.base_tree is None:
        args.base_tree = export_tree(args.base_rev, os.path.join(args.workdir, f"base-{args.base_rev}"))
    if "d" in args.only and args.base_tree is None:
        print(f"(d) skipped: {args.base_rev} is not in this repository's history (a shallow clone?); pass "
              "--base-tree, a checkout of main before #29")
    elif "d" in args.only:
        refs = tiny_sweep(os.path.join(args.workdir, "k16_half_under_trained"), 16, 8)[:8]
        spec = {"kind": "workflow", "refs": refs, "val": val, "test": val_csv(args.workdir, args.n, seed=11)}
        runs = alternate({"this": (spec, ROOT), "base": (spec, args.base_tree)}, args.rounds)
        this, base = runs["this"][0], runs["base"][0]
        same = {part: this[part] == base[part] for part in ("greedy_weights", "results", "learned_weights")}
        result["workflow"] = {"this_s": median(runs["this"], "seconds"), "base_s": median(runs["base"], "seconds"),
                              "speedup": median(runs["base"], "seconds") / median(runs["this"], "seconds"),
                              "same_numbers": all(same.values()), "same": same,
                              "learned_weights_max_abs_difference": max(
                                  abs(a - b) for a, b in zip(this["learned_weights"], base["learned_weights"])),
                              "base_tree": args.base_tree}
        print("workflow", json.dumps(result["workflow"]))
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(result, f, indent=2)
    print(f"Wrote {args.output}")


if __name__ == "__main__":
    main()
