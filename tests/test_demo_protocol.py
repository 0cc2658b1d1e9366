"""The demo's protocol (benchmarks/_search.py, benchmarks/_hutto.py; issue #28): disjoint splits of the sizes the
protocol fixes, a seeded random search inside its declared space, and augmentations that only drop or mask words."""

from __future__ import annotations

import os
import random
import sys
from collections import Counter

import pytest

from conftest import check_random_search

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import _search  # noqa: E402
from _hutto import read_domain, splits  # noqa: E402


def _pairs(ds) -> Counter:
    return Counter(zip(ds["text"], ds["label"]))


def test_demo_splits_are_disjoint_and_use_every_snippet():
    data = splits(n_train=_search.N_TRAIN, n_val=_search.N_VAL, n_test=None, n_ood=None, seed=_search.SPLIT_SEED)
    movie = read_domain("movie")
    assert len(data["val"]) == _search.N_VAL == 3000
    assert len(data["train"]) == _search.N_TRAIN
    # train, val and test partition the movie snippets: same multiset, nothing used twice
    assert _pairs(data["train"]) + _pairs(data["val"]) + _pairs(data["test"]) == Counter(movie)
    assert len(data["test"]) == len(movie) - _search.N_TRAIN - _search.N_VAL
    for domain in ("amazon", "tweets", "nyt"):  # the shifted sets whole
        assert _pairs(data[f"ood_{domain}"]) == Counter(read_domain(domain))
    # a fixed test size still cuts after train and val (the other benchmarks' calls), and too much is refused
    small = splits(n_train=50, n_val=30, n_test=20, n_ood=10, seed=3)
    assert [len(small[k]) for k in ("train", "val", "test", "ood_nyt")] == [50, 30, 20, 10]
    with pytest.raises(ValueError, match="exceed"):
        splits(n_train=len(movie), n_val=1)


def test_demo_search_is_seeded_and_inside_its_space():
    check_random_search(_search)


@pytest.mark.parametrize("kind", ["word_dropout", "span_mask"])
def test_demo_augmentations_only_drop_or_mask_words(kind):
    rng = random.Random(0)
    text = "the film is a gorgeous , witty and ultimately moving portrait of a family"
    words = text.split()
    for rate in (0.05, 0.25, 0.9):
        out = _search.augment(text, kind, rate, rng, "[MASK]").split()
        if kind == "word_dropout":
            assert out and len(out) <= len(words)
            it = iter(words)
            assert all(w in it for w in out)  # a subsequence: words dropped, never reordered or invented
        else:
            span = max(1, round(rate * len(words)))
            assert len(out) == len(words) and out.count("[MASK]") == span
            first = out.index("[MASK]")
            assert out[first : first + span] == ["[MASK]"] * span
            assert out[:first] + out[first + span :] == words[:first] + words[first + span :]
    assert _search.augment("one", kind, 0.9, rng, "[MASK]") == "one"  # a single word is never dropped or masked
    assert _search.augment(text, "none", 0.5, rng, "[MASK]") == text
