"""Fuzz target: the parameter groups of learned_by_layer, from tensor names a checkpoint header holds (untrusted).

`group_of` must agree with the rule as a regular expression (the first `<block word>.<digits>.` component pair, else
the first two parts of the module path) and stay linear in the name's length. Budget: HF_SOUPS_FUZZ_EXAMPLES, as in
tests/test_fuzz.py, with its per-example time limit.
"""

from __future__ import annotations

import re
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from hf_soups.evaluation.learned_stream import group_of, layer_groups

from test_fuzz import EXAMPLES, _SETTINGS, _bounded

_FEW = settings(_SETTINGS, max_examples=max(EXAMPLES // 30, 50))  # < 20 s for the file on one core

_RULE = re.compile(r"^((?:.*?\.)??(?:layer|layers|blocks|block|h)\.[0-9]+)\.", re.DOTALL)


def _oracle(name: str) -> str:
    match = _RULE.match(name)
    if match:
        return match.group(1)
    parts = name.split(".")[:-1]
    return ".".join(parts[:2]) if parts else name


_PART = st.one_of(st.sampled_from(["layer", "layers", "blocks", "block", "h", "bert", "encoder", "weight", "0", "12",
                                   "", "x", "\u0661", "layer0"]),
                  st.text(alphabet="ab.1 ", max_size=4))
_NAMES = st.lists(_PART, min_size=1, max_size=8).map(".".join)


@_FEW
@given(_NAMES)
@_bounded
def test_group_of_agrees_with_the_rule(name):
    group = group_of(name)
    assert group == _oracle(name)
    assert name.startswith(group)


@_FEW
@given(st.lists(_NAMES, min_size=1, max_size=6), st.sampled_from(["layer", "model"]))
@_bounded
def test_every_tensor_gets_one_group(names, groups):
    mapping = layer_groups(names, groups)
    assert set(mapping) == set(names)
    assert all(name.startswith(g) for name, g in mapping.items()) or groups == "model"


def test_hostile_long_name_is_linear():
    name = "h.1h." * 200_000 + "weight"  # 1 MB of near-misses: one pass over the components
    start = time.perf_counter()
    group_of(name)
    assert time.perf_counter() - start < 2.0
