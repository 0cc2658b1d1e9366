"""The `hf-soups` CLI through subprocess, against the loopback Hub."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import WRITE_TOKEN, publish, state_dict_of

from hf_soups.testing import make_tiny_bert


def run(*args, check_code=None, env=None):
    proc = subprocess.run([sys.executable, "-m", "hf_soups", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)
    if check_code is not None:
        assert proc.returncode == check_code, (proc.returncode, proc.stdout, proc.stderr)
    return proc


@pytest.fixture(scope="module")
def cli_repos(api, family):
    publish(api, family["a"], "alice/cli-a", tag="v1")
    publish(api, family["c"], "alice/cli-c")
    publish(api, family["d"], "alice/cli-d")
    return ["alice/cli-a@v1", "alice/cli-c", "alice/cli-d"]


def test_console_script_is_installed():
    exe = shutil.which("hf-soups", path=os.path.dirname(sys.executable))
    assert exe, "the hf-soups console script is not installed"
    proc = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "Exit codes" in proc.stdout


@pytest.mark.parametrize("command", ["check", "soup", "push", "recipe"])
def test_help_explains_every_command_with_an_example(command):
    out = run(command, "--help", check_code=0).stdout
    assert "example" in out and "--debug" in out


def test_check_exit_codes(hub, cli_repos, tmp_path):
    ok = run("check", *cli_repos, check_code=0)
    assert "Verdict: COMPATIBLE" in ok.stdout
    two = make_tiny_bert(tmp_path / "two", num_labels=2)
    bad = run("check", cli_repos[0], two, check_code=1)
    assert "INCOMPATIBLE" in bad.stdout and "num_labels" in bad.stdout


def test_soup_push_and_errors(hub, cli_repos, tmp_path):
    out = tmp_path / "soup"
    proc = run("soup", *cli_repos, "--output", out, "--push-to", "alice/cli-soup", "--token", WRITE_TOKEN,
               check_code=0)
    assert "Pushed to alice/cli-soup" in proc.stdout and WRITE_TOKEN not in proc.stdout + proc.stderr
    from transformers import AutoModelForSequenceClassification

    remote = AutoModelForSequenceClassification.from_pretrained("alice/cli-soup")
    local = state_dict_of(out)
    assert all(torch.equal(remote.state_dict()[k], local[k]) for k in local)
    again = run("soup", *cli_repos, "--output", out, check_code=6)
    assert "--overwrite" in again.stderr or "overwrite=True" in again.stderr
    missing = run("soup", "alice/nope", cli_repos[1], "--output", tmp_path / "x", "--token", WRITE_TOKEN,
                  check_code=3)
    assert missing.stderr.startswith("hf-soups: error:") and "Traceback" not in missing.stderr
    assert "alice/nope" in missing.stderr and "Fix:" in missing.stderr
    debug = run("soup", "alice/nope", cli_repos[1], "--output", tmp_path / "x", "--token", WRITE_TOKEN, "--debug")
    assert debug.returncode != 0 and "Traceback" in debug.stderr
    private = run("soup", "alice/nope", cli_repos[1], "--output", tmp_path / "y", check_code=4)
    assert "token" in private.stderr
    usage = run("soup", *cli_repos)
    assert usage.returncode == 2 and "--output" in usage.stderr


def test_push_command(hub, cli_repos, tmp_path):
    out = tmp_path / "soup"
    run("soup", *cli_repos[:2], "--output", out, check_code=0)
    proc = run("push", out, "alice/cli-pushed", "--token", WRITE_TOKEN, check_code=0)
    assert "alice/cli-pushed" in proc.stdout
    assert run("push", out, "alice/cli-pushed-2", check_code=4).stderr.startswith("hf-soups: error:")
    assert run("push", tmp_path / "not-a-soup", "alice/x", "--token", WRITE_TOKEN, check_code=3)


def test_recipe_round_trip_is_bit_identical(hub, cli_repos, tmp_path):
    first = tmp_path / "first"
    run("soup", *cli_repos, "--method", "weighted", "--weights", "0.2", "0.3", "0.5", "--dtype", "bfloat16",
        "--output", first, "--push-to", "alice/cli-recipe-soup", "--token", WRITE_TOKEN, check_code=0)
    from huggingface_hub import ModelCard

    card = ModelCard.load(os.path.join(first, "README.md"))
    recipe_file = tmp_path / "recipe.yaml"
    text = card.text[card.text.index("```yaml\n") + 8 :]
    recipe_file.write_text(text[: text.index("```")])
    from_file, from_repo = tmp_path / "from-file", tmp_path / "from-repo"
    run("recipe", recipe_file, "--output", from_file, check_code=0)
    run("recipe", "alice/cli-recipe-soup", "--output", from_repo, check_code=0)
    ref = state_dict_of(first)
    assert all(t.dtype == torch.bfloat16 for t in ref.values())
    for other in (from_file, from_repo):
        got = state_dict_of(other)
        assert got.keys() == ref.keys() and all(torch.equal(got[k], ref[k]) for k in ref)
    assert "weighted" in (from_repo / "README.md").read_text()


def test_greedy_from_a_csv_file(hub, tmp_path):
    from hf_soups.testing import make_tiny_sweep, sentiment_examples, write_csv

    refs = make_tiny_sweep(tmp_path, n_good=2)["refs"]
    csv = write_csv(tmp_path / "val.csv", sentiment_examples(120, seed=5), text_column="sentence")
    out = tmp_path / "greedy"
    proc = run("soup", *refs, "--method", "greedy", "--eval-dataset", csv, "--text-column", "sentence",
               "--output", out, check_code=0)
    assert "held-out" in proc.stdout
    readme = (out / "README.md").read_text()
    assert "## Greedy trace" in readme and str(csv) in readme
    assert f"{refs[-1]}: weight 0.0000" in proc.stdout


def test_a_missing_local_path_is_not_found_and_flag_fixes_read_as_flags(tmp_path):
    a = make_tiny_bert(tmp_path / "a", seed=0)
    missing = run("soup", tmp_path / "nope", a, "--output", tmp_path / "x", check_code=3)  # 3: not found
    assert "neither an existing local directory" in missing.stderr
    nan = run("soup", a, a, "--weights", "nan", "1", "--allow-single", "--output", tmp_path / "y", check_code=2)
    assert "e.g. --weights 0.5 0.3 0.2." in nan.stderr and "weights=" not in nan.stderr
