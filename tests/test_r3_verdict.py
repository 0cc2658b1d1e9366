"""Issue 24, items 3, 11 and 12: nothing read from the architecture cache loosens the verdict; a mixed-dtype soup's
config.json names the dtype written; a tensor-name mismatch blames the odd one out."""

from __future__ import annotations

import json
import logging
import os
import shutil

import pytest
from safetensors.torch import load_file, save_file

from hf_soups import check_compatibility
from hf_soups import architecture
from hf_soups.testing import make_tiny_bert, perturb_checkpoint


@pytest.fixture(autouse=True)
def _private_key_home(tmp_path, monkeypatch):
    """Each test has its own per-user key folder (the key is read once per path and process)."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("HF_SOUPS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HF_SOUPS_ARCH_CACHE", raising=False)


@pytest.fixture(scope="module")
def renamed_pair(tmp_path_factory):
    """Two fine-tunes whose classifier weight was renamed: from_pretrained would initialise it randomly."""
    root = tmp_path_factory.mktemp("renamed")
    base = make_tiny_bert(root / "base", seed=0)
    pair = [perturb_checkpoint(base, root / f"ft{i}", seed=i) for i in (1, 2)]
    for d in pair:
        t = load_file(os.path.join(d, "model.safetensors"))
        t["classifier.kernel"] = t.pop("classifier.weight")
        save_file(t, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
    return pair


def _config(directory):
    with open(os.path.join(directory, "config.json")) as f:
        return json.load(f)


def _refused(report) -> bool:
    text = " ".join(p.message for p in report.problems if p.field == "architecture")
    return not report.compatible and "'classifier.kernel'" in text


def _valid_entry(path):
    """The entry on disk checks out under this user's key (it was rebuilt and rewritten)."""
    return architecture._read_cache(path)[0]


def _sign(entry, path, secret=None):
    return {**entry, "mac": architecture._mac(secret or architecture._secret(), path, entry)}


def _plant(path, text, mode=0o600):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)


PERMISSIVE = {"ignore_unexpected": [".*"], "ignore_missing": [".*"]}


def _planted_variants(path, honest):
    """name -> the text an attacker (or a broken disk) leaves at the entry's path, and its mode."""
    loose = {**honest, **PERMISSIVE}
    other_user = architecture._mac(b"\x01" * 32, path, loose)
    return {
        "ignore_everything_unsigned": (json.dumps(loose), 0o600),
        "unknown_class_unsigned": (json.dumps({"format": 1, "unknown_class": "FooForBar"}), 0o600),
        "bad_regex_unsigned": (json.dumps({**honest, "ignore_unexpected": ["("]}), 0o600),
        "bad_regex_signed": (json.dumps(_sign({**honest, "ignore_unexpected": ["("]}, path)), 0o600),
        "wrong_types_signed": (json.dumps(_sign({**honest, "has_position_ids": "false",
                                                 "shapes": {"classifier.weight": ["3", "32"]}}, path)), 0o600),
        "ignore_list_is_a_string_signed": (json.dumps(_sign({**honest, "ignore_unexpected": ".*"}, path)), 0o600),
        "another_users_cache": (json.dumps({**loose, "mac": other_user}), 0o600),
        "entry_of_another_key": (json.dumps(_sign(loose, path + ".other")), 0o600),
        "truncated": (json.dumps(_sign(loose, path))[:-40], 0o600),
        "signed_but_group_writable": (json.dumps(_sign(loose, path)), 0o664),
        "a_list_not_an_object": ("[1, 2]", 0o600),
    }


def test_a_planted_cache_entry_never_makes_a_refused_set_pass(renamed_pair, tmp_path):
    """Every kind of planted or broken entry is a miss: the set stays refused, nothing raises, the entry is rebuilt."""
    a, b = renamed_pair
    assert _refused(check_compatibility([a, b]))  # a fresh cache: refused, and the honest entry written
    path = architecture._cache_path(_config(a))
    with open(path) as f:
        honest = json.load(f)
    honest.pop("mac")
    variants = _planted_variants(path, honest)
    for name, (text, mode) in variants.items():
        _plant(path, text, mode)
        report = check_compatibility([a, b])
        assert _refused(report), name
        assert _valid_entry(path) and os.stat(path).st_mode & 0o077 == 0, name  # rebuilt and replaced
        with open(path) as f:
            assert json.load(f)["ignore_unexpected"] == honest["ignore_unexpected"], name


def test_the_check_is_what_decides_a_correctly_signed_private_entry_is_used(renamed_pair):
    """The control of the test above: the same permissive entry, signed with this user's key and private, is read
    back (so the refusals above come from the checks, not from the cache being ignored)."""
    a, b = renamed_pair
    check_compatibility([a, b])
    path = architecture._cache_path(_config(a))
    with open(path) as f:
        honest = json.load(f)
    honest.pop("mac")
    _plant(path, json.dumps(_sign({**honest, **PERMISSIVE}, path)))
    assert check_compatibility([a, b]).compatible


@pytest.mark.parametrize("fault", ["key_readable_by_others", "key_folder_writable_by_others", "key_is_a_link",
                                   "key_not_hex"])
def test_an_untrustworthy_key_turns_the_cache_off_and_the_verdict_is_built(renamed_pair, tmp_path, fault, caplog):
    a, b = renamed_pair
    folder = tmp_path / "config" / "hf_soups"
    folder.mkdir(parents=True, mode=0o700)
    key = folder / "architecture-cache.key"
    key.write_text("ab" * 32)
    key.chmod(0o600)
    if fault == "key_readable_by_others":
        key.chmod(0o644)
    elif fault == "key_folder_writable_by_others":
        folder.chmod(0o777)
    elif fault == "key_is_a_link":
        (tmp_path / "elsewhere.key").write_text("ab" * 32)
        key.unlink()
        key.symlink_to(tmp_path / "elsewhere.key")
    else:
        key.write_text("not a key")
    config = _config(a)
    architecture._secrets[architecture._key_path()] = bytes.fromhex("ab" * 32)  # as if the key were trusted:
    path = architecture._cache_path(config)  # a permissive entry signed with it waits where the cache would look
    honest = architecture._build(config).to_json()
    _plant(path, json.dumps(_sign({**honest, **PERMISSIVE}, path)))
    architecture._secrets.clear()
    with caplog.at_level(logging.WARNING, logger="hf_soups.architecture"):
        assert architecture._cache_path(config) is None
        assert _refused(check_compatibility([a, b]))
    assert "architecture cache is off" in caplog.text
    with open(path) as f:
        assert json.load(f)["ignore_unexpected"] == [".*"]  # neither read nor rewritten
    architecture._secrets.clear()


def test_the_key_is_created_private_and_kept(tmp_path):
    architecture._secrets.clear()
    secret = architecture._secret()
    key = tmp_path / "config" / "hf_soups" / "architecture-cache.key"
    assert secret is not None and len(secret) == 32 and key.read_text() == secret.hex()
    assert key.stat().st_mode & 0o777 == 0o600 and key.parent.stat().st_mode & 0o777 == 0o700
    architecture._secrets.clear()
    assert architecture._secret() == secret  # read back, not replaced


# --- item 11: the soup's config.json names the dtype written ---------------------------------------------------------

@pytest.fixture(scope="module")
def dtypes_family(tmp_path_factory):
    import torch

    root = tmp_path_factory.mktemp("dtypes")
    base = make_tiny_bert(root / "base", seed=0)
    return {name: perturb_checkpoint(base, root / name, seed=i, dtype=dtype) for i, (name, dtype) in
            enumerate([("fp32", torch.float32), ("fp32b", torch.float32), ("fp16", torch.float16),
                       ("bf16", torch.bfloat16)], start=1)}


def _written(directory):
    """(the float dtype of the tensors on disk, read by safetensors itself; the dtype config.json names)."""
    tensors = load_file(os.path.join(directory, "model.safetensors"))
    kinds = {str(t.dtype).removeprefix("torch.") for t in tensors.values() if t.is_floating_point()}
    config = _config(directory)
    named = {config[k] for k in ("dtype", "torch_dtype") if k in config}
    return kinds, named


@pytest.mark.parametrize("names,dtype", [(("fp16", "bf16"), None), (("bf16", "fp16"), None),
                                         (("bf16", "fp32"), None), (("fp32", "bf16"), None),
                                         (("fp32", "fp16", "bf16"), None), (("fp16", "bf16"), "bfloat16"),
                                         (("bf16", "fp16"), "float16")])
def test_the_soup_config_names_the_dtype_written_whatever_the_order(dtypes_family, tmp_path, names, dtype):
    from hf_soups import MergeOptions, soup_from_hub

    out = tmp_path / "soup"
    soup_from_hub([dtypes_family[n] for n in names], output_dir=out,
                  merge_options=MergeOptions(progress=False, dtype=dtype))
    kinds, named = _written(out)
    assert len(kinds) == 1 and named == kinds, (names, dtype, kinds, named)
    assert kinds == {dtype or "float32"}  # fp16 + bf16 -> fp32; anything + fp32 -> fp32


def test_a_uniform_soup_copies_the_config_byte_for_byte(dtypes_family, tmp_path):
    from hf_soups import MergeOptions, soup_from_hub

    soup_from_hub([dtypes_family["fp32"], dtypes_family["fp32b"]], output_dir=tmp_path / "soup",
                  merge_options=MergeOptions(progress=False))
    with open(os.path.join(dtypes_family["fp32"], "config.json"), "rb") as f, \
            open(tmp_path / "soup" / "config.json", "rb") as g:
        assert f.read() == g.read()


# --- item 12: tensor-name mismatches blame the odd one out -----------------------------------------------------------

def _rewrite(directory, change):
    path = os.path.join(directory, "model.safetensors")
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, path, metadata={"format": "pt"})
    return directory


@pytest.fixture(scope="module")
def trio(tmp_path_factory):
    """A base classifier and a factory of fine-tunes of it."""
    root = tmp_path_factory.mktemp("trio")
    base = make_tiny_bert(root / "base", seed=0)
    counter = iter(range(1, 100))

    def fine_tune(change=None, head="sequence"):
        n = next(counter)
        src = base if head == "sequence" else make_tiny_bert(root / f"mlm-base{n}", seed=0, head="mlm")
        d = perturb_checkpoint(src, root / f"ft{n}", seed=n)
        return _rewrite(d, change) if change else d

    return fine_tune


def _renamed(tensors):
    tensors["classifier.kernel"] = tensors.pop("classifier.weight")


def _reshaped(tensors):
    tensors["bert.embeddings.position_embeddings.weight"] = tensors["bert.embeddings.position_embeddings.weight"][:32]


def _old_layout(tensors):
    for name in [n for n in tensors if n.endswith("LayerNorm.weight") or n.endswith("LayerNorm.bias")]:
        tensors[name.rsplit(".", 1)[0] + (".gamma" if name.endswith("weight") else ".beta")] = tensors.pop(name)


@pytest.mark.parametrize("change", [_renamed, _reshaped], ids=["renamed", "reshaped"])
@pytest.mark.parametrize("position", [0, 1, 2])
def test_a_mismatch_blames_the_odd_one_out_wherever_it_is_listed(trio, change, position):
    good = [trio(), trio()]
    odd = trio(change)
    refs = good[:position] + [odd] + good[position:]
    report = check_compatibility(refs)
    assert not report.compatible
    assert {p.ingredient for p in report.problems} == {odd}, report.to_table()
    headers_only = check_compatibility(refs, arch_check=False, weight_check=False)  # the tensor comparison alone
    assert headers_only.problems and {p.ingredient for p in headers_only.problems} == {odd}
    assert all(f"'{good[0]}' and 1 other ingredient" in p.message for p in headers_only.problems)


def test_a_tie_between_two_keeps_the_first_as_reference(trio):
    a, odd = trio(), trio(_renamed)
    report = check_compatibility([a, odd], arch_check=False, weight_check=False)
    assert [p.ingredient for p in report.problems] == [odd, odd]  # missing classifier.weight, extra .kernel
    assert all(f"'{a}' " in p.message and "other ingredient" not in p.message for p in report.problems)


def test_a_stored_tied_decoder_is_normalised_not_refused(trio, tmp_path):
    """BERT's MLM decoder is tied to the word embeddings: one ingredient storing it too is souped without it."""
    from hf_soups import MergeOptions, soup_from_hub

    def store_tied(tensors):
        tensors["cls.predictions.decoder.weight"] = tensors["bert.embeddings.word_embeddings.weight"].clone()

    plain = [trio(head="mlm"), trio(head="mlm")]
    holder = trio(store_tied, head="mlm")
    refs = [holder, *plain]
    report = check_compatibility(refs)
    assert report.compatible, report.to_table()
    assert [p.ingredient for p in report.warnings if "cls.predictions.decoder.weight" in p.message] == [holder]
    soup_from_hub(refs, output_dir=tmp_path / "soup", merge_options=MergeOptions(progress=False))
    soup = load_file(tmp_path / "soup" / "model.safetensors")
    ours = [load_file(os.path.join(d, "model.safetensors")) for d in refs]
    assert set(soup) == set(ours[1])  # the layout the others (and save_pretrained) write
    import torch

    for name, tensor in soup.items():  # the plain mean, independent of hf_soups
        assert torch.allclose(tensor, torch.stack([t[name] for t in ours]).mean(0), atol=1e-6), name
    from transformers import AutoModelForMaskedLM

    model = AutoModelForMaskedLM.from_pretrained(tmp_path / "soup")
    assert torch.equal(model.cls.predictions.decoder.weight, soup["bert.embeddings.word_embeddings.weight"])


def test_an_untied_extra_output_embedding_is_still_refused():
    """`lm_head.weight` (the issue's own case) is normalised only when the config ties it and it matches the input
    embedding's shape."""
    from hf_soups.checkpoint.format import TensorInfo
    from hf_soups.compat import IngredientMeta, compare

    def meta(name, config, names):
        shapes = {"model.embed_tokens.weight": (50, 8), "lm_head.weight": (50, 8), "model.norm.weight": (8,)}
        return IngredientMeta(name, config, {n: TensorInfo(n, "F32", shapes[n], "model.safetensors", 0, 4)
                                             for n in names})

    modern = ["model.embed_tokens.weight", "model.norm.weight"]
    cfg = {"model_type": "llama", "architectures": ["LlamaForCausalLM"]}
    tied = compare([meta("h", cfg, modern + ["lm_head.weight"]), meta("a", cfg, modern), meta("b", cfg, modern)])
    assert tied.compatible and [w.ingredient for w in tied.warnings] == ["h"]
    untied = {**cfg, "tie_word_embeddings": False}
    report = compare([meta("h", untied, modern + ["lm_head.weight"]), meta("a", untied, modern),
                      meta("b", untied, modern)])
    assert [p.ingredient for p in report.problems] == ["h"] and "lm_head.weight" in report.problems[0].message


@pytest.mark.parametrize("layouts", [("old", "new", "new"), ("new", "new", "old"), ("old", "old", "new")])
def test_old_layernorm_names_mixed_with_modern_ones_are_refused_with_that_reason(trio, layouts):
    refs = [trio(_old_layout if kind == "old" else None) for kind in layouts]
    minority = "old" if layouts.count("old") == 1 else "new"
    odd = refs[layouts.index(minority)]
    report = check_compatibility(refs)
    assert not report.compatible
    assert {p.ingredient for p in report.problems} == {odd}, report.to_table()
    (problem,) = report.problems
    assert "gamma/beta" in problem.message and "layout" in problem.message


def test_an_all_old_layout_set_is_still_accepted(trio):
    assert check_compatibility([trio(_old_layout), trio(_old_layout)]).compatible
