"""The vision demo's protocol (issue #28, `science_vision.py`): split sizes, the random search's space and seed, its
draws, the image augmentations.

Fixed before the first full run; the sizes come from `science_vision.py --probe`'s throughput (see `SIZES_NOTE`),
never from a result. No side effects on import (numpy only).
"""

from __future__ import annotations

import _demo
import math

import numpy as np

SPLIT_SEED = 0
N_VAL = 3000  # held-out, from Fashion-MNIST's training split: a 95% interval of about ±0.013 at 85% accuracy
N_TRAIN = 1000  # trimmed for time (never the held-out set); disjoint from val
N_TEST = 2000  # the first N_TEST images of the official test split (in-domain test)
N_SHIFT = 1000  # each shifted set: a shifted copy of the first N_SHIFT test images
PRECISION = "float32"  # training and evaluation: exact scores; bf16 autocast gained 0-13% here (see SIZES_NOTE)
FISHER_EXAMPLES = 64  # held-out examples per ingredient's Fisher (the library's cap is 256): trimmed for time
SIZES_NOTE = ("set from the 16:18-16:28 UTC probes (1 thread: training 70 images/CPU-s fp32, 63 bf16; library "
              "evaluation 338 images/CPU-s fp32 from PIL, 252 bf16 from pixel_values) for about 1,100 CPU-s in all, "
              "before any full run; nothing here was tuned to a result. FISHER_EXAMPLES: the 16:29 quick run's Fisher "
              "took minutes for 3 ingredients at 256 examples (expected Fisher over 10 classes, per-example "
              "gradients), so it was cut to 64 before the full run's soups. The 16:48 --probe (1 thread, loaded "
              "machine): training 64.0 images/CPU-s fp32, 62.7 bf16; library evaluation 355 fp32, 401 bf16: fp32 kept, "
              "exact, for at most 13% more evaluation time")
IMAGE_SIZE = 64
SEARCH_SEED = 28
K = 8
SEARCH_SPACE = {
    "learning_rate": {"distribution": "log-uniform", "low": 1e-4, "high": 1e-3},
    "weight_decay": {"distribution": "log-uniform", "low": 1e-4, "high": 1e-1},
    "epochs": {"distribution": "integer-uniform", "low": 1, "high": 3},
    "label_smoothing": {"distribution": "uniform", "low": 0.0, "high": 0.2},
    "augmentation": {"distribution": "choice", "values": ["none", "crop_flip", "erasing"]},
    "augmentation_rate": {"distribution": "uniform", "low": 0.2, "high": 0.8},
}
#: What each augmentation does to one chosen image (a float tensor `(C, H, W)`); the others are left untouched.
AUGMENTATIONS = {
    "none": "nothing",
    "crop_flip": "a random translation of up to 1/8 of the side, edge-padded (a padded random crop), then a "
                 "horizontal flip with probability 1/2",
    "erasing": "one random rectangle (1/16 to 1/4 of the area) set to zero (mid-grey after normalisation)",
}


def split_indices(n_pool: int, n_val: int = N_VAL, n_train: int = N_TRAIN,
                  seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """(val indices, train indices): disjoint, from one seeded permutation of Fashion-MNIST's training split.

    Raises:
        ValueError: `n_val + n_train` exceeds the pool.
    """
    if n_val + n_train > n_pool:
        raise ValueError(f"n_val + n_train = {n_val + n_train} exceed the {n_pool} training images")
    order = np.random.default_rng(seed).permutation(n_pool)
    return order[:n_val], order[n_val : n_val + n_train]


def draw_search(k: int = K, seed: int = SEARCH_SEED, space: dict = SEARCH_SPACE) -> list[dict]:
    """The random search's `k` draws, in order (each with its own training seed: its index)."""
    return _demo.draw_search(k, seed, space)


def describe(draw: dict) -> str:
    aug = draw["augmentation"] if draw["augmentation"] == "none" else \
        f"{draw['augmentation']}@{draw['augmentation_rate']:.2f}"
    return (f"lr {draw['learning_rate']:.2e}, wd {draw['weight_decay']:.1e}, {draw['epochs']} epoch(s), "
            f"smoothing {draw['label_smoothing']:.2f}, {aug}")


def augment(pixels, kind: str, rate: float, gen):
    """A copy of the batch `pixels` (a float tensor `(N, C, H, W)`) where each image is, with probability `rate`,
    transformed as `AUGMENTATIONS[kind]` says; `gen` is the `torch.Generator` drawing every choice.

    Raises:
        ValueError: an unknown `kind`.
    """
    import torch

    if kind not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {kind!r}; known: {sorted(AUGMENTATIONS)}")
    out = pixels.clone()
    if kind == "none" or rate <= 0:
        return out
    n, _, h, w = pixels.shape
    chosen = torch.rand(n, generator=gen) < rate
    for i in torch.nonzero(chosen).flatten().tolist():
        if kind == "crop_flip":
            pad = max(1, h // 8)
            dy, dx = (int(v) for v in torch.randint(-pad, pad + 1, (2,), generator=gen))
            padded = torch.nn.functional.pad(pixels[i : i + 1], (pad, pad, pad, pad), mode="replicate")[0]
            img = padded[:, pad + dy : pad + dy + h, pad + dx : pad + dx + w]
            if torch.rand(1, generator=gen).item() < 0.5:
                img = img.flip(-1)
            out[i] = img
        else:
            area = h * w * (1 / 16 + (1 / 4 - 1 / 16) * torch.rand(1, generator=gen).item())
            aspect = math.exp(math.log(0.5) + math.log(4.0) * torch.rand(1, generator=gen).item())
            eh = max(1, min(h, round(math.sqrt(area * aspect))))
            ew = max(1, min(w, round(math.sqrt(area / aspect))))
            y = int(torch.randint(0, h - eh + 1, (1,), generator=gen))
            x = int(torch.randint(0, w - ew + 1, (1,), generator=gen))
            out[i, :, y : y + eh, x : x + ew] = 0.0
    return out
