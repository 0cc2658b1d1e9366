"""The demo's protocol (issue #28): the split sizes, the random search's space and seed, its draws, the augmentations.

Fixed before the first training run; `science_text.py` trains one ingredient per draw. No side effects on import.
"""

from __future__ import annotations

import _demo
import random

SPLIT_SEED = 0
N_VAL = 3000  # held-out: greedy's and best_individual's choices
N_TRAIN = 1500  # trimmed for time, never the held-out set: set only from `--probe`'s throughput, before any full run
# (2,000 until the idle probe of 2026-12-03 16:20 UTC: 32,000 training passes alone took ~7 of the 20 minutes)
PRECISION = "bfloat16"  # training and evaluation under torch.autocast (AMX on the demo machine); weights stay fp32
WISE_FT_ALPHAS = (0.5,)  # WiSE-FT at the paper's usual mixing point only: each alpha is one more evaluated model
SEARCH_SEED = 28
K = 8
SEARCH_SPACE = {
    "learning_rate": {"distribution": "log-uniform", "low": 3e-5, "high": 3e-4},
    "weight_decay": {"distribution": "log-uniform", "low": 1e-4, "high": 1e-1},
    "epochs": {"distribution": "integer-uniform", "low": 1, "high": 3},
    "label_smoothing": {"distribution": "uniform", "low": 0.0, "high": 0.2},
    "augmentation": {"distribution": "choice", "values": ["none", "word_dropout", "span_mask"]},
    "augmentation_rate": {"distribution": "uniform", "low": 0.05, "high": 0.25},
}


def draw_search(k: int = K, seed: int = SEARCH_SEED, space: dict = SEARCH_SPACE) -> list[dict]:
    """The random search's `k` draws, in order (each with its own training seed: its index)."""
    return _demo.draw_search(k, seed, space)


def augment(text: str, kind: str, rate: float, rng: random.Random, mask_token: str) -> str:
    """Word dropout (each word dropped with probability `rate`, one always kept) or one random span of about
    `rate` of the words replaced by the mask token."""
    words = text.split()
    if kind == "none" or rate <= 0 or len(words) < 2:
        return text
    if kind == "word_dropout":
        kept = [w for w in words if rng.random() >= rate]
        return " ".join(kept or [rng.choice(words)])
    span = max(1, round(rate * len(words)))
    start = rng.randrange(0, len(words) - span + 1)
    return " ".join(words[:start] + [mask_token] * span + words[start + span:])
