"""Property-based fuzzing of label columns (issue 24): arbitrary label values through the label validation.

Only `SoupError` may escape, never a crash or a hang; a value that is accepted maps to exactly one valid id: the
id itself (an int, or a float that is exactly that int), or the id of its label name. Nothing is truncated.

Same budget variable and per-example time limit as `tests/test_fuzz.py` (HF_SOUPS_FUZZ_EXAMPLES, here a twentieth of
it per target: label columns are slower than in-memory headers; HF_SOUPS_FUZZ_TIMEOUT per example).
"""

from __future__ import annotations

import math
import numbers

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from test_fuzz import _SETTINGS, EXAMPLES, _bounded

from hf_soups import SoupError
from hf_soups.evaluation.data import as_eval_dataset, check_labels

ID2LABEL = {0: "neg", 1: "pos", 2: "neu"}
_LABEL_SETTINGS = settings(_SETTINGS, max_examples=max(EXAMPLES // 20, 100))

_scalars = st.one_of(
    st.integers(min_value=-5, max_value=5), st.integers(), st.booleans(), st.none(),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, 1.0, 2.0, 2.9, 0.5, -0.4, -0.0, 1e300]),
    st.text(max_size=8), st.sampled_from(["neg", "POS", "Neu", "", " neg", "LABEL_0", "1"]), st.binary(max_size=4),
    st.integers(min_value=-3, max_value=5).map(np.int64), st.floats(width=32).map(np.float32),
    st.booleans().map(np.bool_),
)
_values = st.recursive(_scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                         st.dictionaries(st.text(max_size=3), inner, max_size=2)),
                       max_leaves=6)


class _Rows(dict):
    """A dataset stand-in that keeps every Python value as it is (Arrow would coerce or refuse mixed columns)."""

    features: dict = {}


def _expected(value):
    """The one id `value` may be accepted as, or None when it must be refused."""
    if isinstance(value, str):
        return {n: i for i, n in ID2LABEL.items()}.get(value.lower())
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real) and math.isfinite(float(value)) and float(value).is_integer():
        return int(float(value))
    return None


@_LABEL_SETTINGS
@given(st.lists(_values, min_size=1, max_size=6))
@_bounded
def test_arbitrary_label_values_map_to_exactly_one_valid_id_or_raise_a_soup_error(values):
    try:
        ids = check_labels(_Rows(label=values), "label", ID2LABEL, "m")
    except SoupError:
        expected = [_expected(v) for v in values]
        assert any(e is None or not 0 <= e < 3 for e in expected), f"{values} was refused"
        return
    assert len(ids) == len(values)
    for value, got in zip(values, ids):
        assert 0 <= got < 3 and got == _expected(value), f"{value!r} was accepted as {got}"


@_LABEL_SETTINGS
@given(st.lists(_values, min_size=1, max_size=5))
@_bounded
def test_arbitrary_label_columns_through_a_real_dataset_raise_only_soup_errors(values):
    try:
        ds = as_eval_dataset({"text": ["x"] * len(values), "label": values})
        ids = check_labels(ds, "label", ID2LABEL, "m")
    except SoupError:
        return
    stored = list(ds["label"])
    assert [_expected(v) for v in stored] == ids and all(0 <= i < 3 for i in ids)
