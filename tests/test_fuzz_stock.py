"""Fuzz targets for the statistics pass and Model Stock's weights: arbitrary small families of tensors (zero, opposite,
tiny and huge task vectors, several chunks) against fp64 torch, with mergekit's edge rules.

Budget: HF_SOUPS_FUZZ_EXAMPLES (as tests/test_fuzz.py; a twentieth of it here, at least 50), each example under
HF_SOUPS_FUZZ_TIMEOUT seconds.
"""

from __future__ import annotations

import itertools
import math

import torch
from hypothesis import given
from hypothesis import strategies as st
from test_fuzz import _SETTINGS, EXAMPLES, _bounded

from hf_soups.checkpoint.reader import StateDictReader
from hf_soups.merge.stats import collect_stats
from hf_soups.recipes.model_stock import NORM_FLOOR, SINGULAR_DENOMINATOR, model_stock_state_dict

_STOCK_SETTINGS = _SETTINGS.__class__(_SETTINGS, max_examples=max(EXAMPLES // 20, 50))

_value = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, allow_infinity=False, width=32)


@st.composite
def families(draw):
    k = draw(st.integers(2, 4))
    n = draw(st.integers(1, 23))
    base = torch.tensor(draw(st.lists(_value, min_size=n, max_size=n)), dtype=torch.float32)
    kinds = st.sampled_from(["random", "zero", "opposite", "copy", "tiny"])
    fts = []
    for i in range(k):
        kind = draw(kinds)
        if kind == "random" or not fts:
            tau = torch.tensor(draw(st.lists(_value, min_size=n, max_size=n)), dtype=torch.float32)
        elif kind == "zero":
            tau = torch.zeros(n)
        elif kind == "opposite":
            tau = -(fts[0] - base)
        elif kind == "copy":
            tau = fts[-1] - base
        else:
            tau = (fts[0] - base) * 1e-6
        fts.append(base + tau)
    return base, fts


def _reference_t(base: torch.Tensor, fts: list[torch.Tensor]) -> float:
    taus = [f.double() - base.double() for f in fts]
    cos = [float(torch.clamp(a @ b / torch.clamp(a.norm() * b.norm(), min=NORM_FLOOR), -1, 1))
           for a, b in itertools.combinations(taus, 2)]
    c = sum(cos) / len(cos)
    den = 1 + (len(fts) - 1) * c
    return 0.0 if abs(den) < SINGULAR_DENOMINATOR else len(fts) * c / den


@_STOCK_SETTINGS
@given(families(), st.integers(1, 9))
@_bounded
def test_fuzz_stats_and_model_stock(family, chunk):
    base, fts = family
    import os

    os.environ["HF_SOUPS_CHUNK_ELEMENTS"] = str(chunk)
    try:
        readers = [StateDictReader({"w": f}, ingredient=f"ft{i}") for i, f in enumerate(fts)]
        base_reader = StateDictReader({"w": base}, ingredient="base")
        stats = collect_stats(readers, base_reader, progress=False)
        soup, plan = model_stock_state_dict(readers, base_reader, stats=stats)
    finally:
        del os.environ["HF_SOUPS_CHUNK_ELEMENTS"]
    ts = stats.tensors["w"]
    taus = [f.double() - base.double() for f in fts]
    scale = max(float(t.abs().max()) for t in taus) ** 2 * len(base) + 1e-30
    for i, j in itertools.product(range(len(fts)), repeat=2):
        assert abs(ts.dots[i][j] - float(taus[i] @ taus[j])) <= 1e-12 * scale
        want = float((fts[i].double() - fts[j].double()).norm() ** 2)
        assert abs(ts.sq_distances[i][j] - want) <= 1e-12 * scale
    w = plan["w"]
    assert math.isfinite(w.t) and abs(sum(w.ingredients) + w.base - 1.0) <= 1e-9 * max(1.0, abs(w.t))
    want_t = _reference_t(base, fts)
    if abs(1 + (len(fts) - 1) * w.cos) > 1e-3:  # away from the singularity t is well conditioned
        assert w.t == want_t or abs(w.t - want_t) <= 1e-6 * max(1.0, abs(want_t))
    assert bool(torch.isfinite(soup["w"]).all())
