"""Property-based fuzzing of every untrusted input: only `SoupError` may escape, never a crash or a hang.

Targets: the safetensors header (also checked against safetensors' own loader: accepted exactly when it accepts),
the shard index JSON, config.json and recipe YAML (from files and from model cards). Every example runs under a
wall-clock limit, so a hang fails the test instead of stalling it.

`make test` runs a bounded budget (HF_SOUPS_FUZZ_EXAMPLES, default 6,000 per in-memory header target and a sixth of it
for the slower targets: the safetensors cross-check, index, config and recipe); `make fuzz` runs more.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import struct
import tempfile

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hf_soups import SoupError
from hf_soups.checkpoint import SafetensorsReader
from hf_soups.checkpoint.format import DTYPES

EXAMPLES = int(os.environ.get("HF_SOUPS_FUZZ_EXAMPLES", 6000))
_SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                     suppress_health_check=list(HealthCheck))
_FILE_SETTINGS = settings(_SETTINGS, max_examples=max(EXAMPLES // 6, 50))
#: Seconds one example may take before it counts as a hang.
EXAMPLE_TIMEOUT = float(os.environ.get("HF_SOUPS_FUZZ_TIMEOUT", 10))


class Hang(Exception):
    """Not a SoupError: an example that exceeds EXAMPLE_TIMEOUT fails the test."""


@contextlib.contextmanager
def _time_limit(seconds: float = EXAMPLE_TIMEOUT):
    def expire(signum, frame):
        raise Hang(f"the example ran longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _bounded(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with _time_limit():
            return fn(*args, **kwargs)

    return wrapper


class MemorySource:
    def __init__(self, data: bytes) -> None:
        self.data, self.size, self.name = data, len(data), "model.safetensors"

    def read(self, offset: int, length: int) -> bytes:
        return self.data[offset : offset + length]

    def readinto(self, offset: int, buffer: memoryview) -> int:
        chunk = self.data[offset : offset + len(buffer)]
        buffer[: len(chunk)] = chunk
        return len(chunk)

    def close(self) -> None:
        pass


def _exercise(data: bytes) -> None:
    with _time_limit(), contextlib.suppress(SoupError):
        reader = SafetensorsReader({"model.safetensors": MemorySource(data)}, ingredient="fuzz")
        for name in list(reader.tensors)[:8]:
            t = reader[name]
            assert t.numel() * t.element_size() == reader.tensors[name].nbytes


_dtype = st.one_of(st.sampled_from(sorted(DTYPES)), st.sampled_from(["F7", "", "f32", "I128"]), st.integers(),
                   st.none())
_dim = st.one_of(st.integers(0, 6), st.integers(-3, -1), st.integers(2**40, 2**63), st.just("3"), st.floats())
_offset = st.one_of(st.integers(0, 200), st.integers(-5, -1), st.integers(2**62, 2**64), st.text(max_size=3))
_entry = st.one_of(
    st.fixed_dictionaries({"dtype": _dtype, "shape": st.one_of(st.lists(_dim, max_size=4), st.integers()),
                           "data_offsets": st.one_of(st.lists(_offset, min_size=0, max_size=3),
                                                     st.tuples(_offset, _offset).map(list))}),
    st.integers(), st.text(max_size=5), st.none(), st.lists(st.integers(), max_size=3),
)
_header = st.dictionaries(st.text(max_size=8), _entry, max_size=6).map(
    lambda d: d if not d or "__metadata__" in d else {**d})
_metadata = st.one_of(st.none(), st.dictionaries(st.text(max_size=4), st.one_of(st.text(max_size=4), st.integers()),
                                                 max_size=2))


@_SETTINGS
@given(header=_header, metadata=_metadata, data_len=st.integers(0, 300),
       length_delta=st.one_of(st.just(0), st.integers(-20, 20), st.integers(2**30, 2**64 - 1)),
       pad=st.binary(max_size=8))
def test_structured_headers_only_raise_soup_errors(header, metadata, data_len, length_delta, pad):
    if metadata is not None:
        header = {**header, "__metadata__": metadata}
    raw = json.dumps(header).encode() + pad
    n = max(0, min(len(raw) + length_delta, 2**64 - 1))
    _exercise(struct.pack("<Q", n) + raw + bytes(data_len))


@_SETTINGS
@given(data=st.binary(max_size=512))
def test_random_bytes_only_raise_soup_errors(data):
    _exercise(data)


def _valid_file() -> bytes:
    import torch
    from safetensors.torch import save

    return save({"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(3, dtype=torch.bfloat16),
                 "c": torch.tensor([1, 2], dtype=torch.int64)}, metadata={"format": "pt"})


_VALID = _valid_file()


@_SETTINGS
@given(edits=st.lists(st.tuples(st.integers(0, len(_VALID) - 1), st.integers(0, 255)), min_size=1, max_size=6),
       cut=st.one_of(st.none(), st.integers(0, len(_VALID))))
def test_mutated_valid_files_only_raise_soup_errors(edits, cut):
    data = bytearray(_VALID)
    for pos, value in edits:
        data[pos] = value
    _exercise(bytes(data[:cut] if cut is not None else data))



# -- the header, against safetensors' own loader ----------------------------------------------------------------------
def _ours_accepts(data: bytes) -> bool:
    from hf_soups.checkpoint.format import parse_header

    try:
        parse_header(lambda o, n: data[o : o + n], len(data), "model.safetensors")
    except SoupError:
        return False
    return True


def _safetensors_accepts(data: bytes) -> bool:
    from safetensors.torch import load

    try:
        load(data)
    except Exception:
        return False
    return True


_small_dtype = st.sampled_from(sorted(DTYPES))
_strict_entry = st.fixed_dictionaries({
    "dtype": _small_dtype,
    "shape": st.lists(st.one_of(st.integers(0, 4), st.sampled_from([2**31, 2**32, 2**62, 2**63, 2**64 - 1, 2**64])),
                      max_size=3),
    "data_offsets": st.lists(st.one_of(st.integers(0, 64), st.sampled_from([2**63, 2**64 - 1, 2**64])),
                             min_size=2, max_size=2),
})


@_FILE_SETTINGS
@given(header=st.dictionaries(st.text(max_size=4), _strict_entry, max_size=4),
       metadata=st.one_of(st.none(), st.just([]), st.dictionaries(st.text(max_size=3), st.one_of(
           st.text(max_size=3), st.integers()), max_size=2)),
       data_len=st.integers(0, 80), raw_tail=st.sampled_from([b"", b"  ", b"\x00"]))
def test_headers_are_accepted_exactly_when_safetensors_accepts_them(header, metadata, data_len, raw_tail):
    if metadata is not None:
        header = {"__metadata__": metadata, **header}
    raw = json.dumps(header).encode() + raw_tail
    data = struct.pack("<Q", len(raw)) + raw + bytes(data_len)
    with _time_limit():
        assert _ours_accepts(data) == _safetensors_accepts(data), (header, data_len, raw_tail)


# -- the shard index JSON ------------------------------------------------------------------------------------------
_json = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=6)),
                     lambda inner: st.one_of(st.lists(inner, max_size=3),
                                             st.dictionaries(st.text(max_size=6), inner, max_size=3)), max_leaves=12)
_shard_name = st.one_of(st.just("model.safetensors"), st.just("model-00001-of-00002.safetensors"),
                        st.sampled_from(["../model.safetensors", "/etc/passwd", "sub/../../x", "a\\..\\b", "",
                                         "C:x", "\x00", ".", "sub"]), st.text(max_size=8))
_index = st.one_of(
    st.fixed_dictionaries({"metadata": _json, "weight_map": st.dictionaries(
        st.sampled_from(["a", "b", "c", "d"]) | st.text(max_size=4), _shard_name | _json, max_size=5)}),
    _json,
)


@functools.cache
def _checkpoint_dir() -> str:
    """A directory holding one valid shard (tensors a, b, c) and a sub-directory, reused by the file targets."""
    root = tempfile.mkdtemp(prefix="hf-soups-fuzz-")
    with open(os.path.join(root, "model.safetensors"), "wb") as f:
        f.write(_VALID)
    os.makedirs(os.path.join(root, "sub"), exist_ok=True)
    return root


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


@_FILE_SETTINGS
@given(index=_index, raw=st.one_of(st.none(), st.binary(max_size=64)))
@_bounded
def test_index_json_only_raises_soup_errors(index, raw):
    from hf_soups.checkpoint import open_checkpoint

    root = _checkpoint_dir()
    path = os.path.join(root, "model.safetensors.index.json")
    _write(path, raw if raw is not None else json.dumps(index).encode())
    try:
        with contextlib.suppress(SoupError), open_checkpoint(root, ingredient="fuzz") as reader:
            for name in list(reader.tensors)[:4]:
                reader[name]
    finally:
        os.remove(path)


# -- config.json -------------------------------------------------------------------------------------------------------
_label_key = st.one_of(st.integers(-2, 5).map(str), st.sampled_from(["x", "1.5", " 1", "1_0", "", "٣"]))
_config = st.fixed_dictionaries({}, optional={
    "model_type": st.one_of(st.just("bert"), _json),
    "architectures": st.one_of(st.just(["BertForSequenceClassification"]), st.lists(st.text(max_size=5), max_size=2),
                               _json),
    "id2label": st.one_of(st.dictionaries(_label_key, st.sampled_from(["neg", "pos", "neu"]) | _json, max_size=4),
                          _json),
    "label2id": _json,
    "num_labels": st.one_of(st.integers(-1, 4), _json),
    "auto_map": st.one_of(st.dictionaries(st.text(max_size=4), _json, max_size=2), _json),
    "torch_dtype": st.one_of(st.sampled_from(["float32", "bfloat16", "int8"]), _json),
})


@_FILE_SETTINGS
@given(first=_config, second=_config, raw=st.one_of(st.none(), st.binary(max_size=32)),
       align_labels=st.booleans(), trust=st.booleans())
@_bounded
def test_config_json_only_raises_soup_errors(first, second, raw, align_labels, trust):
    from hf_soups import check_compatibility
    from hf_soups.compat import label_permutations
    from hf_soups.checkpoint.local import local_meta
    from hf_soups.merge import build_plan

    root = _checkpoint_dir()
    dirs = []
    for k, config in enumerate((first, second)):
        d = os.path.join(root, f"ingredient-{k}")
        os.makedirs(d, exist_ok=True)
        if not os.path.exists(os.path.join(d, "model.safetensors")):
            os.symlink(os.path.join(root, "model.safetensors"), os.path.join(d, "model.safetensors"))
        _write(os.path.join(d, "config.json"), raw if (raw is not None and k == 1) else json.dumps(config).encode())
        dirs.append(d)
    with contextlib.suppress(SoupError):
        report = check_compatibility(dirs, align_labels=align_labels, trust_remote_code=trust, arch_check=False,
                                     weight_check=False)
        report.to_table()
        if report.compatible and align_labels:  # what the soup would do next must not crash either
            metas = [local_meta(d, d) for d in dirs]
            perms = label_permutations(metas)
            build_plan([m.tensors for m in metas], [1.0, 1.0], label_permutations=perms, num_labels=3)


# -- recipe YAML -------------------------------------------------------------------------------------------------------
_sha = st.sampled_from(["a" * 40, "0123456789abcdef0123456789abcdef01234567", "main", "A" * 40, "a" * 39])
_ingredient = st.one_of(st.builds(lambda r, s: f"{r}@{s}", st.sampled_from(["alice/ft", "x", "../x", "/tmp"]), _sha),
                        st.text(max_size=10), _json)
_recipe = st.fixed_dictionaries(
    {"method": st.one_of(st.sampled_from(["uniform", "weighted", "greedy", "learned", "<b>x</b>"]), _json),
     "ingredients": st.one_of(st.lists(_ingredient, max_size=3), _json),
     "weights": st.one_of(st.lists(st.one_of(st.floats(), st.integers(-2, 2), st.text(max_size=2)), max_size=3),
                          _json)},
    optional={"dtype": st.one_of(st.sampled_from(["bfloat16", "fp16", "int8", "nope"]), _json),
              "int_rule": st.one_of(st.sampled_from(["first", "max", "avg"]), _json),
              "align_labels": _json, "seed": _json, "hf_soups_version": _json,
              "evaluation": st.one_of(st.fixed_dictionaries({"dataset": st.text(max_size=5)}, optional={
                  "split": _json, "strict": _json, "metric": _json}), _json),
              "extra": _json},
)
_yaml_tokens = st.sampled_from(["&a ", "*a", "!!python/object:os.system ", "!!binary ", "- ", ": ", "{", "}", "[", "]",
                                "\n", "  ", "hf_soups_recipe:", "method: uniform", "'", '"', "? ", "|", ">", "%YAML 1.1",
                                "---", "...", "2001-12-14t21:59:43.10-05:00", "0x_", "1e999", ".nan", "<<: *a"])


@_FILE_SETTINGS
@given(recipe=_recipe, wrapped=st.booleans(), tokens=st.lists(_yaml_tokens, max_size=12), raw=st.text(max_size=60),
       mode=st.sampled_from(["structured", "tokens", "raw", "card"]))
@_bounded
def test_recipe_yaml_only_raises_soup_errors(recipe, wrapped, tokens, raw, mode):
    from huggingface_hub import ModelCard

    from hf_soups.card import recipe_from_card
    from hf_soups.recipes import Recipe
    from hf_soups.recipes.recipe import check_replayable

    if mode == "structured":
        text = yaml.safe_dump({"hf_soups_recipe": recipe} if wrapped else recipe)
    elif mode == "tokens":
        text = "".join(tokens)
    else:
        text = raw
    with contextlib.suppress(SoupError):
        if mode == "card":
            parsed = recipe_from_card(ModelCard(f"# soup\n\n```yaml\nhf_soups_recipe:\n{raw}\n```\n"))
        else:
            parsed = Recipe.from_yaml(text)
        assert Recipe.from_yaml(parsed.to_yaml()) == parsed  # a validated recipe round-trips
        check_replayable(parsed)
