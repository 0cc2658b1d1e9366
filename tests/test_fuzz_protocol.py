"""Property-based fuzzing of the method protocol's untrusted inputs: a recipe's per-tensor plan (`tensors`,
`base_input`) and method `parameters`, as a model card carries them, and the per-tensor weights a plan accepts.

Only `SoupError` may escape, never a crash or a hang; an accepted recipe reads back from its own YAML unchanged, and
an accepted per-tensor weight row is finite, within fp32's range, one per input, not all zero.

Same budget variable and per-example time limit as `tests/test_fuzz.py` (HF_SOUPS_FUZZ_EXAMPLES, here a fortieth of
it per target; HF_SOUPS_FUZZ_TIMEOUT per example).
"""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st
from test_fuzz import _SETTINGS, EXAMPLES, _bounded

from hf_soups import SoupError
from hf_soups.checkpoint.format import TensorInfo
from hf_soups.merge import build_plan
from hf_soups.recipes import Recipe

_PROTOCOL_SETTINGS = settings(_SETTINGS, max_examples=max(EXAMPLES // 40, 100))

_numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(), st.booleans(),
                     st.sampled_from([0.0, -0.0, 0.5, -1.0, 3.4e38, 3.5e38, 1e39, 1e-320]))
_scalars = st.one_of(_numbers, st.none(), st.text(max_size=6), st.binary(max_size=3))
_values = st.recursive(_scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                         st.dictionaries(st.text(max_size=3), inner, max_size=2)),
                       max_leaves=8)
_entries = st.one_of(
    st.fixed_dictionaries({"weights": st.one_of(st.lists(_numbers, max_size=4), _values),
                           "tensors": st.one_of(st.lists(st.text(max_size=5), max_size=3), _values)}),
    st.fixed_dictionaries({"source": st.one_of(st.integers(-2, 4), _values),
                           "tensors": st.one_of(st.lists(st.text(max_size=5), max_size=3), _values)}),
    _values,
)
_SHA = "0" * 40


@given(tensors=st.one_of(st.lists(_entries, max_size=3), _values), parameters=_values,
       base_input=st.one_of(st.booleans(), _values), base=st.sampled_from([None, "user/base@" + "1" * 40]))
@_PROTOCOL_SETTINGS
@_bounded
def test_recipe_per_tensor_fields_never_crash(tensors, parameters, base_input, base):
    data = {"method": "uniform", "ingredients": [f"user/a@{_SHA}", f"user/b@{_SHA}"], "weights": [1, 1],
            "tensors": tensors, "parameters": parameters, "base_input": base_input, "base": base}
    try:
        recipe = Recipe.from_dict(data)
    except SoupError:
        return
    assert Recipe.from_yaml(recipe.to_yaml()) == recipe
    inputs = 2 + int(recipe.base_input)
    for entry in recipe.tensors:
        assert entry["tensors"] and all(isinstance(n, str) for n in entry["tensors"])
        if "source" in entry:
            assert 0 <= entry["source"] < inputs
        else:
            assert len(entry["weights"]) == inputs and all(math.isfinite(w) for w in entry["weights"])


_INFOS = {n: TensorInfo(n, "F32", (2,), "model.safetensors", 8 * i, 8) for i, n in enumerate(("w", "b"))}
_PLAN = build_plan([_INFOS, _INFOS], [1, 1]).with_base()


@given(row=st.lists(_numbers, max_size=4), name=st.sampled_from(["w", "b", "x"]))
@_PROTOCOL_SETTINGS
@_bounded
def test_per_tensor_weights_never_crash(row, name):
    try:
        plan = _PLAN.with_tensor_weights({name: row})
    except SoupError:
        return
    given_row = plan.tensor(name).weights
    assert given_row is not None and len(given_row) == 3 and any(given_row)
    assert all(math.isfinite(w) and abs(w) <= 3.4028234663852886e38 for w in given_row)
