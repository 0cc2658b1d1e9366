"""Soups of one training run: a real `transformers.Trainer` run of a tiny BERT (checkpoints 4, 8, 12), read from
disk and from the loopback Hub, souped by `run_checkpoints` + `soup_from_hub`, the CLI and `SoupCallback`."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import WRITE_TOKEN
from hf_soups import SoupError, check_compatibility, run_checkpoints, soup_from_hub
from hf_soups.testing import make_tiny_bert, sentiment_examples
from hf_soups import HubAccess

STEPS = [4, 8, 12]
NEVER_CARRIED = {"optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin", "trainer_state.json"}


ONE_HOT_CALLS = []  # compute_metrics calls whose predictions are one-hot: greedy's, through SoupCallback


def _accuracy(pred):
    p = np.asarray(pred.predictions)
    if set(np.unique(p)) <= {0.0, 1.0} and (p.sum(-1) == 1).all():
        ONE_HOT_CALLS.append(len(p))
    return {"accuracy": float((np.argmax(p, -1) == pred.label_ids).mean())}


def _dataset(tokenizer, n, seed):
    from datasets import Dataset

    data = sentiment_examples(n, seed=seed)
    enc = tokenizer(data["text"], padding="max_length", max_length=12, truncation=True)
    return Dataset.from_dict({**data, **enc})


@pytest.fixture(scope="module")
def run(tmp_path_factory, hub):
    """One real Trainer run (12 steps, saving and evaluating every 4), with two SoupCallbacks attached (uniform over
    the last 3, greedy on the eval set with compute_metrics) and an every_save running average."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainingArguments

    from hf_soups import SoupCallback

    root = tmp_path_factory.mktemp("run")
    base = make_tiny_bert(root / "base", seed=0, num_labels=2)
    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForSequenceClassification.from_pretrained(base)
    out = root / "out"
    args = TrainingArguments(output_dir=str(out), max_steps=12, save_steps=4, eval_steps=4, eval_strategy="steps",
                             logging_steps=4, per_device_train_batch_size=8, per_device_eval_batch_size=16,
                             learning_rate=5e-3, report_to=[], use_cpu=True, seed=0, save_only_model=False,
                             dataloader_num_workers=0, disable_tqdm=True, hub_token=WRITE_TOKEN)
    trainer = Trainer(model=model, args=args, train_dataset=_dataset(tok, 96, 1), eval_dataset=_dataset(tok, 32, 2),
                      compute_metrics=_accuracy, processing_class=tok)
    uniform = SoupCallback(trainer, last=3, push_to_hub="alice/run-soup")
    greedy = SoupCallback(trainer, top=3, method="greedy", selection_metric="accuracy", soup_dir=str(root / "greedy"))
    running = SoupCallback(every_save=True, since_step=8, soup_dir=str(root / "swa"))
    for cb in (uniform, greedy, running):
        trainer.add_callback(cb)
    trainer.train()
    return {"root": root, "out": str(out), "trainer": trainer, "uniform": uniform, "greedy": greedy,
            "running": running}


def tensors(path):
    return load_file(os.path.join(path, "model.safetensors"))


def mean_of(paths):
    """The independent truth: torch.stack([...]).mean(0) over exactly these checkpoints, read by safetensors."""
    states = [tensors(p) for p in paths]
    return {k: torch.stack([s[k].double() for s in states]).mean(0).float() for k in states[0]}


def assert_soup_is_mean(soup_dir, paths):
    got, want = tensors(soup_dir), mean_of(paths)
    assert set(got) == set(want)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=1e-6, msg=k)


SOUP_FILES = {"README.md", "recipe.yaml", "config.json", "model.safetensors", "tokenizer.json",
              "tokenizer_config.json", ".hf_soups"}


def assert_clean(soup_dir):
    """Only the soup's own files: no training state, no temporary or leftover file."""
    names = set(os.listdir(soup_dir))
    assert not names & NEVER_CARRIED, names
    assert names <= SOUP_FILES and {"config.json", "model.safetensors", "README.md"} <= names, names
    assert not [n for n in os.listdir(os.path.dirname(os.path.abspath(soup_dir))) if "hf-soups-new" in n or
                n.startswith(".tmp")]


def ckpt(run, step):
    return os.path.join(run["out"], f"checkpoint-{step}")


def copy_run(run, dst, steps=STEPS):
    """A copy of the run with its checkpoints renamed to `steps` (and log_history steps mapped alike)."""
    os.makedirs(dst)
    for old, new in zip(STEPS, steps):
        shutil.copytree(ckpt(run, old), os.path.join(dst, f"checkpoint-{new}"))
    mapping = dict(zip(STEPS, steps))
    for new in steps:
        path = os.path.join(dst, f"checkpoint-{new}", "trainer_state.json")
        with open(path) as f:
            state = json.load(f)
        for e in state["log_history"]:
            e["step"] = mapping.get(e["step"], e["step"])
        state["global_step"] = new
        with open(path, "w") as f:
            json.dump(state, f)
    return str(dst)


def set_eval_loss(run_dir, step, values):
    """Rewrite the newest trainer_state.json's eval_loss at each step (a history where the best are not the last)."""
    path = os.path.join(run_dir, f"checkpoint-{step}", "trainer_state.json")
    with open(path) as f:
        state = json.load(f)
    for e in state["log_history"]:
        if "eval_loss" in e:
            if e["step"] in values and values[e["step"]] is not None:
                e["eval_loss"] = values[e["step"]]
            elif e["step"] in values:
                del e["eval_loss"]
    state["log_history"] = [e for e in state["log_history"] if set(e) - {"step", "epoch"}]
    with open(path, "w") as f:
        json.dump(state, f)


# -- local runs ---------------------------------------------------------------------------------------------------------

def test_the_run_saved_three_checkpoints_with_training_state(run):
    names = sorted(os.listdir(run["out"]))
    assert [n for n in names if n.startswith("checkpoint-")] == ["checkpoint-12", "checkpoint-4", "checkpoint-8"]
    assert {"optimizer.pt", "training_args.bin", "trainer_state.json"} <= set(os.listdir(ckpt(run, 12)))


def test_numeric_step_order_and_mean(run, tmp_path):
    found = run_checkpoints(run["out"])
    assert found.steps == STEPS and len(found) == 3
    soup = soup_from_hub(found, output_dir=tmp_path / "soup")
    assert_soup_is_mean(soup.output_dir, [ckpt(run, s) for s in STEPS])
    assert [i.name for i in soup.ingredients] == ["checkpoint-4", "checkpoint-8", "checkpoint-12"]
    assert_clean(soup.output_dir)


def test_numeric_order_where_lexical_order_differs(run, tmp_path):
    copied = copy_run(run, tmp_path / "r", steps=[20, 100, 1000])
    found = run_checkpoints(copied, last=2)
    assert found.steps == [100, 1000]  # lexically: checkpoint-100, checkpoint-1000, checkpoint-20
    soup = soup_from_hub(found, output_dir=tmp_path / "soup")
    assert_soup_is_mean(soup.output_dir, [ckpt(run, 8), ckpt(run, 12)])


def test_last_two(run, tmp_path):
    found = run_checkpoints(run["out"], last=2)
    assert found.steps == [8, 12]
    soup = soup_from_hub(found, output_dir=tmp_path / "soup")
    assert_soup_is_mean(soup.output_dir, [ckpt(run, 8), ckpt(run, 12)])


def test_top_two_by_eval_loss_when_the_best_are_not_the_last(run, tmp_path):
    copied = copy_run(run, tmp_path / "r")
    set_eval_loss(copied, 12, {4: 0.30, 8: 0.50, 12: 0.40})
    found = run_checkpoints(copied, top=2)
    assert found.steps == [4, 12]  # best first
    assert [c.value for c in found.checkpoints] == [0.30, 0.40]
    soup = soup_from_hub(found, output_dir=tmp_path / "soup")
    assert_soup_is_mean(soup.output_dir, [ckpt(run, 4), ckpt(run, 12)])
    # greater_is_better flips the rule; since_step narrows the run
    assert run_checkpoints(copied, top=2, greater_is_better=True).steps == [8, 12]
    assert run_checkpoints(copied, top=2, since_step=8).steps == [12, 8]


def test_top_by_a_logged_accuracy_reads_the_trainer_name(run):
    found = run_checkpoints(run["out"], top=1, metric="accuracy")
    assert found.metric == "eval_accuracy"
    history = json.load(open(os.path.join(ckpt(run, 12), "trainer_state.json")))["log_history"]
    best = max((e["eval_accuracy"], e["step"]) for e in history if "eval_accuracy" in e)
    assert found.steps == [best[1]]


def test_a_checkpoint_without_eval_is_skipped_with_a_warning(run, tmp_path, caplog):
    copied = copy_run(run, tmp_path / "r")
    set_eval_loss(copied, 12, {8: None})
    with caplog.at_level(logging.WARNING, logger="hf_soups.runs"):
        found = run_checkpoints(copied, top=3)
    assert sorted(found.steps) == [4, 12]
    assert [c.step for c in found.skipped] == [8]
    assert "checkpoint-8 (step 8) is skipped" in caplog.text
    assert "Left out (no evaluation at their step): steps 8" in found.description


def test_top_with_an_unlogged_metric_names_the_logged_ones(run):
    with pytest.raises(SoupError, match="logged no eval_f1.*eval_accuracy, eval_loss"):
        run_checkpoints(run["out"], top=2, metric="eval_f1")


@pytest.mark.parametrize("kwargs", [{"last": 0}, {"top": -1}, {"last": 1.5}, {"since_step": -3}])
def test_bad_counts_are_refused(run, kwargs):
    from hf_soups import InvalidArgumentError

    with pytest.raises(InvalidArgumentError):
        run_checkpoints(run["out"], **kwargs)


def test_a_run_without_checkpoints(tmp_path):
    with pytest.raises(SoupError, match="no checkpoint"):
        run_checkpoints(tmp_path)


@pytest.mark.parametrize("shards, command", [("pytorch_model_fsdp_0", "accelerate merge-weights"),
                                             ("global_step12", "zero_to_fp32.py")])
def test_unconsolidated_checkpoints_name_the_command(run, tmp_path, shards, command):
    copied = copy_run(run, tmp_path / "r")
    os.remove(os.path.join(copied, "checkpoint-12", "model.safetensors"))
    os.makedirs(os.path.join(copied, "checkpoint-12", shards))
    with pytest.raises(SoupError, match=command):
        run_checkpoints(copied, last=2)
    set_eval_loss(copied, 12, {4: 0.1, 8: 0.2, 12: 0.9})  # ...but a choice that leaves it out is fine
    shutil.copy(os.path.join(copied, "checkpoint-12", "trainer_state.json"), copied)
    assert run_checkpoints(copied, top=2).steps == [4, 8]


def test_card_and_recipe_name_the_run_without_absolute_paths(run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    found = run_checkpoints(run["out"], last=3)
    soup = soup_from_hub(found, output_dir="soup")
    card = open(os.path.join("soup", "README.md")).read()
    recipe = open(os.path.join("soup", "recipe.yaml")).read()
    assert "Checkpoint soup of one run: steps 4, 8, 12 of `out` (eval_loss " in card
    assert "chosen: last 3" in card
    for text in (card, recipe):
        assert str(run["root"]) not in text and str(tmp_path) not in text
        assert os.path.realpath(run["out"]) not in text
    assert "checkpoint-4" in recipe
    assert soup.discovery["steps"] == STEPS
    # an absolute output_dir (outside the working directory) does not enter the card's How-to-use snippet either
    monkeypatch.chdir(run["root"])
    soup_from_hub(found, output_dir=tmp_path / "abs-soup")
    card = open(tmp_path / "abs-soup" / "README.md").read()
    assert str(tmp_path) not in card and 'from_pretrained("abs-soup")' in card
    callback_card = open(os.path.join(run["out"], "soup", "README.md")).read()  # output_dir=<absolute>/out
    assert str(run["root"]) not in callback_card


def test_check_compatibility_takes_a_run(run):
    report = check_compatibility(run_checkpoints(run["out"], last=2))
    assert report.compatible


# -- the CLI ------------------------------------------------------------------------------------------------------------

def _cli(*argv, cwd=None):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(os.path.dirname(__file__)),
                                                         os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "hf_soups", *argv], capture_output=True, text=True, env=env, cwd=cwd)


def test_cli_soup_top_and_check_last(run, tmp_path):
    copied = copy_run(run, tmp_path / "r", steps=[20, 100, 1000])
    set_eval_loss(copied, 1000, {20: 0.2, 100: 0.9, 1000: 0.3})
    r = _cli("soup", copied, "--top", "2", "--metric", "eval_loss", "--output", str(tmp_path / "soup"))
    assert r.returncode == 0, r.stderr
    assert_soup_is_mean(tmp_path / "soup", [ckpt(run, 4), ckpt(run, 12)])
    assert_clean(tmp_path / "soup")
    r = _cli("soup", copied, "--top", "2", "--greater-is-better", "--output", str(tmp_path / "soup2"))
    assert r.returncode == 0, r.stderr
    assert_soup_is_mean(tmp_path / "soup2", [ckpt(run, 8), ckpt(run, 12)])
    r = _cli("check", copied, "--last", "2")
    assert r.returncode == 0, r.stderr
    assert "checkpoint-100" in r.stdout and "checkpoint-1000" in r.stdout and "checkpoint-20" not in r.stdout


def test_cli_errors_speak_flags(run, tmp_path):
    r = _cli("soup", run["out"], "--top", "0", "--output", str(tmp_path / "s"))
    assert r.returncode == 2 and "--top" in r.stderr, r.stderr
    r = _cli("soup", run["out"], ckpt(run, 4), "--last", "2", "--output", str(tmp_path / "s"))
    assert r.returncode == 2 and "one RUN" in r.stderr, r.stderr
    r = _cli("soup", run["out"], "--top", "2", "--metric", "eval_f1", "--output", str(tmp_path / "s"))
    assert r.returncode == 10 and "--metric" in r.stderr, r.stderr


# -- SoupCallback -------------------------------------------------------------------------------------------------------

def test_callback_uniform_soup_is_the_mean_and_is_logged(run):
    soup_dir = os.path.join(run["out"], "soup")
    assert_soup_is_mean(soup_dir, [ckpt(run, s) for s in STEPS])
    assert_clean(soup_dir)
    logged = [e for e in run["trainer"].state.log_history if "soup_loss" in e]
    assert len(logged) == 2  # the uniform and the greedy soup
    assert run["uniform"].metrics["soup_loss"] == logged[0]["soup_loss"]
    assert "soup_accuracy" in logged[0]


def test_callback_evaluation_matches_an_independent_load_and_restores_the_weights(run):
    from transformers import AutoModelForSequenceClassification

    trainer = run["trainer"]
    final = tensors(ckpt(run, 12))
    for k, v in trainer.model.state_dict().items():  # the trained weights are back
        if k in final:
            torch.testing.assert_close(v, final[k], rtol=0, atol=0)
    from transformers import Trainer

    model = AutoModelForSequenceClassification.from_pretrained(os.path.join(run["out"], "soup"))
    again = Trainer(model=model, args=trainer.args, eval_dataset=trainer.eval_dataset,
                    compute_metrics=_accuracy).evaluate(metric_key_prefix="check")
    assert again["check_loss"] == pytest.approx(run["uniform"].metrics["soup_loss"], abs=1e-5)


def test_callback_greedy_with_compute_metrics(run):
    soup = run["greedy"].soup
    assert soup.method == "greedy" and soup.trace
    kept = [i for i in soup.ingredients if i.weight > 0]
    steps = [int(i.name.split("-")[1]) for i in kept]
    assert_soup_is_mean(soup.output_dir, [ckpt(run, s) for s in steps])
    # greedy scored each candidate with compute_metrics' accuracy, on the trainer's eval set (32 examples)
    assert ONE_HOT_CALLS and set(ONE_HOT_CALLS) == {32}
    assert all(0.0 <= i.score <= 1.0 for i in soup.ingredients)
    assert "soup_accuracy" in run["greedy"].metrics
    assert_clean(soup.output_dir)


def test_callback_pushes_the_soup_with_its_card(run, hub):
    from huggingface_hub import hf_hub_download

    card = open(hf_hub_download("alice/run-soup", "README.md", token=WRITE_TOKEN)).read()
    assert "Checkpoint soup of one run: steps 4, 8, 12 of `out`" in card
    assert str(run["root"]) not in card.split("## How to use")[0]


def test_callback_every_save_running_average(run):
    assert run["running"]._averaged_steps == [8, 12]
    assert_soup_is_mean(run["root"] / "swa", [ckpt(run, 8), ckpt(run, 12)])
    assert_clean(run["root"] / "swa")
    # both checkpoints are kept: an ordinary soup, whose card says what it is and whose recipe names them
    from hf_soups import Recipe

    assert list(Recipe.load(run["root"] / "swa" / "recipe.yaml").ingredients) == ["checkpoint-8", "checkpoint-12"]
    card = open(run["root"] / "swa" / "README.md").read()
    assert "steps 8, 12 of `out`" in card and "every save from step 8" in card


def test_callback_every_save_after_checkpoints_were_deleted_keeps_the_running_mean(run, tmp_path):
    """save_total_limit deleted a checkpoint the running mean holds: the soup is that mean (not a soup of what is
    left), and its card says no recipe re-creates it (no recipe.yaml naming a folder that is gone)."""
    from types import SimpleNamespace

    from hf_soups import SoupCallback

    copied = copy_run(run, tmp_path / "r")
    cb = SoupCallback(every_save=True, soup_dir=str(tmp_path / "swa"))
    args = SimpleNamespace(output_dir=copied)
    for step in STEPS:
        cb.on_save(args, SimpleNamespace(global_step=step), None)
    shutil.rmtree(os.path.join(copied, "checkpoint-4"))
    cb.on_train_end(args, SimpleNamespace(global_step=12), None)
    assert_soup_is_mean(tmp_path / "swa", [ckpt(run, s) for s in STEPS])
    assert not os.path.exists(tmp_path / "swa" / "recipe.yaml")
    assert "no recipe can re-create" in open(tmp_path / "swa" / "README.md").read()


def test_callback_greedy_needs_the_trainer():
    from hf_soups import InvalidArgumentError, SoupCallback

    with pytest.raises(InvalidArgumentError, match="trainer"):
        SoupCallback(method="greedy")


# -- Hub runs -----------------------------------------------------------------------------------------------------------

def _upload(api, repo, folder, message, ignore=("optimizer.pt", "scheduler.pt", "rng_state.pth",
                                                  "training_args.bin")):
    return api.upload_folder(folder_path=folder, repo_id=repo, commit_message=message,
                             ignore_patterns=list(ignore)).oid


def test_hub_every_save_run(run, hub, api, tmp_path):
    repo = "alice/run-every-save"
    api.create_repo(repo, exist_ok=True)
    shas = {}
    for s in STEPS:
        shas[s] = _upload(api, repo, ckpt(run, s), f"Training in progress, step {s}", ignore=(
            "optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin", "trainer_state.json"))
    api.upload_file(path_or_fileobj=b"# run\n", path_in_repo="README.md", repo_id=repo,
                    commit_message="Update README")  # no weight change: not a checkpoint
    api.upload_file(path_or_fileobj=os.path.join(ckpt(run, 12), "trainer_state.json"),
                    path_in_repo="trainer_state.json", repo_id=repo, commit_message="End of training")
    found = run_checkpoints(repo, last=2, endpoint=hub.url, token=WRITE_TOKEN)
    assert found.steps == [8, 12]
    assert found.refs == (f"{repo}@{shas[8]}", f"{repo}@{shas[12]}")
    top = run_checkpoints(repo, top=3, endpoint=hub.url, token=WRITE_TOKEN)
    history = json.load(open(os.path.join(ckpt(run, 12), "trainer_state.json")))["log_history"]
    losses = {e["step"]: e["eval_loss"] for e in history if "eval_loss" in e}
    assert top.steps == sorted(STEPS, key=lambda s: losses[s])
    soup = soup_from_hub(found, output_dir=tmp_path / "soup", access=HubAccess(endpoint=hub.url, token=WRITE_TOKEN))
    assert_soup_is_mean(soup.output_dir, [ckpt(run, 8), ckpt(run, 12)])
    assert soup.recipe.ingredients == (f"{repo}@{shas[8]}", f"{repo}@{shas[12]}")
    assert f"steps 8, 12 of `{repo}`" in open(tmp_path / "soup" / "README.md").read()
    assert_clean(soup.output_dir)


def test_hub_all_checkpoints_run(run, hub, api, tmp_path):
    repo = "alice/run-all-checkpoints"
    api.create_repo(repo, exist_ok=True)
    sha = api.upload_folder(folder_path=run["out"], repo_id=repo, allow_patterns=["checkpoint-*/*"],
                            commit_message="all checkpoints").oid
    found = run_checkpoints(repo, top=2, endpoint=hub.url, token=WRITE_TOKEN, cache_dir=str(tmp_path / "cache"))
    history = json.load(open(os.path.join(ckpt(run, 12), "trainer_state.json")))["log_history"]
    losses = {e["step"]: e["eval_loss"] for e in history if "eval_loss" in e}
    assert found.steps == sorted(STEPS, key=lambda s: losses[s])[:2]
    assert [c.name for c in found.checkpoints] == [f"{repo}@{sha}/checkpoint-{s}" for s in found.steps]
    for c in found.checkpoints:  # only model files were downloaded
        assert not set(os.listdir(c.local_dir)) & NEVER_CARRIED
    soup = soup_from_hub(found, output_dir=tmp_path / "soup")
    assert_soup_is_mean(soup.output_dir, [ckpt(run, s) for s in found.steps])
    card = open(tmp_path / "soup" / "README.md").read() + open(tmp_path / "soup" / "recipe.yaml").read()
    assert str(tmp_path / "cache") not in card and "hf-soups-runs" not in card  # the download folder is not named
    assert f"of `{repo}` at `{sha[:12]}`" in card
    assert_clean(soup.output_dir)


def test_hub_every_save_step_from_trainer_state_when_the_message_names_none(run, hub, api, tmp_path, caplog):
    repo = "alice/run-every-save-end"
    api.create_repo(repo, exist_ok=True)
    first = _upload(api, repo, ckpt(run, 4), "Training in progress, step 4", ignore=("*.pt", "*.pth", "*.bin",
                                                                                     "trainer_state.json"))
    end = _upload(api, repo, ckpt(run, 12), "End of training", ignore=("*.pt", "*.pth", "*.bin"))
    api.upload_file(path_or_fileobj=os.path.join(ckpt(run, 8), "model.safetensors"), path_in_repo="model.safetensors",
                    repo_id=repo, commit_message="Upload model")  # weights changed, no step anywhere: left out
    with caplog.at_level(logging.WARNING, logger="hf_soups.runs.hub"):
        found = run_checkpoints(repo, endpoint=hub.url, token=WRITE_TOKEN)
    assert found.steps == [4, 12]  # 12: the global_step of that commit's trainer_state.json
    assert found.refs == (f"{repo}@{first}", f"{repo}@{end}")
    assert "names no step" in caplog.text


@pytest.mark.parametrize("text", ["[" * 100_000 + "]" * 100_000, "{not json", "[1, 2]", '{"log_history": 7}',
                                  '{"log_history": [{"step": true, "eval_loss": 0.1}]}'])
def test_a_malformed_trainer_state_is_a_soup_error(run, tmp_path, text):
    copied = copy_run(run, tmp_path / "r")
    with open(os.path.join(copied, "checkpoint-12", "trainer_state.json"), "w") as f:
        f.write(text)
    with pytest.raises(SoupError, match="trainer_state.json|logged no eval_loss"):
        run_checkpoints(copied, top=2)
    assert run_checkpoints(copied, last=2).steps == [8, 12]  # last= does not need the metrics


@pytest.mark.parametrize("sha", ["../../../../tmp/escape", "main", None])
def test_a_hub_sha_that_is_not_a_sha_is_refused_before_any_path_is_built(hub, monkeypatch, sha):
    from types import SimpleNamespace

    from huggingface_hub import HfApi

    monkeypatch.setattr(HfApi, "repo_info", lambda *a, **k: SimpleNamespace(sha=sha, siblings=[]))
    with pytest.raises(SoupError, match="not 40 hex digits"):
        run_checkpoints("alice/whatever", endpoint=hub.url)


# -- untrusted run folders ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("target", ["outside", "inside"])
def test_a_checkpoint_folder_that_is_a_link_is_refused(run, tmp_path, target):
    copied = copy_run(run, tmp_path / "r", steps=[4, 8])
    elsewhere = ckpt(run, 12) if target == "outside" else os.path.join(copied, "checkpoint-8")
    os.symlink(elsewhere, os.path.join(copied, "checkpoint-16"))  # outside the run, or a second name for step 8
    with pytest.raises(SoupError, match="checkpoint-16.*link"):
        run_checkpoints(copied, last=2)
    code, err = _cli_in_process("soup", copied, "--last", "3", "--output", str(tmp_path / "s"))
    assert code == 10 and "checkpoint-16" in err, err
    assert not os.path.exists(tmp_path / "s")


@pytest.mark.parametrize("alias", ["checkpoint-008", "checkpoint-0000000000000000000008"])
def test_two_folders_of_one_step_are_refused(run, tmp_path, alias):
    copied = copy_run(run, tmp_path / "r")
    shutil.copytree(os.path.join(copied, "checkpoint-8"), os.path.join(copied, alias))
    with pytest.raises(SoupError, match=f"checkpoint-8 and {alias}|{alias} and checkpoint-8"):
        run_checkpoints(copied, last=3)


def _cli_in_process(*argv):
    """The CLI's exit code and stderr, in this process (a traceback would raise here)."""
    import contextlib
    import io

    from hf_soups.cli.main import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, err.getvalue()


def test_a_single_checkpoint_is_not_a_run_and_the_fix_names_its_run(run, tmp_path):
    code, err = _cli_in_process("soup", ckpt(run, 8), "--last", "2", "--output", str(tmp_path / "s"))
    assert code == 10 and "one checkpoint of a run" in err and repr(run["out"]) in err, err
    code, err = _cli_in_process("check", str(tmp_path), "--top", "2")  # an empty folder
    assert code == 10 and "no checkpoint" in err and "--output" not in err, err


def test_training_files_that_would_hang_on_read_are_never_opened(run, tmp_path):
    """optimizer.pt, scheduler.pt, rng_state.pth, training_args.bin and an older trainer_state.json as FIFOs: opening
    any of them blocks forever, so the soup finishing proves none is read (the newest trainer_state.json is)."""
    copied = copy_run(run, tmp_path / "r")
    for step in STEPS:
        for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin") + (
                ("trainer_state.json",) if step != 12 else ()):
            os.remove(os.path.join(copied, f"checkpoint-{step}", name))
            os.mkfifo(os.path.join(copied, f"checkpoint-{step}", name))
    r = subprocess.run([sys.executable, "-m", "hf_soups", "soup", copied, "--top", "2", "--output",
                        str(tmp_path / "s")], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(__file__))})
    assert r.returncode == 0, r.stderr
    assert_clean(tmp_path / "s")


def test_a_trainer_state_that_is_a_fifo_or_huge_is_never_read(run, tmp_path, monkeypatch):
    import builtins

    import hf_soups.runs as runs_module

    copied = copy_run(run, tmp_path / "r")
    huge = os.path.join(copied, "trainer_state.json")  # the output_dir's own (trainer.save_state()), 65 MB, sparse
    with open(huge, "wb") as f:
        f.truncate(65 << 20)
    opened = []
    for module in (runs_module, runs_module.folders):  # read_log_history, and _global_step (runs/folders.py)
        monkeypatch.setattr(module, "open", lambda p, *a, **k: opened.append(p) or builtins.open(p, *a, **k),
                            raising=False)
    assert run_checkpoints(copied, last=2).steps == [8, 12]
    assert huge not in opened
    os.remove(os.path.join(copied, "checkpoint-12", "trainer_state.json"))
    os.mkfifo(os.path.join(copied, "checkpoint-12", "trainer_state.json"))
    os.remove(huge)
    with pytest.raises(SoupError, match="no trainer_state.json") as e:
        run_checkpoints(copied, top=2)
    assert "last=N instead of top=N" in str(e.value)


def test_a_hub_run_folder_soup_replays_from_its_recipe(run, hub, api, tmp_path):
    """The recipe of an all_checkpoints soup names `user/run@<sha>/checkpoint-N`: replay downloads those folders
    (model files only) at that sha and re-creates the soup bit for bit; a folder the run lacks is not found."""
    from hf_soups import IngredientNotFoundError, Recipe, replay_recipe

    repo = "alice/run-replay"
    api.create_repo(repo, exist_ok=True)
    sha = api.upload_folder(folder_path=run["out"], repo_id=repo, allow_patterns=["checkpoint-*/*", "*.json"],
                            commit_message="all checkpoints").oid
    api.upload_file(path_or_fileobj=os.path.join(ckpt(run, 4), "model.safetensors"),  # a root model: never used
                    path_in_repo="model.safetensors", repo_id=repo, commit_message="final model")
    found = run_checkpoints(f"{repo}@{sha}", last=2, endpoint=hub.url, token=WRITE_TOKEN,
                            cache_dir=str(tmp_path / "c1"))
    soup_from_hub(found, output_dir=tmp_path / "soup")
    recipe = Recipe.load(tmp_path / "soup" / "recipe.yaml")
    assert list(recipe.ingredients) == [f"{repo}@{sha}/checkpoint-{s}" for s in (8, 12)]
    replay_recipe(recipe, tmp_path / "again",
                  access=HubAccess(endpoint=hub.url, token=WRITE_TOKEN, cache_dir=str(tmp_path / "c2")))
    a, b = tensors(tmp_path / "soup"), tensors(tmp_path / "again")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert_soup_is_mean(tmp_path / "again", [ckpt(run, 8), ckpt(run, 12)])
    assert not set(os.listdir(tmp_path / "c2" / "hf-soups-runs" / "alice--run-replay" / sha / "checkpoint-8")) \
        & NEVER_CARRIED
    missing = Recipe.from_dict({**recipe.to_dict(), "ingredients": [f"{repo}@{sha}/checkpoint-8",
                                                                    f"{repo}@{sha}/checkpoint-99"]})
    with pytest.raises(IngredientNotFoundError, match="checkpoint-99"):
        replay_recipe(missing, tmp_path / "never",
                      access=HubAccess(endpoint=hub.url, token=WRITE_TOKEN, cache_dir=str(tmp_path / "c3")))
    assert not os.path.exists(tmp_path / "never")
