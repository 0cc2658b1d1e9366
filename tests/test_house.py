"""The house: `soup_from_hub`'s option objects (the old keywords name them), the method registry, and the two bugs that the
old wiring let in (remote code in greedy evaluation, pickled Hub ingredients at preflight)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass

import pytest
import torch
from conftest import publish, state_dict_of
from datasets import Dataset

import hf_soups
from hf_soups import EvalSpec, HubAccess, MergeOptions, Recipe, RecipeError, SoupError, soup_from_hub
from hf_soups.cli.main import build_parser
from hf_soups.recipes import METHODS, get_method, method_names
from hf_soups.testing import sentiment_examples


def test_option_objects_make_the_soup_and_the_old_keywords_name_them(family, tmp_path):
    refs = [family["a"], family["b"]]
    new = soup_from_hub(refs, output_dir=tmp_path / "new", merge_options=MergeOptions(dtype=torch.float16,
                                                                                      max_shard_size="30KB",
                                                                                      progress=False))
    a = state_dict_of(new.output_dir)
    assert all(t.dtype == torch.float16 for t in a.values())
    assert os.path.exists(os.path.join(new.output_dir, "model.safetensors.index.json"))  # max_shard_size applied
    assert new.recipe.dtype == "float16"
    for old in ({"max_shard_size": "30KB"}, {"progress": False}, {"int_rule": "max"}):
        with pytest.raises(TypeError, match=rf"MergeOptions\({next(iter(old))}=\.\.\.\)"):
            soup_from_hub(refs, output_dir=tmp_path / "old", **old)
    assert not os.path.exists(tmp_path / "old")


def test_unknown_keyword_and_eval_kwargs_name_the_closest(family):
    with pytest.raises(TypeError, match=r"'strct'.*did you mean 'strict'\? Pass eval_spec=EvalSpec\(strict"):
        soup_from_hub([family["a"], family["d"]], strct=True)
    with pytest.raises(TypeError, match="'merge_option'.*did you mean 'merge_options'"):
        soup_from_hub([family["a"], family["d"]], merge_option=MergeOptions())
    with pytest.raises(TypeError, match=r"'eval_kwargs'.*eval_spec=EvalSpec\(\.\.\.\)"):
        soup_from_hub([family["a"], family["d"]], eval_kwargs={"text_colum": "x"})


def test_unknown_method_suggests_the_registered_one(family):
    with pytest.raises(RecipeError) as err:
        soup_from_hub([family["a"], family["d"]], method="greedy_soup")
    assert isinstance(err.value, SoupError) and isinstance(err.value, ValueError)
    assert "method='greedy'" in str(err.value)
    with pytest.raises(RecipeError, match="method='uniform'"):
        get_method("unifrom")


def test_registry_is_the_one_method_list():
    assert method_names() == ("uniform", "weighted", "greedy", "learned")
    for entry in METHODS.values():
        assert callable(entry.fn) and entry.paper.startswith("https://") and entry.description
    assert [m.name for m in METHODS.values() if m.needs_eval] == ["greedy", "learned"]
    soup_parser = next(a for a in build_parser()._subparsers._group_actions[0].choices.values()  # noqa: SLF001
                       if a.prog.endswith(" soup"))
    method_action = next(a for a in soup_parser._actions if a.dest == "method")  # noqa: SLF001
    assert list(method_action.choices) == list(METHODS)


def test_refs_object_with_refs_attribute_passes_through(family, tmp_path):
    @dataclass(frozen=True)
    class Candidates:  # the shape of discovery's CandidateSet
        refs: tuple[str, ...]

    soup = soup_from_hub(Candidates((str(family["a"]), str(family["d"]))), output_dir=tmp_path / "s",
                         merge_options=MergeOptions(progress=False))
    assert [i.ref for i in soup.ingredients] == [str(family["a"]), str(family["d"])]


def test_eval_spec_records_only_what_decides_the_result():
    spec = EvalSpec(dataset="val.csv", text_column="sentence", batch_size=8, max_memory={"cpu": "1GB"},
                    offload_folder="/tmp/off", learned_steps=5, strict=True)
    recipe = Recipe(method="greedy", ingredients=("a", "b"), weights=(0.5, 0.5), evaluation=spec)
    recorded = recipe.to_dict()["evaluation"]
    assert recorded["dataset"] == "val.csv" and recorded["learned_steps"] == 5 and recorded["strict"] is True
    assert not {"batch_size", "max_memory", "offload_folder"} & set(recorded)
    back = Recipe.from_yaml(recipe.to_yaml())
    assert back.evaluation == dataclasses.replace(spec, batch_size=None, max_memory=None, offload_folder=None)


def test_recipe_version_comes_from_package_metadata():
    from importlib.metadata import version

    assert Recipe(method="uniform", ingredients=("a",), weights=(1.0,)).hf_soups_version == version("hf_soups")
    assert hf_soups.__version__ == hf_soups.constants.VERSION


def _val(n=24):
    return Dataset.from_dict(sentiment_examples(n, seed=5))


def test_the_eval_spec_is_the_one_home_of_columns_and_metric(family, tmp_path):
    val = _val().rename_column("text", "sentence")
    spec = EvalSpec(text_column="sentence", metric="accuracy", strict=True)
    soup = soup_from_hub([family["a"], family["d"]], "greedy", eval_dataset=val, eval_spec=spec,
                         output_dir=tmp_path / "g", merge_options=MergeOptions(progress=False))
    assert soup.recipe.evaluation.text_column == "sentence" and soup.recipe.evaluation.strict is True
    assert set(soup.scores) == {i.name for i in soup.ingredients}
    for old in ({"text_column": "sentence"}, {"label_column": "label"}, {"metric": "f1"}, {"strict": True}):
        name = next(iter(old))
        with pytest.raises(TypeError, match=rf"eval_spec=EvalSpec\({name}=\.\.\.\)"):
            soup_from_hub([family["a"], family["d"]], "greedy", eval_dataset=val, output_dir=tmp_path / "old", **old)
    assert not os.path.exists(tmp_path / "old")


def test_trust_remote_code_reaches_greedy_evaluation(family, tmp_path):
    """Regression: greedy/learned evaluation loaded the reference model without `trust_remote_code`, so a soup of
    remote-code ingredients failed with an error asking for the very flag the user had passed."""
    remote = tmp_path / "remote"
    shutil.copytree(family["a"], remote)
    config = json.loads((remote / "config.json").read_text())
    config["auto_map"] = {"AutoModelForSequenceClassification": "modeling_custom.CustomModel"}
    (remote / "config.json").write_text(json.dumps(config))
    (remote / "modeling_custom.py").write_text("from transformers import BertForSequenceClassification as CustomModel\n")
    val = _val()
    options = MergeOptions(progress=False)
    for method in ("greedy", "learned"):
        soup = soup_from_hub([remote, family["d"]], method, eval_dataset=val, trust_remote_code=True,
                             eval_spec=EvalSpec(learned_steps=2), output_dir=tmp_path / method, merge_options=options)
        plain = soup_from_hub([family["a"], family["d"]], method, eval_dataset=val, eval_spec=EvalSpec(learned_steps=2),
                              output_dir=tmp_path / f"plain-{method}", merge_options=options)
        assert list(soup.scores.values()) == list(plain.scores.values()) and soup.weights == plain.weights


def test_pickled_hub_ingredients_pass_preflight_with_allow_pickle(api, hub, family, tmp_path):
    """Regression: a Hub ingredient holding only pytorch_model.bin got an empty tensor map at preflight, so the
    architecture check reported every tensor missing and such soups always failed."""
    binonly = tmp_path / "binonly"
    shutil.copytree(family["d"], binonly)
    torch.save(state_dict_of(family["d"]), binonly / "pytorch_model.bin")
    os.remove(binonly / "model.safetensors")
    publish(api, binonly, "alice/ft-d-bin")
    publish(api, family["a"], "alice/ft-a-house")
    report = hf_soups.check_compatibility(["alice/ft-a-house", "alice/ft-d-bin"], allow_pickle=True)
    assert report.compatible, report.to_table()
    assert any("pickled" in w.message and w.ingredient.startswith("alice/ft-d-bin@") for w in report.warnings)
    soup = soup_from_hub(["alice/ft-a-house", "alice/ft-d-bin"], allow_pickle=True, output_dir=tmp_path / "s",
                         access=HubAccess(cache_dir=str(tmp_path / "cache")),
                         merge_options=MergeOptions(progress=False))
    got = state_dict_of(soup.output_dir)
    a, d = state_dict_of(family["a"]), state_dict_of(family["d"])
    assert got.keys() == a.keys()
    for k in got:
        torch.testing.assert_close(got[k], torch.stack([a[k], d[k]]).mean(0), atol=1e-6, rtol=0)
