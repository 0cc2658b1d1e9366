"""The front door (#15): the card, evaluation data checked before any download, CLI-native errors, guard rails.

Everything runs through the public API or the `hf-soups` CLI (subprocess), against the loopback Hub over real HTTP;
cards are parsed back with `huggingface_hub.ModelCard` and checked field by field.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import WRITE_TOKEN, publish, state_dict_of
from huggingface_hub import ModelCard

from hf_soups import (
    EvaluationError,
    HubAccess,
    IncompatibleIngredientsError,
    InvalidArgumentError,
    LabelMismatchError,
    RecipeError,
    SoupError,
    UnknownArgumentError,
    check_compatibility,
    soup_from_hub,
)
from hf_soups.evaluation.data import EvalSet, as_eval_dataset
from hf_soups.merge.options import MergeOptions
from hf_soups.recipes import EvalSpec, Recipe
from hf_soups.testing import make_tiny_bert, perturb_checkpoint

LABELS = {0: "negative", 1: "neutral", 2: "positive"}
CARD = "---\nlicense: apache-2.0\nlanguage: en\ndatasets:\n- org/reviews\nbase_model: org/tiny-base\n---\n# {name}\n"


def run(*args, check_code=None, env=None, drop=()):
    environ = {k: v for k, v in os.environ.items() if k not in drop}
    proc = subprocess.run([sys.executable, "-m", "hf_soups", *map(str, args)], capture_output=True, text=True,
                          env={**environ, **(env or {})}, timeout=300)
    if check_code is not None:
        assert proc.returncode == check_code, (proc.returncode, proc.stdout, proc.stderr)
    return proc


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """A tiny base with named labels, three fine-tunes of it (cards agreeing on license/language/datasets/base) and a
    stranger: same architecture, another random init."""
    root = tmp_path_factory.mktemp("front-door")
    # large enough (~450 KB) that the 100 KB a safetensors header read fetches is not the whole file
    base = make_tiny_bert(root / "base", seed=0, id2label=LABELS, hidden_size=64, num_hidden_layers=3)
    out = {"base": base}
    for name, seed in (("a", 1), ("c", 3), ("d", 4)):
        out[name] = perturb_checkpoint(base, root / name, seed=seed)
        with open(os.path.join(out[name], "README.md"), "w") as f:
            f.write(CARD.format(name=name))
    out["stranger"] = make_tiny_bert(root / "stranger", seed=123, id2label=LABELS, hidden_size=64, num_hidden_layers=3)
    return out


@pytest.fixture(scope="module")
def fd_repos(api, labelled):
    for name in ("a", "c", "d", "stranger"):
        publish(api, labelled[name], f"alice/fd-{name}")
    return ["alice/fd-a", "alice/fd-c", "alice/fd-d"]


def _eval_data(n=24):
    words = ["good movie", "bad film", "the plot was fine", "great actor", "awful", "so boring"]
    return {"text": [words[i % len(words)] for i in range(n)], "label": [LABELS[i % 3] for i in range(n)]}


# -- the card --------------------------------------------------------------------------------------------------


def test_card_fields_parsed_back(hub, fd_repos, labelled, tmp_path):
    refs = [*fd_repos, "alice/fd-stranger"]
    soup = soup_from_hub(refs, "weighted", weights=[1, 0, 1, 0], output_dir=tmp_path / "soup",
                         merge_options=None, eval_spec=None)
    card = ModelCard.load(os.path.join(soup.output_dir, "README.md"))
    data = card.data
    a, c, d, stranger = soup.ingredients
    # base_model: only the ingredients in the soup (weight > 0); no shared base: the stranger's card declares none
    assert data.base_model == ["alice/fd-a", "alice/fd-d"]
    assert data.base_model_relation == "merge" and data.library_name == "transformers"
    assert data.pipeline_tag == "text-classification" and set(data.tags) >= {"merge", "model-soup", "hf-soups"}
    # metadata inherited from the ingredients' cards only where all agree (the stranger has no card)
    assert data.license is None and data.language is None
    assert "kept 2 of 4" in card.text
    # the compatibility warning about the stranger is recorded, and only the stranger is blamed
    assert "## Compatibility warnings" in card.text and f"**{stranger.name}** (weights)" in card.text
    assert f"**{a.name}** (weights)" not in card.text
    # the recipe is in the soup and is the card's recipe
    assert Recipe.load(os.path.join(soup.output_dir, "recipe.yaml")) == soup.recipe
    assert "hf-soups recipe recipe.yaml" in card.text
    # "How to use" names the class from `architectures`, not AutoModel (which would drop the classifier)
    assert "from transformers import BertForSequenceClassification, pipeline" in card.text
    assert "AutoModel.from_pretrained" not in card.text
    assert "path/to/soup" not in card.text


def test_agreeing_cards_are_inherited_and_a_one_ingredient_soup_says_so(hub, fd_repos, tmp_path):
    soup = soup_from_hub(fd_repos, "weighted", weights=[0, 1, 0], output_dir=tmp_path / "one")
    card = ModelCard.load(os.path.join(soup.output_dir, "README.md"))
    assert card.data.license == "apache-2.0" and card.data.language == "en"
    assert card.data.datasets == ["org/reviews"]
    assert card.data.base_model == ["alice/fd-c", "org/tiny-base"]
    assert "kept 1 of 3" in card.text and "This soup is one ingredient" in card.text
    sd, only = state_dict_of(soup.output_dir), soup.ingredients[1].local_dir
    assert all(torch.equal(sd[k], v) for k, v in state_dict_of(only).items())  # it *is* that ingredient


def test_model_index_names_the_real_dataset_rounded_and_the_plot_is_included(hub, fd_repos, tmp_path):
    import datasets

    soup = soup_from_hub(fd_repos, output_dir=tmp_path / "soup")
    test = datasets.Dataset.from_dict(_eval_data(30))
    shifted = datasets.DatasetDict({"train": datasets.Dataset.from_dict(_eval_data(6)),
                                    "test": datasets.Dataset.from_dict(_eval_data(12))})
    report = soup.evaluate({"test": EvalSet(test, dataset_id="org/reviews", config="en", split="test"),
                            "shifted": EvalSet(shifted, dataset_id="org/tweets", split="test")})
    soup = soup.with_evaluation(report)
    card = ModelCard.load(os.path.join(soup.output_dir, "README.md"))
    results = {r.dataset_type: r for r in card.data.eval_results}
    assert set(results) == {"org/reviews", "org/tweets"}
    assert results["org/reviews"].dataset_config == "en" and results["org/reviews"].dataset_split == "test"
    assert results["org/tweets"].dataset_split == "test"
    for r, name in ((results["org/reviews"], "test"), (results["org/tweets"], "shifted")):
        assert r.metric_type == "accuracy" and r.metric_value == round(report.results[name]["uniform_soup"], 4)
        assert r.metric_value == round(r.metric_value, 4)
    # the plot is drawn whenever an evaluation is shown, and the card embeds it
    assert os.path.getsize(os.path.join(soup.output_dir, "soup_plot.png")) > 1000
    assert "](soup_plot.png)" in card.text


def test_push_rerenders_the_card_and_its_snippet_runs_against_the_hub(hub, fd_repos, tmp_path):
    soup = soup_from_hub(fd_repos, output_dir=tmp_path / "soup")
    soup.push_to_hub("alice/fd-soup", token=WRITE_TOKEN)
    card = ModelCard.load("alice/fd-soup")
    assert card.text.lstrip().startswith("# fd-soup") and "path/to/soup" not in card.text
    assert "hf-soups recipe alice/fd-soup" in card.text
    code = card.text.split("## How to use", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert 'BertForSequenceClassification.from_pretrained("alice/fd-soup")' in code
    code += "\nprint(type(model).__name__, model.config.id2label[2], pipe('good movie')[0]['label'] in "\
            "model.config.label2id)\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_ENDPOINT": hub.url})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["BertForSequenceClassification", "positive", "True"]


def test_cli_push_of_a_directory_rerenders_the_card(hub, fd_repos, tmp_path):
    out = tmp_path / "soup"
    soup_from_hub(fd_repos[:2], output_dir=out)
    assert "# model-soup" in open(out / "README.md").read()
    run("push", out, "alice/fd-cli-pushed", "--token", WRITE_TOKEN, check_code=0)
    card = ModelCard.load("alice/fd-cli-pushed")
    assert card.text.lstrip().startswith("# fd-cli-pushed") and "# model-soup" not in card.text
    assert 'from_pretrained("alice/fd-cli-pushed")' in card.text and str(out) not in card.text
    assert card.data.base_model_relation == "merge" and "hf_soups_recipe:" in card.text


# -- evaluation data, validated before the weights move ----------------------------------------------------------


def _weight_downloads(hub):
    return [r for r in hub.requests if r[0] == "GET" and r[1].endswith(".safetensors") and r[2] == 200]


@pytest.mark.parametrize("case", ["column", "label_value", "label_names"])
def test_eval_data_is_checked_before_any_weight_is_downloaded(hub, fd_repos, labelled, tmp_path, case):
    import datasets

    data = _eval_data()
    kwargs = {}
    if case == "column":
        kwargs["eval_spec"] = EvalSpec(text_column="txt")
        expected = EvaluationError
    elif case == "label_value":
        data["label"][3] = "postive"
        expected = LabelMismatchError
    else:
        features = datasets.Features({"text": datasets.Value("string"),
                                      "label": datasets.ClassLabel(names=["neg", "neu", "pos"])})
        data = datasets.Dataset.from_dict({"text": data["text"], "label": [i % 3 for i in range(24)]},
                                          features=features)
        expected = LabelMismatchError
    hub.reset_counters()
    with pytest.raises(expected) as err:
        soup_from_hub(fd_repos, "greedy", eval_dataset=data, output_dir=tmp_path / "soup",
                      access=HubAccess(cache_dir=str(tmp_path / "cache")), **kwargs)
    assert not _weight_downloads(hub)
    weights = os.path.getsize(os.path.join(labelled["a"], "model.safetensors"))
    assert sum(hub.bytes_served.values()) < weights * len(fd_repos) / 2  # configs, cards, headers: no weights
    assert not [f for _, _, files in os.walk(tmp_path / "cache") for f in files if f.endswith(".safetensors")]
    assert not os.path.exists(tmp_path / "soup")
    if case == "column":
        assert "did you mean 'text'" in str(err.value) and err.value.param == "text_column"


def test_every_form_of_eval_data(hub, fd_repos, tmp_path):
    import datasets
    import pandas as pd

    raw = _eval_data(12)
    ds = datasets.Dataset.from_dict(raw)
    csv = tmp_path / "val.csv"
    pd.DataFrame(raw).to_csv(csv, index=False)
    jsonl = tmp_path / "val.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": t, "label": lab}) for t, lab in zip(raw["text"], raw["label"])))
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict(_eval_data(4)), "validation": ds})
    forms = {"dataset": ds, "dataframe": pd.DataFrame(raw), "dict": raw, "rows": [dict(zip(raw, r))
             for r in zip(*raw.values())], "csv": str(csv), "jsonl": str(jsonl), "datasetdict": dd,
             "evalset": EvalSet(dd, split="validation")}
    for name, form in forms.items():
        got = as_eval_dataset(form, "validation" if name == "datasetdict" else None)
        assert isinstance(got, datasets.Dataset), name
        assert got["text"] == raw["text"] and [str(x) for x in got["label"]] == raw["label"], name
    with pytest.raises(EvaluationError, match="which one") as err:
        as_eval_dataset(datasets.DatasetDict({"train": ds, "extra": ds}))
    assert err.value.param == "split"
    with pytest.raises(EvaluationError, match="not a form"):
        as_eval_dataset(42)
    # the soup takes them too: a DataFrame, and a DatasetDict with the split from the EvalSpec
    a = soup_from_hub(fd_repos[:2], "greedy", eval_dataset=pd.DataFrame(raw), output_dir=tmp_path / "df")
    b = soup_from_hub(fd_repos[:2], "greedy", eval_dataset=dd, eval_spec=EvalSpec(split="validation"),
                      output_dir=tmp_path / "dd")
    assert a.scores == b.scores and len(a.scores) == 2


def test_a_hub_dataset_id(hub, api, fd_repos, tmp_path):
    import pandas as pd

    folder = tmp_path / "ds"
    folder.mkdir()
    pd.DataFrame(_eval_data(12)).to_csv(folder / "validation.csv", index=False)
    api.create_repo("alice/fd-reviews", repo_type="dataset", exist_ok=True)
    api.upload_folder(folder_path=str(folder), repo_id="alice/fd-reviews", repo_type="dataset")
    soup = soup_from_hub(fd_repos[:2], "greedy", eval_dataset="alice/fd-reviews", output_dir=tmp_path / "soup",
                         eval_spec=EvalSpec(split="validation"))
    assert len(soup.scores) == 2 and soup.recipe.evaluation.dataset == "alice/fd-reviews"


# -- guard rails ---------------------------------------------------------------------------------------------------


def test_fewer_than_two_or_the_same_one_twice_is_refused(hub, fd_repos, labelled, tmp_path):
    with pytest.raises(InvalidArgumentError, match="at least two") as err:
        soup_from_hub([fd_repos[0]], output_dir=tmp_path / "one")
    assert isinstance(err.value, ValueError)
    single = soup_from_hub([fd_repos[0]], output_dir=tmp_path / "single", allow_single=True)
    assert single.weights == [1.0]
    with pytest.raises(InvalidArgumentError, match="same repo at the same commit"):
        soup_from_hub([fd_repos[0], fd_repos[1], f"{fd_repos[0]}@main"], output_dir=tmp_path / "dup")
    link = tmp_path / "link"
    os.symlink(labelled["a"], link)
    with pytest.raises(InvalidArgumentError, match="same directory"):
        soup_from_hub([labelled["a"], str(link)], output_dir=tmp_path / "dup2")
    with pytest.raises(InvalidArgumentError):
        check_compatibility([labelled["a"], labelled["a"]])
    for bad in (lambda: soup_from_hub(fd_repos, "greedy", output_dir=tmp_path / "g"),
                lambda: soup_from_hub(fd_repos, "weighted", weights=[1, 2], output_dir=tmp_path / "w")):
        with pytest.raises(ValueError) as err:
            bad()
        assert isinstance(err.value, SoupError)
    with pytest.raises(RecipeError, match="did you mean method='greedy'") as err:
        soup_from_hub(fd_repos, method="greedy_soup")
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize("n_good", [2, 3])
def test_hub_weight_check_reads_a_sample_by_range_and_blames_only_the_outlier(hub, fd_repos, labelled, n_good,
                                                                              tmp_path):
    refs = [*fd_repos[:n_good], "alice/fd-stranger"]
    hub.reset_counters()
    unchecked = check_compatibility(refs, weight_check=False, cache_dir=str(tmp_path / "c1"))
    assert unchecked.weight_check.startswith("skipped (weight_check=False)")
    headers_only = sum(hub.bytes_served.values())
    hub.reset_counters()
    report = check_compatibility(refs, cache_dir=str(tmp_path / "c2"))
    flagged = [w.ingredient for w in report.warnings if w.field == "weights"]
    assert len(flagged) == 1 and flagged[0].startswith("alice/fd-stranger@")
    assert "HTTP range requests" in report.weight_check and "1 warning" in report.weight_check
    assert not _weight_downloads(hub)
    assert any(r[1].endswith("model.safetensors") and r[2] == 206 for r in hub.requests)
    weights = os.path.getsize(os.path.join(labelled["a"], "model.safetensors"))
    sampled = sum(hub.bytes_served.values()) - headers_only
    assert 0 < sampled < weights * len(refs) / 2  # a small sample of each ingredient, not its weights
    clean = check_compatibility(fd_repos)
    assert "share one init" in clean.weight_check and not [w for w in clean.warnings if w.field == "weights"]


def test_check_cli_prints_the_weight_check_or_why_it_was_skipped(hub, fd_repos, tmp_path):
    out = run("check", *fd_repos[:2], "alice/fd-stranger", check_code=0).stdout
    assert "Weight-space check: ran on" in out and "alice/fd-stranger@" in out and "pretrained init" in out
    wide = make_tiny_bert(tmp_path / "wide", hidden_size=48, num_hidden_layers=3, id2label=LABELS)
    bad = run("check", fd_repos[0], wide, check_code=1).stdout
    assert "Weight-space check: skipped (the verdict already found blocking problems)" in bad
    # a different-size model: one line ("hidden_size 48 vs 32"), not one per tensor
    assert "hidden_size 48 vs 64" in bad and "tensor bert." not in bad
    soup = run("soup", fd_repos[0], wide, "--output", tmp_path / "x", check_code=1).stderr
    assert soup.count("hidden_size 48 vs 64") == 1
    assert not [line for line in soup.splitlines() if line.count("Fix:") > 1]


# -- CLI-native errors ----------------------------------------------------------------------------------------


def test_cli_errors_speak_flags_and_usage_errors_exit_2(hub, fd_repos, tmp_path):
    missing = run("soup", *fd_repos, "--method", "greedy", "--output", tmp_path / "g", check_code=2)
    assert "--eval-dataset" in missing.stderr and "eval_dataset=" not in missing.stderr
    csv = tmp_path / "val.csv"
    import pandas as pd

    pd.DataFrame(_eval_data()).to_csv(csv, index=False)
    hub.reset_counters()
    column = run("soup", *fd_repos, "--method", "greedy", "--eval-dataset", csv, "--text-column", "txt",
                 "--output", tmp_path / "c", check_code=8)
    assert "--text-column" in column.stderr and "text_column" not in column.stderr
    assert "did you mean 'text'" in column.stderr
    assert not _weight_downloads(hub)
    out = tmp_path / "soup"
    run("soup", *fd_repos[:2], "--output", out, check_code=0)
    again = run("soup", *fd_repos[:2], "--output", out, check_code=6)
    assert "--overwrite" in again.stderr and "overwrite=True" not in again.stderr
    single = run("soup", fd_repos[0], "--output", tmp_path / "one", check_code=2)
    assert "at least two" in single.stderr and "--allow-single" in single.stderr
    run("soup", fd_repos[0], "--output", tmp_path / "one", "--allow-single", check_code=0)
    dup = run("soup", fd_repos[0], f"{fd_repos[0]}@main", "--output", tmp_path / "dup", check_code=2)
    assert "same repo at the same commit" in dup.stderr
    for proc in (missing, column, again, single, dup):
        assert "Traceback" not in proc.stderr and proc.stderr.count("Fix:") == 1


def test_a_token_from_the_environment_counts_as_given(hub, fd_repos, tmp_path):
    env = {"HF_TOKEN": WRITE_TOKEN}
    typo = run("soup", "alice/fd-aa", fd_repos[1], "--output", tmp_path / "x", env=env,
               drop=("HF_HUB_DISABLE_IMPLICIT_TOKEN",), check_code=3)
    assert "does not exist" in typo.stderr and "did you mean 'alice/fd-a'" in typo.stderr
    assert "--token" not in typo.stderr and WRITE_TOKEN not in typo.stderr
    anonymous = run("soup", "alice/fd-aa", fd_repos[1], "--output", tmp_path / "y", check_code=4)
    assert "--token" in anonymous.stderr and "token='hf_" not in anonymous.stderr


def test_recipe_from_a_soup_directory_a_card_file_and_a_repo_that_is_not_a_soup(hub, fd_repos, tmp_path):
    out = tmp_path / "soup"
    soup_from_hub(fd_repos, "weighted", weights=[2, 1, 1], output_dir=out)
    original = state_dict_of(out)
    for k, source in enumerate([out, out / "README.md", out / "recipe.yaml"]):
        again = tmp_path / f"again{k}"
        run("recipe", source, "--output", again, check_code=0)
        replayed = state_dict_of(again)
        assert replayed.keys() == original.keys() and all(torch.equal(replayed[n], original[n]) for n in original)
    plain = run("recipe", "alice/fd-a", "--output", tmp_path / "p")
    assert plain.returncode == 10 and "not the card of a soup" in plain.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "not a soup directory" in run("recipe", empty, "--output", tmp_path / "q", check_code=10).stderr


def test_readme_loopback_hub_runs_standalone(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "hf_soups.testing.hub", "--port", "0", "--token", "hf_me=me"],
                            stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith("HF_ENDPOINT=http://127.0.0.1:")
        from huggingface_hub import HfApi

        api = HfApi(endpoint=line.split("=", 1)[1], token="hf_me")
        api.create_repo("me/standalone")
        assert api.model_info("me/standalone").id == "me/standalone"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# -- one name per concept: the signature, the wrong ways, the base (#23 item 5, #25 item 4) ----------------------


def test_the_front_door_has_at_most_16_parameters_and_no_kwargs():
    import inspect

    parameters = inspect.signature(soup_from_hub).parameters
    assert len(parameters) <= 16
    assert all(p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) for p in parameters.values())
    # the signature is the real one: every parameter it shows is accepted (no hidden **kwargs behind a wrapper)
    assert soup_from_hub.__wrapped__.__code__.co_flags & inspect.CO_VARKEYWORDS == 0


@pytest.mark.parametrize("keyword, value, right", [
    ("split", "validation", "eval_spec=EvalSpec(split=...)"),
    ("text_column", "sentence", "eval_spec=EvalSpec(text_column=...)"),
    ("label_column", "y", "eval_spec=EvalSpec(label_column=...)"),
    ("metric", "f1", "eval_spec=EvalSpec(metric=...)"),
    ("max_memory", {"cpu": "1GB"}, "eval_spec=EvalSpec(max_memory=...)"),
    ("eval_kwargs", {"strict": True}, "eval_spec=EvalSpec(...)"),
    ("dtype", "bfloat16", "merge_options=MergeOptions(dtype=...)"),
    ("device", "cuda", "eval_spec=EvalSpec(device=...)"),
    ("progress", False, "merge_options=MergeOptions(progress=...)"),
    ("stream", True, "merge_options=MergeOptions(stream=...)"),
    ("token", "hf_x", "access=HubAccess(token=...)"),
    ("endpoint", "http://127.0.0.1:1", "access=HubAccess(endpoint=...)"),
    ("cache_dir", "/tmp/c", "access=HubAccess(cache_dir=...)"),
    ("use_auth_token", "hf_x", "access=HubAccess(token=...)"),
    ("rank", 8, "as_adapter=<rank>"),
    ("base_model", "org/base", "base=..."),
    ("splt", "validation", "did you mean 'split'? Pass eval_spec=EvalSpec(split=...)"),
    ("overwrit", True, "did you mean 'overwrite'? Pass overwrite=..."),
])
def test_a_keyword_said_another_way_names_the_right_one(keyword, value, right, tmp_path):
    # raised before anything is read: the refs do not even exist
    with pytest.raises(UnknownArgumentError) as err:
        soup_from_hub([str(tmp_path / "no-a"), str(tmp_path / "no-b")], output_dir=tmp_path / "soup",
                      **{keyword: value})
    assert isinstance(err.value, TypeError) and isinstance(err.value, SoupError)
    assert f"unexpected keyword argument '{keyword}'" in str(err.value) and right in err.value.fix
    assert not (tmp_path / "soup").exists()


@pytest.mark.parametrize("keyword", ["token", "endpoint", "cache_dir"])
def test_replay_recipe_takes_the_hub_access_one_way(keyword, tmp_path):
    from hf_soups import replay_recipe

    recipe = Recipe(method="uniform", ingredients=("alice/fd-a@" + "0" * 40, "alice/fd-c@" + "1" * 40),
                    weights=(0.5, 0.5))
    with pytest.raises(UnknownArgumentError) as err:
        replay_recipe(recipe, tmp_path / "soup", **{keyword: "x"})
    assert isinstance(err.value, TypeError) and f"access=HubAccess({keyword}=...)" in err.value.fix
    assert not (tmp_path / "soup").exists()


def test_option_objects_of_the_wrong_type_name_the_class(labelled, tmp_path):
    for kwargs, right in (({"eval_spec": {"split": "x"}}, "EvalSpec(**{...})"),
                          ({"merge_options": "bf16"}, "MergeOptions(...)"),
                          ({"access": {"token": "x"}}, "HubAccess(")):
        with pytest.raises(UnknownArgumentError) as err:
            soup_from_hub([labelled["a"], labelled["c"]], output_dir=tmp_path / "soup", **kwargs)
        assert isinstance(err.value, TypeError) and right in err.value.fix


@pytest.mark.parametrize("method", ["uniform", "greedy"])
def test_weights_with_a_method_that_chooses_them_is_an_error_naming_weighted(labelled, method, tmp_path):
    with pytest.raises(InvalidArgumentError, match="method='weighted'") as err:
        soup_from_hub([labelled["a"], labelled["c"]], method, weights=[0.7, 0.3], output_dir=tmp_path / "soup",
                      eval_dataset=_eval_data() if method == "greedy" else None)
    assert err.value.param == "weights" and not (tmp_path / "soup").exists()


@pytest.mark.parametrize("argv, right", [
    (["soup", "x", "y", "--split", "validation", "--output", "OUT"], "--eval-split"),
    (["soup", "x", "y", "--split=validation", "--output", "OUT"], "--eval-split"),
    (["soup", "x", "y", "--output-dir", "OUT", "--output", "OUT"], "use --output"),
    (["soup", "x", "y", "--cache-dir", "c", "--output", "OUT"], "HF_HUB_CACHE"),
    (["check", "x", "y", "--push-to", "u/r"], "`hf-soups soup / recipe`"),
    (["check", "x", "y", "--revison", "v1"], "did you mean --revision?"),
])
def test_cli_a_flag_said_another_way_is_one_line_naming_the_right_one(argv, right, tmp_path, capsys):
    from hf_soups.cli.main import main

    code = main([a.replace("OUT", str(tmp_path / "soup")) for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "error:" in err and right in err and "Traceback" not in err
    assert not (tmp_path / "soup").exists()


def test_cli_flags_come_from_one_table_and_each_shows_once_per_subcommand():
    from hf_soups.cli.main import FLAG_TABLE, build_parser

    parser = build_parser()
    subparsers = parser._subparsers._group_actions[0].choices  # noqa: SLF001
    for command, sub in subparsers.items():
        shown = [s for a in sub._actions for s in a.option_strings if s not in ("-h", "--help")]  # noqa: SLF001
        assert len(shown) == len(set(shown)), command
        expected = {n for f in FLAG_TABLE if command in f.commands for n in f.names if n.startswith("-")}
        assert set(shown) == expected, command
        text = sub.format_help()
        for flag in expected:
            assert len(re.findall(rf"(?<![\w-]){re.escape(flag)}(?![\w-])\s", text.split("options:")[1])) >= 1
    assert len({f.names for f in FLAG_TABLE}) == len(FLAG_TABLE)  # one row per flag


def _without(src, dst, drop):
    """A copy of checkpoint `src` whose weights lack the tensors named by `drop(name)`."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    path = os.path.join(dst, "model.safetensors")
    tensors = load_file(path)
    save_file({k: v for k, v in tensors.items() if not drop(k)}, path, metadata={"format": "pt"})
    return str(dst)


def test_the_base_is_pinned_and_recorded_in_the_recipe_and_the_card(api, fd_repos, labelled, tmp_path):
    sha = publish(api, labelled["base"], "alice/fd-base")
    soup = soup_from_hub(fd_repos[:2], output_dir=tmp_path / "soup", base="alice/fd-base",
                         merge_options=MergeOptions(progress=False))
    assert soup.recipe.base == f"alice/fd-base@{sha}"
    card = ModelCard.load(os.path.join(soup.output_dir, "README.md"))
    # the card's base_model lists the ingredients and the pinned base, not the cards' org/tiny-base
    assert "alice/fd-base" in card.data.base_model and "org/tiny-base" not in card.data.base_model
    assert Recipe.load(os.path.join(soup.output_dir, "recipe.yaml")).base == f"alice/fd-base@{sha}"
    # a local base is recorded as its directory; the weights are the plain mean either way
    local = soup_from_hub(fd_repos[:2], output_dir=tmp_path / "local", base=labelled["base"],
                          merge_options=MergeOptions(progress=False))
    assert local.recipe.base == labelled["base"]
    a, b = state_dict_of(soup.output_dir), state_dict_of(local.output_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_base_lacking_a_body_tensor_is_refused_and_a_missing_head_is_a_warning(labelled, tmp_path):
    refs = [labelled["a"], labelled["c"]]
    body = _without(labelled["base"], tmp_path / "no-body", lambda k: "layer.1.output.dense" in k)
    with pytest.raises(IncompatibleIngredientsError) as err:
        soup_from_hub(refs, output_dir=tmp_path / "soup", base=body, merge_options=MergeOptions(progress=False))
    assert "layer.1.output.dense" in str(err.value) and "base=" in str(err.value)
    assert not (tmp_path / "soup").exists()
    headless = _without(labelled["base"], tmp_path / "no-head", lambda k: k.startswith("classifier."))
    soup = soup_from_hub(refs, output_dir=tmp_path / "soup", base=headless, merge_options=MergeOptions(progress=False))
    heads = [w for w in soup.report.warnings if "head" in w.message]
    assert heads and "classifier." in heads[0].message and soup.recipe.base == headless


def test_base_findings_is_pure_and_reports_shapes_and_heads():
    from hf_soups.checkpoint.format import TensorInfo
    from hf_soups.compat import base_findings
    from hf_soups.refs import IngredientMeta

    def meta(name, shapes, model_type="bert"):
        tensors = {n: TensorInfo(n, "F32", s, "model.safetensors", 0, 4) for n, s in shapes.items()}
        return IngredientMeta(name, {"model_type": model_type}, tensors)

    ft = meta("ft", {"embed.weight": (10, 4), "layer.0.weight": (4, 4), "score.weight": (3, 4)})
    good = base_findings(meta("base", {"embed.weight": (10, 4), "layer.0.weight": (4, 4), "lm_head.weight": (10, 4)}),
                         [ft])
    assert good.problems == [] and good.missing_heads == ("score.weight",)
    bad = base_findings(meta("base", {"embed.weight": (12, 4), "score.weight": (3, 4)}, model_type="roberta"), [ft])
    fields = sorted(p.field for p in bad.problems)
    assert fields == ["model_type", "tensor embed.weight", "tensor layer.0.weight"] and bad.missing_heads == ()
    assert all(p.severity == "error" and p.ingredient == "base" for p in bad.problems)


def test_a_uniform_soup_never_requests_the_base_its_cards_name(hub, fd_repos, tmp_path):
    hub.reset_counters()
    soup = soup_from_hub(fd_repos[:2], output_dir=tmp_path / "soup", merge_options=MergeOptions(progress=False))
    assert not any("tiny-base" in path for _, path, _ in hub.requests)  # the cards' base_model: org/tiny-base
    assert soup.recipe.base is None and "org/tiny-base" in soup.card.data.base_model  # named, not pinned


def test_a_method_that_needs_the_base_reads_it_from_the_cards(api, hub, labelled, tmp_path):
    from hf_soups.base import pin_base
    from hf_soups.compat import CompatibilityReport
    from hf_soups.refs import IngredientMeta

    sha = publish(api, labelled["base"], "alice/declared-base")
    metas = [IngredientMeta(n, {"model_type": "bert"}, None, base_model=("alice/declared-base",)) for n in "ab"]
    access = HubAccess(endpoint=hub.url, cache_dir=str(tmp_path / "cache"))
    assert pin_base(None, metas, CompatibilityReport(["a", "b"]), access, needed=False) is None
    pinned = pin_base(None, metas, CompatibilityReport(["a", "b"]), access, needed=True)
    assert (pinned.repo_id, pinned.revision) == ("alice/declared-base", sha)
    disagree = [metas[0], IngredientMeta("c", {"model_type": "bert"}, None, base_model=("org/other",))]
    with pytest.raises(InvalidArgumentError, match="base="):
        pin_base(None, disagree, CompatibilityReport(["a", "c"]), access, needed=True)
