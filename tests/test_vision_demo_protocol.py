"""The vision demo's protocol (benchmarks/_vision_search.py, benchmarks/science_vision.py; issue #28): disjoint
splits of the sizes the protocol fixes, a seeded random search inside its declared space, and augmentations that
transform the chosen images only as `AUGMENTATIONS` declares."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch

from conftest import check_random_search

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import _vision_search as vs  # noqa: E402


def test_vision_splits_are_disjoint_and_of_the_protocol_sizes():
    val, train = vs.split_indices(60000)
    assert len(val) == vs.N_VAL == 3000 and len(train) == vs.N_TRAIN
    assert not set(val.tolist()) & set(train.tolist())  # held-out never trained on
    assert len(set(val.tolist())) == len(val) and len(set(train.tolist())) == len(train)
    assert 0 <= min(val.min(), train.min()) and max(val.max(), train.max()) < 60000
    again_val, again_train = vs.split_indices(60000)
    assert np.array_equal(val, again_val) and np.array_equal(train, again_train)  # seeded
    other_val, _ = vs.split_indices(60000, seed=vs.SPLIT_SEED + 1)
    assert not np.array_equal(val, other_val)
    # a small pool: still disjoint, and too much is refused
    v, t = vs.split_indices(50, n_val=20, n_train=30, seed=3)
    assert sorted(v.tolist() + t.tolist()) == list(range(50))
    with pytest.raises(ValueError, match="exceed"):
        vs.split_indices(100, n_val=60, n_train=41)
    # the in-domain test and every shifted set are big enough for the protocol's intervals (±0.03 at most)
    assert vs.N_TEST >= 2000 and vs.N_SHIFT >= 1000


def test_vision_search_is_seeded_and_inside_its_space():
    draws, many = check_random_search(vs)
    assert set(vs.SEARCH_SPACE["augmentation"]["values"]) == set(vs.AUGMENTATIONS)
    assert all(vs.describe(d).startswith(f"lr {d['learning_rate']:.2e}") for d in draws)
    assert {d["epochs"] for d in many} == {1, 2, 3}


def _batch(n: int = 64, size: int = 16) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def _is_crop_flip(original: torch.Tensor, out: torch.Tensor, pad: int) -> bool:
    """Is `out` an edge-padded translation of `original` by at most `pad` pixels, possibly mirrored?"""
    h, w = original.shape[-2:]
    padded = torch.nn.functional.pad(original[None], (pad, pad, pad, pad), mode="replicate")[0]
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            crop = padded[:, dy : dy + h, dx : dx + w]
            if torch.equal(crop, out) or torch.equal(crop.flip(-1), out):
                return True
    return False


@pytest.mark.parametrize("kind", ["crop_flip", "erasing"])
def test_vision_augmentations_only_transform_images_as_declared(kind):
    x = _batch()
    before = x.clone()
    for rate in (0.25, 1.0):
        out = vs.augment(x, kind, rate, torch.Generator().manual_seed(7))
        assert torch.equal(x, before)  # the input batch is never changed in place
        assert out.shape == x.shape and out.dtype == x.dtype
        changed = [i for i in range(len(x)) if not torch.equal(out[i], x[i])]
        if rate == 1.0:
            assert len(changed) >= len(x) - 4  # (a crop by (0, 0) without a flip is the identity)
        else:
            assert 0 < len(changed) < len(x)  # only the chosen images
        for i in changed:
            if kind == "crop_flip":
                assert _is_crop_flip(x[i], out[i], pad=2), i
            else:
                erased = out[i] != x[i]
                assert torch.all(out[i][erased] == 0)  # erased pixels are zero (mid-grey), the rest untouched
                rows, cols = erased.any(0).any(1).nonzero().flatten(), erased.any(0).any(0).nonzero().flatten()
                box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
                assert box <= 16 * 16 / 4 + 16  # at most about a quarter of the image, one rectangle
    # the same generator seed gives the same augmentation; rate 0 and "none" change nothing
    assert torch.equal(vs.augment(x, kind, 0.5, torch.Generator().manual_seed(3)),
                       vs.augment(x, kind, 0.5, torch.Generator().manual_seed(3)))
    assert torch.equal(vs.augment(x, kind, 0.0, torch.Generator().manual_seed(3)), x)
    assert torch.equal(vs.augment(x, "none", 1.0, torch.Generator().manual_seed(3)), x)
    with pytest.raises(ValueError, match="unknown augmentation"):
        vs.augment(x, "mixup", 0.5, torch.Generator())
