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
    InvalidArgumentError,
    LabelMismatchError,
    RecipeError,
    SoupError,
    check_compatibility,
    soup_from_hub,
)
from hf_soups.evaluation.data import EvalSet, as_eval_dataset
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
        kwargs["text_column"] = "txt"
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
                      cache_dir=str(tmp_path / "cache"), **kwargs)
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
