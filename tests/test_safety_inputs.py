"""Reliability round 2, inputs half: every bad input ends in a `SoupError` naming the culprit and the fix (or a correct
result), before the network is touched; nothing outside the temporary area changes.

Grouped by theme: arguments, numerics, headers, labels and configs, network faults, references, recipes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import time

import pytest
import torch
from conftest import WRITE_TOKEN, publish, state_dict_of
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from hf_soups import (
    AuthenticationError,
    CorruptCheckpointError,
    HubConnectionError,
    IncompatibleIngredientsError,
    IngredientNotFoundError,
    InvalidArgumentError,
    NonFiniteTensorError,
    Recipe,
    RecipeError,
    RevisionNotFoundError,
    SoupError,
    check_compatibility,
    soup_from_hub,
)
from hf_soups import constants
from hf_soups.api import replay_recipe
from hf_soups.testing import make_tiny_bert
from hf_soups import HubAccess, MergeOptions

FAKE_TOKEN = "hf_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789"


# -- helpers ---------------------------------------------------------------------------------------------------------
def tree_hash(*roots) -> dict[str, str]:
    """sha256 of every file (and link target) under `roots`: to show that nothing outside the test's area changed."""
    out = {}
    for root in roots:
        root = os.fspath(root)
        for dirpath, dirnames, files in os.walk(root):
            for name in sorted(files + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]):
                path = os.path.join(dirpath, name)
                key = os.path.relpath(path, os.path.dirname(root))
                if os.path.islink(path):
                    out[key] = "link:" + os.readlink(path)
                else:
                    with open(path, "rb") as f:
                        out[key] = hashlib.sha256(f.read()).hexdigest()
    return out


class Guard:
    """Hash the ingredient trees and the user's files before; `check()` asserts they are unchanged after and that the
    output location holds nothing new."""

    def __init__(self, tmp_path, *roots, output=None):
        self.roots = [r for r in roots if os.path.isdir(r)]
        self.user = tmp_path / "user-files"
        self.user.mkdir(exist_ok=True)
        (self.user / ".env").write_text("SECRET=1\n")
        self.output = output
        self.before = tree_hash(*self.roots, self.user)
        self.output_before = tree_hash(output) if output is not None and os.path.isdir(output) else None

    def check(self):
        assert tree_hash(*self.roots, self.user) == self.before
        if self.output is not None:
            now = tree_hash(self.output) if os.path.isdir(self.output) else None
            assert now == self.output_before, "the output location changed"
            parent = os.path.dirname(os.fspath(self.output))
            if os.path.isdir(parent):
                assert not [p for p in os.listdir(parent) if "hf-soups-tmp" in p], "a temporary sibling was left"


def single_file_copy(src, dst, edit=None, dtype=None):
    """Copy a single-file checkpoint, optionally editing its tensors (and converting floating ones to `dtype`)."""
    shutil.copytree(src, dst)
    path = os.path.join(dst, "model.safetensors")
    state = load_file(path)
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    if edit is not None:
        edit(state)
    save_file(state, path, metadata={"format": "pt"})
    return dst


def rewrite_header(path, edit):
    """Edit the JSON header of a safetensors file in place, keeping its data bytes."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    raw = edit(header, len(data))
    raw = raw if isinstance(raw, bytes) else json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw + data)


def no_weights_downloaded(hub, cache_dir):
    files = [f for _, _, fs in os.walk(cache_dir) for f in fs if f.endswith(".safetensors")] \
        if os.path.isdir(cache_dir) else []
    return not files


@pytest.fixture(scope="module")
def hub_refs(api, family):
    return {
        "a": f"alice/si-a@{publish(api, family['a'], 'alice/si-a')}",
        "c": f"alice/si-c@{publish(api, family['c'], 'alice/si-c')}",
        "d": f"alice/si-d@{publish(api, family['d'], 'alice/si-d')}",
    }


@pytest.fixture
def fast_retries(monkeypatch):
    monkeypatch.setattr(constants, "HTTP_BACKOFF", 0.01)
    monkeypatch.setattr(constants, "HTTP_RETRIES", 3)


# -- arguments: refused before any request ----------------------------------------------------------------------------
BAD_ARGUMENTS = [
    ({"weights": [1e308, float("inf")]}, "weights"),
    ({"weights": [1.0, float("nan")]}, "weights"),
    ({"weights": [0.0, 0.0]}, "weights"),
    ({"weights": [-0.5, 1.5]}, "negative"),
    ({"weights": [1.0]}, "1 weights for 2"),
    ({"weights": ["0.5", "0.5"]}, "not a number"),
    ({"dtype": "int8"}, "dtype"),
    ({"dtype": torch.int64}, "dtype"),
    ({"dtype": "nonexistent"}, "dtype"),
    ({"max_shard_size": "abc"}, "max_shard_size"),
    ({"max_shard_size": 0}, "max_shard_size"),
    ({"int_rule": "min"}, "int_rule"),
    ({"method": "<script>"}, "unknown method"),
]


@pytest.mark.parametrize("kwargs,culprit", BAD_ARGUMENTS, ids=[f"{k}-{i}" for i, (k, _) in
                                                                 enumerate(BAD_ARGUMENTS)])
def test_bad_arguments_fail_before_any_request(hub, hub_refs, family, tmp_path, kwargs, culprit):
    from hf_soups import MergeOptions

    out = tmp_path / "soup"
    guard = Guard(tmp_path, family["a"], family["d"], output=out)
    hub.reset_counters()
    kwargs = dict(kwargs)
    merge = {k: kwargs.pop(k) for k in ("dtype", "int_rule", "max_shard_size") if k in kwargs}
    with pytest.raises(SoupError) as err:  # InvalidArgumentError; the method registry raises RecipeError
        soup_from_hub([hub_refs["a"], hub_refs["d"]], output_dir=out,
                      access=HubAccess(cache_dir=str(tmp_path / "cache")),
                      merge_options=MergeOptions(progress=False, **merge), **kwargs)
    assert isinstance(err.value, (InvalidArgumentError, RecipeError)) and isinstance(err.value, ValueError)
    assert culprit in str(err.value) and "Fix:" in str(err.value)
    assert hub.requests == [] and not hub.bytes_served  # the network was never touched
    assert not out.exists()
    guard.check()


def test_huge_weights_normalise_to_a_correct_soup(family, tmp_path):
    soup = soup_from_hub([family["a"], family["d"]], "weighted", weights=[1e308, 1e308], output_dir=tmp_path / "s",
                         merge_options=MergeOptions(progress=False))
    assert [i.weight for i in soup.ingredients] == [0.5, 0.5]
    got, a, d = state_dict_of(soup.output_dir), state_dict_of(family["a"]), state_dict_of(family["d"])
    for k in got:
        if got[k].is_floating_point():
            assert torch.allclose(got[k], torch.stack([a[k], d[k]]).mean(0), atol=1e-6)
    tiny = soup_from_hub([family["a"], family["d"]], "weighted", weights=[5e-324, 5e-324], output_dir=tmp_path / "t",
                         merge_options=MergeOptions(progress=False))
    assert [i.weight for i in tiny.ingredients] == [0.5, 0.5]


def test_dtype_aliases_are_canonical_everywhere(family, tmp_path):
    soup = soup_from_hub([family["a"], family["d"]], merge_options=MergeOptions(dtype="fp16", progress=False),
                         output_dir=tmp_path / "s")
    assert soup.recipe.dtype == "float16"
    config = json.load(open(os.path.join(soup.output_dir, "config.json")))
    assert config.get("torch_dtype", config.get("dtype")) == "float16"
    assert all(t.dtype == torch.float16 for t in state_dict_of(soup.output_dir).values() if t.is_floating_point())


def test_cli_bad_shard_size_is_a_usage_error_before_downloads(hub, hub_refs, tmp_path):
    from hf_soups.cli.main import main

    hub.reset_counters()
    code = main(["soup", hub_refs["a"], hub_refs["d"], "--output", str(tmp_path / "o"), "--max-shard-size", "abc"])
    assert code == 2 and hub.requests == []


# -- numerics: what is written is finite and right ------------------------------------------------------------------
NAME = "bert.encoder.layer.0.attention.self.query.weight"


def test_fp16_output_overflow_names_the_tensor(family, tmp_path):
    big = single_file_copy(family["d"], tmp_path / "big", edit=lambda s: s[NAME].fill_(3e5))
    out = tmp_path / "soup"
    guard = Guard(tmp_path, family["d"], big, output=out)
    with pytest.raises(NonFiniteTensorError) as err:
        soup_from_hub([family["d"], big], merge_options=MergeOptions(dtype=torch.float16, progress=False),
                      output_dir=out)
    text = str(err.value)
    assert NAME in text and "float16" in text and "dtype=torch.float32" in text and "diverged" not in text
    guard.check()


def test_float8_output_overflow_is_refused_not_saturated(family, tmp_path):
    big = single_file_copy(family["d"], tmp_path / "big", edit=lambda s: s[NAME].fill_(1000.0))
    big2 = single_file_copy(family["d"], tmp_path / "big2", edit=lambda s: s[NAME].fill_(1000.0))
    with pytest.raises(NonFiniteTensorError, match="float8_e4m3fn") as err:  # two copies: one twice is refused
        soup_from_hub([big, big2], merge_options=MergeOptions(dtype="float8_e4m3fn", progress=False),
                      output_dir=tmp_path / "soup")
    assert err.value.tensor == NAME


def test_sum_then_divide_overflow_is_not_an_error(family, tmp_path):
    a = single_file_copy(family["d"], tmp_path / "a", edit=lambda s: s[NAME].fill_(3e38))
    b = single_file_copy(family["d"], tmp_path / "b", edit=lambda s: s[NAME].fill_(2e38))
    soup = soup_from_hub([a, b], output_dir=tmp_path / "soup", merge_options=MergeOptions(progress=False))
    got = state_dict_of(soup.output_dir)[NAME]
    assert torch.isfinite(got).all()
    assert torch.equal(got, torch.full_like(got, 2.5e38))


def test_fp64_values_of_1e300_are_averaged_not_blamed_on_training(family, tmp_path):
    a = single_file_copy(family["d"], tmp_path / "a", dtype=torch.float64, edit=lambda s: s[NAME].fill_(1e300))
    b = single_file_copy(family["d"], tmp_path / "b", dtype=torch.float64, edit=lambda s: s[NAME].fill_(3e300))
    soup = soup_from_hub([a, b], output_dir=tmp_path / "soup", merge_options=MergeOptions(progress=False,
                         arch_check=False))
    got = state_dict_of(soup.output_dir)[NAME]
    assert got.dtype == torch.float64 and torch.allclose(got, torch.full_like(got, 2e300), rtol=1e-12)
    with pytest.raises(NonFiniteTensorError) as err:
        soup_from_hub([a, b], merge_options=MergeOptions(dtype="float32", progress=False, arch_check=False),
                      output_dir=tmp_path / "f32")
    assert "diverged" not in str(err.value) and "float32" in str(err.value) and err.value.tensor == NAME


@pytest.mark.parametrize("dtype", ["float8_e4m3fn", "float8_e5m2"])
def test_float8_ingredients_average_in_fp32(family, tmp_path, dtype):
    f8 = getattr(torch, dtype)
    a = single_file_copy(family["d"], tmp_path / "a", dtype=f8)
    b = single_file_copy(family["b"], tmp_path / "b", dtype=f8)
    soup = soup_from_hub([a, b], output_dir=tmp_path / "soup", merge_options=MergeOptions(progress=False))
    got, sa, sb = (state_dict_of(soup.output_dir), load_file(f"{a}/model.safetensors"),
                   load_file(f"{b}/model.safetensors"))
    for k, v in got.items():
        if sa[k].dtype == f8:
            assert v.dtype == f8
            truth = torch.stack([sa[k].float(), sb[k].float()]).mean(0).to(f8)
            assert torch.equal(v.float(), truth.float()), k  # (signed zeros aside, bit-identical)


@pytest.mark.parametrize("bits", [8, 16, 32, 64])
def test_unsigned_buffers_with_int_rule_max(family, tmp_path, bits):
    dtype = getattr(torch, f"uint{bits}")
    first, second = [1, 2**bits - 1, 0, 7], [3, 0, 5, 7]

    def as_tensor(values):  # through int64 bit patterns, as torch cannot build uint64 above 2**63 directly
        return torch.tensor([v - 2**64 if v >= 2**63 else v for v in values], dtype=torch.int64).to(dtype) \
            if bits < 64 else torch.tensor([v - 2**64 if v >= 2**63 else v for v in values]).view(torch.uint64)

    a = single_file_copy(family["d"], tmp_path / "a", edit=lambda s: s.__setitem__("counter", as_tensor(first)))
    b = single_file_copy(family["d"], tmp_path / "b", edit=lambda s: s.__setitem__("counter", as_tensor(second)))
    soup = soup_from_hub([a, b], merge_options=MergeOptions(int_rule="max", arch_check=False, progress=False),
                         output_dir=tmp_path / "soup")
    got = state_dict_of(soup.output_dir)["counter"]
    assert got.dtype == dtype
    values = got.view(torch.int64).tolist() if bits == 64 else got.to(torch.int64).tolist()
    assert [v % 2**64 for v in values] == [max(x, y) for x, y in zip(first, second)]


# -- headers: as strict as safetensors' loader, on disk and on the Hub ----------------------------------------------
def _add_entry(entry):
    def edit(header, data_len):
        header["evil"] = entry(data_len)
    return edit


CORRUPT_HEADERS = {
    "shape-overflow": (_add_entry(lambda n: {"dtype": "F32", "shape": [2**70, 0], "data_offsets": [n, n]}), "evil"),
    "shape-product-overflow": (_add_entry(lambda n: {"dtype": "F32", "shape": [2**40, 2**40, 0],
                                                     "data_offsets": [n, n]}), "evil"),
    "metadata-list": (lambda h, n: h.__setitem__("__metadata__", []), "__metadata__"),
    "metadata-int": (lambda h, n: h.__setitem__("__metadata__", {"format": 1}), "__metadata__"),
    "overlap": (_add_entry(lambda n: {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}), "overlap"),
    "past-eof": (_add_entry(lambda n: {"dtype": "F32", "shape": [1], "data_offsets": [n, n + 4]}), "past the end"),
    "nan-literal": (lambda h, n: json.dumps(h).replace('"format"', '"x": NaN, "format"', 1).encode(), "JSON"),
}


@pytest.mark.parametrize("case", sorted(CORRUPT_HEADERS))
def test_corrupt_headers_are_refused_like_safetensors_does(family, tmp_path, case):
    edit, culprit = CORRUPT_HEADERS[case]
    bad = single_file_copy(family["d"], tmp_path / "bad")
    rewrite_header(bad / "model.safetensors", edit)
    with pytest.raises(Exception):  # independent truth: safetensors' own loader refuses the file too
        with safe_open(str(bad / "model.safetensors"), "pt") as f:
            for k in f.keys():
                f.get_tensor(k)
    out = tmp_path / "soup"
    guard = Guard(tmp_path, family["d"], bad, output=out)
    with pytest.raises(CorruptCheckpointError) as err:
        soup_from_hub([family["d"], bad], output_dir=out, merge_options=MergeOptions(progress=False))
    assert culprit in str(err.value) and err.value.file == "model.safetensors" and err.value.ingredient == str(bad)
    with pytest.raises(CorruptCheckpointError):
        check_compatibility([family["d"], bad])
    guard.check()


def test_header_cap_is_safetensors_constant(family, tmp_path):
    assert constants.MAX_HEADER_SIZE == 100_000_000
    bad = single_file_copy(family["d"], tmp_path / "bad")
    with open(bad / "model.safetensors", "r+b") as f:
        f.write(struct.pack("<Q", 100_000_001))
    with pytest.raises(CorruptCheckpointError, match="100000000-byte limit"):
        check_compatibility([family["d"], bad])


@pytest.mark.parametrize("case", ["overlap", "past-eof", "shape-overflow"])
def test_hub_headers_get_the_same_validation_before_downloads(api, hub, family, tmp_path, case):
    edit, culprit = CORRUPT_HEADERS[case]
    bad = single_file_copy(family["d"], tmp_path / "bad")
    rewrite_header(bad / "model.safetensors", edit)
    good = f"alice/si-good@{publish(api, family['d'], 'alice/si-good')}"
    evil = f"alice/si-{case}@{publish(api, bad, f'alice/si-{case}')}"
    cache = str(tmp_path / "cache")
    with pytest.raises(CorruptCheckpointError) as err:
        check_compatibility([good, evil], cache_dir=cache)
    assert culprit in str(err.value) and err.value.file == "model.safetensors" and "si-" + case in str(err.value)
    out = tmp_path / "soup"
    with pytest.raises(CorruptCheckpointError):
        soup_from_hub([good, evil], merge_options=MergeOptions(progress=False), access=HubAccess(cache_dir=cache),
                      output_dir=out)
    assert not out.exists() and no_weights_downloaded(hub, cache)


def test_output_headers_load_with_safetensors(tmp_path):
    from hf_soups.checkpoint.writer import ShardedSafetensorsWriter

    entries = [("ünï.çødé", torch.float32, (2, 3)), ("empty", torch.bfloat16, (0, 4)), ("scalar", torch.float16, ()),
               ("i", torch.int64, (3,))]
    values = {"ünï.çødé": torch.arange(6.0).reshape(2, 3), "empty": torch.zeros(0, 4, dtype=torch.bfloat16),
              "scalar": torch.tensor(1.5, dtype=torch.float16), "i": torch.tensor([1, 2, 3])}
    writer = ShardedSafetensorsWriter(str(tmp_path), entries, max_shard_size=24, metadata={"k": "v"})
    for name in writer.order:
        writer.write(name, values[name])
    files = writer.close()
    got = {}
    for file in files:
        if file.endswith(".safetensors"):
            with safe_open(str(tmp_path / file), "pt") as f:
                assert f.metadata()["format"] == "pt"
                got.update({k: f.get_tensor(k) for k in f.keys()})
    assert got.keys() == values.keys() and all(torch.equal(got[k], values[k]) for k in got)
    from hf_soups.checkpoint.format import build_header

    with pytest.raises(SoupError, match="__metadata__"):  # what safetensors would refuse is never written
        build_header([("a", "F32", (1,))], {"k": 1})  # type: ignore[dict-item]


# -- labels and configs: the verdict predicts the soup ----------------------------------------------------------------
def _edit_config(src, dst, **changes):
    shutil.copytree(src, dst)
    path = os.path.join(dst, "config.json")
    config = json.load(open(path))
    config.update(changes)
    json.dump(config, open(path, "w"))
    return dst


def test_non_contiguous_id2label_with_align_labels_is_a_clear_problem(family, tmp_path):
    a = _edit_config(family["d"], tmp_path / "a", id2label={"0": "neg", "2": "neu", "5": "pos"})
    b = _edit_config(family["a"], tmp_path / "b", id2label={"0": "pos", "2": "neu", "5": "neg"})
    report = check_compatibility([a, b], align_labels=True)
    assert not report.compatible and any(p.field == "id2label" and "0..2" in p.message for p in report.problems)
    out = tmp_path / "soup"
    guard = Guard(tmp_path, a, b, output=out)
    with pytest.raises(IncompatibleIngredientsError, match="id2label"):
        soup_from_hub([a, b], merge_options=MergeOptions(align_labels=True, progress=False), output_dir=out)
    guard.check()


def test_contiguous_permuted_labels_are_aligned_correctly(family, tmp_path):
    a = _edit_config(family["d"], tmp_path / "a", id2label={"0": "neg", "1": "neu", "2": "pos"})
    b = _edit_config(family["a"], tmp_path / "b", id2label={"0": "pos", "1": "neg", "2": "neu"})
    soup = soup_from_hub([a, b], merge_options=MergeOptions(align_labels=True, progress=False),
                         output_dir=tmp_path / "soup")
    got, sa, sb = state_dict_of(soup.output_dir), state_dict_of(a), state_dict_of(b)
    w = "classifier.weight"
    assert torch.allclose(got[w], (sa[w] + sb[w][[1, 2, 0]]) / 2, atol=1e-6)


def test_non_integer_id2label_keys_do_not_invent_num_labels(family, tmp_path):
    config = json.load(open(os.path.join(family["d"], "config.json")))
    changes = {"id2label": {"neg": "0", "pos": "1", "neu": "2"}}
    config.pop("num_labels", None)
    a = _edit_config(family["d"], tmp_path / "a", **changes)
    report = check_compatibility([a, family["d"]], arch_check=False)
    assert not report.compatible
    problem = next(p for p in report.problems if p.field == "id2label")
    assert problem.ingredient == str(a) and "integer" in problem.message
    assert not any(p.field == "num_labels" and "2 differs" in p.message for p in report.problems)


def test_auto_map_makes_the_verdict_negative_unless_trusted(family, tmp_path):
    evil = _edit_config(family["d"], tmp_path / "evil", auto_map={"AutoModel": "modeling_evil.Evil"})
    report = check_compatibility([family["a"], evil])
    assert not report.compatible and any(p.field == "auto_map" and p.ingredient == str(evil) for p in report.problems)
    assert check_compatibility([family["a"], evil], trust_remote_code=True).compatible


# -- network faults at the Hub boundary -------------------------------------------------------------------------------
@pytest.mark.parametrize("fault", ["fail_ranges", "drop_ranges", "stall_ranges"])
def test_streamed_range_reads_are_retried(hub, hub_refs, tmp_path, fast_retries, monkeypatch, fault):
    refs = [hub_refs["a"], hub_refs["d"]]
    reference = state_dict_of(soup_from_hub(refs, merge_options=MergeOptions(stream=True, progress=False),
                              access=HubAccess(cache_dir=str(tmp_path / "c0")), output_dir=tmp_path / "ref").output_dir)
    if fault == "stall_ranges":
        monkeypatch.setattr(constants, "HTTP_TIMEOUT", 0.5)
        hub.stall_seconds = 2.0
    setattr(hub, fault, 2)
    try:
        soup = soup_from_hub(refs, merge_options=MergeOptions(stream=True, progress=False),
                             access=HubAccess(cache_dir=str(tmp_path / "c1")), output_dir=tmp_path / "soup")
    finally:
        setattr(hub, fault, 0)
    got = state_dict_of(soup.output_dir)
    assert got.keys() == reference.keys() and all(torch.equal(got[k], reference[k]) for k in got)


def test_exhausted_retries_raise_a_typed_error_naming_ingredient_and_file(hub, hub_refs, tmp_path, fast_retries):
    out = tmp_path / "soup"
    hub.fail_ranges = 10**6
    try:
        with pytest.raises(HubConnectionError) as err:
            soup_from_hub([hub_refs["a"], hub_refs["d"]], merge_options=MergeOptions(stream=True, progress=False),
                          access=HubAccess(cache_dir=str(tmp_path / "c")), output_dir=out)
    finally:
        hub.fail_ranges = 0
    assert isinstance(err.value, ConnectionError)
    assert "alice/si-a@" in str(err.value) and ".safetensors" in str(err.value) and "4 tries" in str(err.value)
    assert not out.exists()


def test_preflight_header_reads_retry_then_fail_typed(hub, hub_refs, tmp_path, fast_retries):
    hub.drop_ranges = 2
    try:
        assert check_compatibility([hub_refs["a"], hub_refs["d"]], cache_dir=str(tmp_path / "c0")).compatible
    finally:
        hub.drop_ranges = 0
    hub.fail_ranges = 10**6
    try:
        with pytest.raises(HubConnectionError) as err:
            check_compatibility([hub_refs["a"], hub_refs["d"]], cache_dir=str(tmp_path / "c1"))
    finally:
        hub.fail_ranges = 0
    assert err.value.ingredient.startswith("alice/si-a@") and err.value.file.endswith(".safetensors")


def test_unreachable_hub_is_a_typed_error(tmp_path):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there
    with pytest.raises(HubConnectionError) as err:
        check_compatibility(["alice/x", "alice/y"], endpoint=f"http://127.0.0.1:{port}", cache_dir=str(tmp_path))
    assert err.value.ingredient == "alice/x"


# -- references -------------------------------------------------------------------------------------------------------
def test_unknown_route_is_not_reported_as_authentication(hub, hub_refs, tmp_path):
    with pytest.raises(IngredientNotFoundError) as err:
        check_compatibility(["alice/si-a", "alice/si-d"], endpoint=f"{hub.url}/not-a-hub",
                            cache_dir=str(tmp_path))
    assert not isinstance(err.value, AuthenticationError)
    assert "private" not in str(err.value) and "HF_ENDPOINT" in str(err.value)


def test_unpinned_refs_resolve_main(hub, hub_refs, tmp_path):
    hub.reset_counters()
    report = check_compatibility(["alice/si-a", "alice/si-d"], cache_dir=str(tmp_path))
    assert report.compatible
    info_calls = [p for m, p, _ in hub.requests if p.startswith("/api/models/alice/si-a/revision/")]
    assert info_calls and all(p.startswith("/api/models/alice/si-a/revision/main") for p in info_calls)


@pytest.mark.parametrize("how", ["at", "keyword"])
def test_token_passed_as_revision_is_never_echoed(hub, hub_refs, tmp_path, caplog, how):
    refs = [f"alice/si-a@{FAKE_TOKEN}", hub_refs["d"]] if how == "at" else ["alice/si-a", "alice/si-d"]
    revision = None if how == "at" else FAKE_TOKEN
    with pytest.raises(RevisionNotFoundError) as err:
        soup_from_hub(refs, revision=revision, output_dir=tmp_path / "s", merge_options=MergeOptions(progress=False),
                      access=HubAccess(cache_dir=str(tmp_path / "cache")))
    assert FAKE_TOKEN not in str(err.value) and "hf_***" in str(err.value)
    assert FAKE_TOKEN[3:] not in caplog.text


# -- recipes: untrusted input ----------------------------------------------------------------------------------------
BOMB = """a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
hf_soups_recipe: {method: uniform, ingredients: *i, weights: [1]}
"""


def test_yaml_alias_bomb_is_refused_fast(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    assert len(BOMB.encode()) < 700
    start = time.perf_counter()
    with pytest.raises(RecipeError, match="aliases"):
        Recipe.load(path)
    assert time.perf_counter() - start < 1.0
    with pytest.raises(RecipeError, match="larger than"):
        Recipe.from_yaml("x: " + "y" * 70_000)


RECIPE_FIELDS = [
    ({"method": "<img src=x onerror=alert(1)>"}, "method"),
    ({"method": ["uniform"]}, "method"),
    ({"weights": [1.0, float("nan")]}, "weights"),
    ({"weights": [1.0]}, "weights"),
    ({"dtype": "int8"}, "dtype"),
    ({"int_rule": "avg"}, "int_rule"),
    ({"align_labels": "yes"}, "align_labels"),
    ({"seed": -1}, "seed"),
    ({"ingredients": "alice/x"}, "ingredients"),
    ({"evaluation": {"dataset": "x", "shell": "rm -rf /"}}, "evaluation"),
    ({"extra": 1}, "extra"),
]


@pytest.mark.parametrize("change,culprit", RECIPE_FIELDS, ids=[c for _, c in RECIPE_FIELDS])
def test_every_recipe_field_is_validated(change, culprit):
    data = {"method": "weighted", "ingredients": [f"alice/x@{'a' * 40}", f"alice/y@{'b' * 40}"],
            "weights": [0.5, 0.5], **change}
    with pytest.raises(RecipeError) as err:
        Recipe.from_dict({"hf_soups_recipe": data})
    assert culprit in str(err.value)


def test_recipe_with_local_or_unpinned_ingredients_is_refused_before_the_network(hub, hub_refs, family, tmp_path):
    out = tmp_path / "soup"
    guard = Guard(tmp_path, family["a"], family["d"], output=out)
    for ingredients in ([hub_refs["a"], family["d"]], [hub_refs["a"], "alice/si-d"], [hub_refs["a"],
                        "alice/si-d@main"]):
        recipe = Recipe(method="weighted", ingredients=tuple(ingredients), weights=(0.0, 1.0))
        hub.reset_counters()
        with pytest.raises(RecipeError) as err:
            replay_recipe(recipe, output_dir=out, progress=False)
        assert ingredients[1] in str(err.value) and "allow_local" in str(err.value)
        assert hub.requests == []
    guard.check()
    local = Recipe(method="weighted", ingredients=(family["a"], family["d"]), weights=(0.5, 0.5))
    soup = replay_recipe(local, output_dir=out, progress=False, allow_local=True)
    assert os.path.isfile(os.path.join(soup.output_dir, "model.safetensors"))


def test_crafted_card_recipe_cannot_publish_a_local_finetune(api, hub, hub_refs, family, tmp_path):
    from hf_soups.cli.main import main

    text = Recipe(method="weighted", ingredients=(hub_refs["a"], family["d"]), weights=(0.0, 1.0)).to_yaml()
    card = f"---\nlicense: mit\n---\n# soup\n\n```yaml\n{text}```\n"
    (tmp_path / "card").mkdir()
    (tmp_path / "card" / "README.md").write_text(card)
    api.create_repo("alice/si-crafted", exist_ok=True)
    api.upload_folder(folder_path=str(tmp_path / "card"), repo_id="alice/si-crafted")
    out = tmp_path / "out"
    guard = Guard(tmp_path, family["d"], output=out)
    code = main(["recipe", "alice/si-crafted", "--output", str(out), "--push-to", "alice/si-leak",
                 "--token", WRITE_TOKEN])
    assert code == 10 and not out.exists()
    assert ("model", "alice/si-leak") not in hub.repos  # nothing was published
    guard.check()


def test_invalid_method_is_never_rendered_into_a_card(family, tmp_path):
    from hf_soups.card import build_card

    soup = soup_from_hub([family["a"], family["d"]], output_dir=tmp_path / "s",
                         merge_options=MergeOptions(progress=False))
    with pytest.raises(RecipeError, match="unknown method"):
        build_card(method="<script>alert(1)</script>", ingredients=soup.ingredients, config={}, recipe=soup.recipe)


@pytest.mark.parametrize("front", ["method: !!python/object/apply:os.system ['echo PWNED']", "date: 2001-13-45"])
def test_load_recipe_reads_the_card_from_the_given_endpoint_and_refuses_crafted_yaml(hub, api, monkeypatch, front):
    import huggingface_hub.constants

    from hf_soups.api import load_recipe

    repo = f"alice/crafted-card-{hashlib.sha1(front.encode()).hexdigest()[:8]}"
    api.create_repo(repo, exist_ok=True)
    api.upload_file(path_or_fileobj=f"---\n{front}\n---\n# soup\n".encode(), path_in_repo="README.md", repo_id=repo)
    plain = f"plain-card-{hashlib.sha1(front.encode()).hexdigest()[:8]}"
    api.create_repo(f"alice/{plain}", exist_ok=True)
    api.upload_file(path_or_fileobj=b"# no recipe\n", path_in_repo="README.md", repo_id=f"alice/{plain}")
    dead = "http://127.0.0.1:9"  # the default endpoint is elsewhere: only `endpoint=` reaches the loopback Hub
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", dead)
    monkeypatch.setattr(huggingface_hub.constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        dead + "/{repo_id}/resolve/{revision}/{filename}")
    with pytest.raises(RecipeError, match="holds no hf_soups recipe"):  # read from `endpoint`, not the default
        load_recipe(f"alice/{plain}", endpoint=hub.url)
    with pytest.raises(RecipeError) as err:  # a raw yaml error never escapes
        load_recipe(repo, endpoint=hub.url)
    assert repo in str(err.value) and "Fix:" in str(err.value)


@pytest.mark.parametrize("front", ["x: !!python/object/apply:os.system ['true']", "date: 2024-13-45"])
def test_load_recipe_refuses_crafted_yaml_in_a_local_card_or_soup_directory(tmp_path, front):
    from hf_soups.api import load_recipe

    card = tmp_path / "card.md"
    card.write_text(f"---\n{front}\n---\n# soup\n")
    soup_dir = tmp_path / "soup"
    soup_dir.mkdir()
    (soup_dir / "README.md").write_text(card.read_text())
    for source in (card, soup_dir):
        with pytest.raises(RecipeError) as err:  # a raw yaml error never escapes
            load_recipe(source)
        assert str(source) in str(err.value) and "Fix:" in str(err.value)
