"""The house: `soup_from_hub`'s option objects (the old keywords name them), the method registry, and the two bugs that the
old wiring let in (remote code in greedy evaluation, pickled Hub ingredients at preflight)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import warnings
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
    assert method_names() == ("uniform", "weighted", "greedy", "learned", "model_stock", "learned_by_layer")
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


# -- one way through (#23 item 4): the walk of soup_from_hub's refs -------------------------------------------------
def _walk_tool():
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", "walk_refs.py")
    spec = importlib.util.spec_from_file_location("walk_refs", path)
    if "walk_refs" not in sys.modules:
        module = importlib.util.module_from_spec(spec)
        sys.modules["walk_refs"] = module  # (its dataclasses look their module up)
        spec.loader.exec_module(module)
    return sys.modules["walk_refs"]


def test_refs_walk_climbs_at_most_8(tmp_path):
    tool = _walk_tool()
    walked = tool.walk_uniform_soup(str(tmp_path))
    assert not walked.unknown, f"give these modules a row in tools/walk_refs.py STAGES: {sorted(walked.unknown)}"
    entered = {m for m, _ in walked.stops}
    # the walk really went through every stage up to the card (a walk that saw nothing would count no climb)
    assert {"metas.py", "preflight.py", "compat.py", "recipes/uniform.py", "merge/engine.py", "checkpoint/writer.py",
            "soup.py", "card.py"} <= entered
    assert len(walked.climbs) <= 8, "\n".join(walked.as_dict()["climbs_detail"])


def test_walk_counts_a_climb_back_up_once_per_call_site():
    from hf_soups.card import pipeline_tag_for
    from hf_soups.compat import sample_tensor_names
    from hf_soups.merge.numerics import cast_limit

    tool = _walk_tool()

    def bounce():
        for _ in range(3):  # engine -> verdict -> card -> verdict: two distinct climbs, each counted once
            cast_limit(torch.float16)
            sample_tensor_names({})
            pipeline_tag_for(["BertForSequenceClassification"])
            sample_tensor_names({})

    walked = tool.walk(bounce)
    assert [(a[0], b[0]) for a, b in walked.climbs] == [("merge/numerics.py", "compat.py"), ("card.py", "compat.py")]
    assert tool.stage_of("evaluation/held_out.py") == "plan" and tool.stage_of("errors.py") is None
    with pytest.raises(KeyError):
        tool.stage_of("brand_new_room.py")


# -- one way through: preflight settles each check once; HubAccess; the immutable Soup -------------------------------
def test_architecture_check_needs_no_compat_and_the_verdict_takes_no_callback():
    import ast
    import inspect

    import hf_soups.architecture as architecture
    from hf_soups import compat

    imported = {node.module for node in ast.walk(ast.parse(inspect.getsource(architecture)))
                if isinstance(node, ast.ImportFrom)}
    assert "compat" not in imported and "problem" in imported
    assert list(inspect.signature(compat.verdict).parameters) == ["metas", "align_labels"]
    assert compat.Problem is __import__("hf_soups.problem", fromlist=["Problem"]).Problem  # one class, re-exported


def test_remote_code_is_decided_once_by_preflight(family, tmp_path, monkeypatch):
    from hf_soups import UnsafeCheckpointError, compat, modeling, preflight

    evil = tmp_path / "evil"
    shutil.copytree(family["d"], evil)
    config = json.loads((evil / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_evil.Evil"}
    (evil / "config.json").write_text(json.dumps(config))
    decided = []
    monkeypatch.setattr(preflight, "remote_code_problems",
                        lambda *a: decided.append(1) or compat.remote_code_problems(*a))
    monkeypatch.setattr(modeling, "check_remote_code", lambda *a: pytest.fail("checked a second time"))
    with pytest.raises(UnsafeCheckpointError, match=r"auto_map.*trust_remote_code=True") as err:
        soup_from_hub([family["a"], evil], output_dir=tmp_path / "soup", merge_options=MergeOptions(progress=False))
    assert decided == [1] and err.value.ingredient == str(evil) and not (tmp_path / "soup").exists()


def test_hub_access_is_one_frozen_value_that_never_shows_its_token(tmp_path):
    from hf_soups.hub.access import HubAccess

    access = HubAccess.from_args(endpoint="http://127.0.0.1:1", token="hf_secret_token", cache_dir=tmp_path)
    assert access.cache_dir == str(tmp_path) and access.kwargs == {
        "token": "hf_secret_token", "endpoint": "http://127.0.0.1:1", "cache_dir": str(tmp_path)}
    assert "hf_secret_token" not in repr(access) and "hf_secret_token" not in str(access)
    assert access == HubAccess.from_args(endpoint="http://127.0.0.1:1", token=False, cache_dir=str(tmp_path))
    with pytest.raises(dataclasses.FrozenInstanceError):
        access.token = None


def test_soup_is_immutable_and_evaluate_changes_nothing_in_place(family, tmp_path):
    soup = soup_from_hub([family["a"], family["d"]], output_dir=tmp_path / "soup",
                         merge_options=MergeOptions(progress=False))
    with pytest.raises(dataclasses.FrozenInstanceError):
        soup.method = "greedy"
    card_path = tmp_path / "soup" / "README.md"
    before, before_card = card_path.read_bytes(), str(soup.card)
    assert str(soup.card) == card_path.read_text(encoding="utf-8")  # the card on disk is the soup's, from the start
    data = Dataset.from_dict(sentiment_examples(16, seed=3))
    report = soup.evaluate({"val": data}, methods=["soup", "best_individual"], bootstrap=0, progress=False)
    assert card_path.read_bytes() == before and str(soup.card) == before_card and not soup.results
    shown = soup.with_evaluation(report)
    assert shown is not soup and not soup.results and shown.recipe == soup.recipe
    assert shown.results == {"val": {m: report.results["val"][m] for m in ("best_individual", "uniform_soup")}}
    text = card_path.read_text(encoding="utf-8")
    assert text == str(shown.card) and "| uniform_soup |" in text and "| uniform_soup |" not in before_card
    copy = shown.save_pretrained(tmp_path / "copy")
    assert open(os.path.join(copy, "README.md"), encoding="utf-8").read() == text


def test_push_of_the_evaluated_soup_pushes_the_card_with_the_evaluation(hub, family, tmp_path):
    from conftest import WRITE_TOKEN
    from huggingface_hub import ModelCard

    soup = soup_from_hub([family["a"], family["d"]], output_dir=tmp_path / "soup",
                         merge_options=MergeOptions(progress=False))
    data = Dataset.from_dict(sentiment_examples(16, seed=4))
    report = soup.evaluate({"val": data}, methods=["soup"], bootstrap=0, progress=False)
    soup.with_evaluation(report).push_to_hub("alice/house-evaluated-soup", token=WRITE_TOKEN, endpoint=hub.url)
    card = ModelCard.load("alice/house-evaluated-soup", token=WRITE_TOKEN)
    (result,) = card.data.eval_results
    assert result.metric_value == round(report.results["val"]["uniform_soup"], 4)
    assert "alice/house-evaluated-soup" in card.text  # the loading snippet names the repo pushed to
