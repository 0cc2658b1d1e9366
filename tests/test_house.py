"""The house: `soup_from_hub`'s option objects and deprecation path, the method registry, and the two bugs that the
old wiring let in (remote code in greedy evaluation, pickled Hub ingredients at preflight)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import warnings
from dataclasses import dataclass

import pytest
import torch
from conftest import publish, state_dict_of
from datasets import Dataset

import hf_soups
from hf_soups import EvalSpec, MergeOptions, Recipe, RecipeError, SoupError, soup_from_hub
from hf_soups.cli.main import build_parser
from hf_soups.recipes import METHODS, get_method, method_names
from hf_soups.testing import sentiment_examples


def _no_future_warnings(fn):
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        return fn()


def test_option_objects_and_deprecated_keywords_make_the_same_soup(family, tmp_path):
    refs = [family["a"], family["b"]]
    new = _no_future_warnings(lambda: soup_from_hub(
        refs, output_dir=tmp_path / "new", merge_options=MergeOptions(dtype=torch.float16, max_shard_size="30KB",
                                                                      progress=False)))
    with pytest.warns(FutureWarning, match=r"MergeOptions\(dtype=\.\.\.\)"):
        old = soup_from_hub(refs, output_dir=tmp_path / "old", dtype=torch.float16, max_shard_size="30KB",
                            progress=False)
    a, b = state_dict_of(new.output_dir), state_dict_of(old.output_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) and a[k].dtype == torch.float16 for k in a)
    assert os.path.exists(os.path.join(new.output_dir, "model.safetensors.index.json"))  # max_shard_size applied
    assert new.recipe.dtype == old.recipe.dtype == "float16"


def test_unknown_keyword_and_eval_kwargs_key_name_the_closest(family):
    with pytest.raises(TypeError, match="'strct'.*Did you mean 'strict'"):
        soup_from_hub([family["a"], family["d"]], strct=True)
    with pytest.raises(TypeError, match="'merge_option'.*Did you mean 'merge_options'"):
        soup_from_hub([family["a"], family["d"]], merge_option=MergeOptions())
    with pytest.raises(TypeError, match="'text_colum'.*Did you mean 'text_column'"):
        soup_from_hub([family["a"], family["d"]], eval_kwargs={"text_colum": "x"})


def test_unknown_method_suggests_the_registered_one(family):
    with pytest.raises(RecipeError) as err:
        soup_from_hub([family["a"], family["d"]], method="greedy_soup")
    assert isinstance(err.value, SoupError) and isinstance(err.value, ValueError)
    assert "method='greedy'" in str(err.value)
    with pytest.raises(RecipeError, match="method='uniform'"):
        get_method("unifrom")


def test_registry_is_the_one_method_list():
    assert method_names() == ("uniform", "weighted", "greedy", "learned", "learned_by_layer")
    for entry in METHODS.values():
        assert callable(entry.fn) and entry.paper.startswith("https://") and entry.description
    assert [m.name for m in METHODS.values() if m.needs_eval] == ["greedy", "learned", "learned_by_layer"]
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


def test_top_level_columns_and_metric_override_the_eval_spec(family, tmp_path):
    val = _val().rename_column("text", "sentence")
    spec = EvalSpec(text_column="wrong", metric="accuracy", strict=True)
    soup = soup_from_hub([family["a"], family["d"]], "greedy", eval_dataset=val, text_column="sentence",
                         eval_spec=spec, output_dir=tmp_path / "g", merge_options=MergeOptions(progress=False))
    assert soup.recipe.evaluation.text_column == "sentence" and soup.recipe.evaluation.strict is True
    assert set(soup.scores) == {i.name for i in soup.ingredients}
    with pytest.warns(FutureWarning, match=r"EvalSpec\(strict=\.\.\.\)"):
        old = soup_from_hub([family["a"], family["d"]], "greedy", eval_dataset=val, strict=True,
                            eval_kwargs={"text_column": "sentence"}, output_dir=tmp_path / "old", progress=False)
    assert old.scores == soup.scores and old.weights == soup.weights


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
                         cache_dir=str(tmp_path / "cache"), merge_options=MergeOptions(progress=False))
    got = state_dict_of(soup.output_dir)
    a, d = state_dict_of(family["a"]), state_dict_of(family["d"])
    assert got.keys() == a.keys()
    for k in got:
        torch.testing.assert_close(got[k], torch.stack([a[k], d[k]]).mean(0), atol=1e-6, rtol=0)
