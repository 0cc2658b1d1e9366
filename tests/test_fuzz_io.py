"""Fuzz targets "sizes" and "layouts" (issue #23): any `max_shard_size` value, and any repo listing.

- The size parser returns a positive int or raises `InvalidArgumentError` (never another exception), and agrees with
  an independent reading of huggingface_hub's convention (decimal GB = 10**9, binary GiB = 2**30).
- The layouts choose, for any listing, exactly the files the pre-layout download rule chose, and never a file that a
  Trainer checkpoint's training state names.

Budget: HF_SOUPS_FUZZ_EXAMPLES (as tests/test_fuzz.py) divided by 60 examples per target, at least 30; every example
runs under HF_SOUPS_FUZZ_TIMEOUT seconds.
"""

from __future__ import annotations

import os
from decimal import Decimal, InvalidOperation

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_fuzz import _time_limit
from test_io_folds import _NAMES, _old_needed_patterns

from hf_soups.errors import InvalidArgumentError

EXAMPLES = int(os.environ.get("HF_SOUPS_FUZZ_EXAMPLES", 6000))
_SETTINGS = settings(max_examples=max(EXAMPLES // 60, 30), deadline=None, derandomize=True, database=None,
                     suppress_health_check=list(HealthCheck))
_UNITS = {"": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def _expected(text: str) -> int | None:
    """An independent reading: number (digits, optional fraction) + optional unit, spaces around; None: refused."""
    body = text.strip().lower()
    unit = next((u for u in sorted(_UNITS, key=len, reverse=True) if u and body.endswith(u)), "")
    number = body[: len(body) - len(unit)].strip()
    if not number or not all(c.isdigit() or c == "." for c in number) or number.count(".") > 1 or number == ".":
        return None
    try:
        value = Decimal(number) * _UNITS[unit]
    except InvalidOperation:
        return None
    return int(value) if value >= 1 else None


_sizes = st.one_of(
    st.integers(min_value=-10, max_value=10**15),
    st.builds(lambda n, u, sp: f"{n}{sp}{u}", st.one_of(st.integers(0, 10**6).map(str),
                                                         st.decimals(0, 10**4, places=3).map(str)),
              st.sampled_from([*_UNITS, "B", "iB", "KB", "GiB", "Gb", "XB", "g"]), st.sampled_from(["", " "])),
    st.text(alphabet="0123456789.-+eEkKmMgGtTiIbB ", max_size=12),
    st.sampled_from([True, False, None, 1.5, b"5GB", [5]]),
)


@_SETTINGS
@given(_sizes)
def test_fuzz_parse_size(size):
    from hf_soups.validation import parse_size

    with _time_limit():
        try:
            value = parse_size(size)
        except InvalidArgumentError:
            value = None
    if isinstance(size, bool) or not isinstance(size, (int, str)):
        assert value is None
    elif isinstance(size, int):
        assert value == (size if size > 0 else None)
    else:
        expected = _expected(size)
        if value is None or expected is None:
            assert value == expected, size
        else:  # the parser goes through float, as huggingface_hub's does: equal up to float rounding
            assert abs(value - expected) <= max(1, expected * 1e-12), (size, value, expected)


@_SETTINGS
@given(st.lists(st.sampled_from([*_NAMES, "a/b.safetensors", "model-00002-of-00002.safetensors", "x.bin",
                                 "pytorch_model-00002-of-00002.bin", "tokenizer_config.json", "scheduler.pt"]),
                max_size=20, unique=True), st.booleans(), st.booleans())
def test_fuzz_layout_download_sets(files, weights, allow_pickle):
    from hf_soups.checkpoint.layout import download_patterns

    with _time_limit():
        chosen = download_patterns(files, weights=weights, allow_pickle=allow_pickle)
    assert chosen == _old_needed_patterns(files, weights=weights, allow_pickle=allow_pickle)
    assert not {"optimizer.pt", "scheduler.pt", "training_args.bin", "trainer_state.json"} & set(chosen)
