"""method="fisher" (recipes/fisher.py) through soup_from_hub and the CLI, and the protocol's private inputs (a method
handing the engine precomputed tensors): against fisher_merge's direct result and a per-example autograd Fisher."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from hf_soups import EvalSpec, replay_recipe, soup_from_hub
from hf_soups.checkpoint.meta import read_config
from hf_soups.checkpoint.reader import open_checkpoint
from hf_soups.errors import RecipeError
from hf_soups.evaluation.candidates import ModelHolder
from hf_soups.evaluation.evaluator import Evaluator
from hf_soups.evaluation.fisher import fisher_merge
from hf_soups.merge.plan import build_plan
from hf_soups.recipes import MethodContext, MethodResult, Needs, register_method
from hf_soups.recipes.protocol import as_result
from hf_soups.testing import make_tiny_bert, perturb_checkpoint, sentiment_examples, write_csv

from conftest import state_dict_of
from test_fisher import _direct_fisher

DATA = sentiment_examples(8, seed=3)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A tiny 3-class BERT and a perturbation of it, and the held-out csv."""
    root = tmp_path_factory.mktemp("fisher_method")
    base = make_tiny_bert(root / "base", seed=0, num_labels=3, initializer_range=0.2)
    refs = [os.fspath(base), os.fspath(perturb_checkpoint(base, root / "a", seed=1, scale=0.2))]
    return {"refs": refs, "csv": write_csv(root / "val.csv", DATA), "root": root}


def _fisher_merge_direct(refs, batch_size):
    config = read_config(os.path.join(refs[0], "config.json"), refs[0])
    readers = [open_checkpoint(r) for r in refs]
    plan = build_plan([r.tensors for r in readers], [1.0] * len(refs))
    holder = ModelHolder(refs[0], config, device="cpu")
    evaluator = Evaluator(DATA, refs[0], config, batch_size=batch_size, device="cpu")
    with fisher_merge(plan, readers, holder, evaluator.batches, evaluator.task_impl) as soup:
        return dict(soup.tensors()), set(soup.uniform)


def test_soup_from_hub_fisher_equals_fisher_merge_and_the_direct_fisher(pair, tmp_path):
    refs = pair["refs"]
    soup = soup_from_hub(refs, method="fisher", output_dir=tmp_path / "out",
                         eval_spec=EvalSpec(dataset=pair["csv"], batch_size=4, device="cpu"))
    written = state_dict_of(tmp_path / "out")
    direct, uniform = _fisher_merge_direct(refs, batch_size=4)
    states = [state_dict_of(r) for r in refs]
    fishers = [_direct_fisher(r, DATA["text"]) for r in refs]
    checked = 0
    for name, got in written.items():
        if not got.is_floating_point():
            assert torch.equal(got, states[0][name]), name  # integer buffers: the plan's int_rule
            continue
        thetas = [s[name].float() for s in states]
        if name in uniform:  # no gradient: the plain mean, by the merge kernel
            assert torch.allclose(got, (thetas[0] + thetas[1]) / 2, atol=1e-7), name
            continue
        assert torch.equal(got, direct[name]), name  # the engine copied fisher_merge's tensor bit for bit
        spread = (thetas[0] - thetas[1]).abs()
        want = (fishers[0][name] * thetas[0] + fishers[1][name] * thetas[1]) / (fishers[0][name] + fishers[1][name])
        assert bool(((got - want).abs() <= 2e-3 * spread + 1e-6 * want.abs()).all()), name
        checked += 1
    assert checked > 10
    plain = (states[0]["classifier.weight"] + states[1]["classifier.weight"]) / 2
    assert (written["classifier.weight"] - plain).abs().max() > 1e-4  # not the uniform soup
    params = soup.recipe.parameters
    assert params["examples"] == len(DATA["text"]) and params["replay"] == "rerun"
    assert soup.recipe.tensors == ()  # the private input is not recorded; replay re-runs the method
    again = replay_recipe(soup.recipe, output_dir=tmp_path / "again", allow_local=True)
    replayed = state_dict_of(tmp_path / "again")
    assert again.recipe.parameters["examples"] == params["examples"]
    assert all(torch.equal(replayed[n], written[n]) for n in written)


def test_fisher_examples_are_capped_by_max_samples_and_recorded(pair, tmp_path):
    soup = soup_from_hub(pair["refs"], method="fisher", output_dir=tmp_path / "out", eval_dataset=DATA,
                         eval_spec=EvalSpec(max_samples=5, batch_size=4, device="cpu"))
    assert soup.recipe.parameters["examples"] == 5 and soup.recipe.parameters["max_examples"] == 5
    # an in-memory dataset cannot be re-loaded: replay refuses, naming eval_dataset, before any download
    with pytest.raises(RecipeError, match="eval_dataset"):
        replay_recipe(soup.recipe, output_dir=tmp_path / "again", allow_local=True)
    assert not (tmp_path / "again").exists()


def test_fisher_examples_set_the_fishers_cap_only_and_are_replayed(pair, tmp_path):
    """`EvalSpec(fisher_examples=3)` caps each ingredient's Fisher at 3 examples, not the held-out scoring; it is
    recorded in the recipe and read back; a bad value in a recipe is refused naming the field."""
    from hf_soups.recipes.recipe import Recipe

    soup = soup_from_hub(pair["refs"], method="fisher", output_dir=tmp_path / "out", eval_dataset=pair["csv"],
                         eval_spec=EvalSpec(dataset=pair["csv"], fisher_examples=3, batch_size=4, device="cpu"))
    assert soup.recipe.parameters["examples"] == 3 and soup.recipe.parameters["max_examples"] == 3
    assert soup.recipe.evaluation.fisher_examples == 3
    record = soup.recipe.to_dict()
    assert record["evaluation"]["fisher_examples"] == 3
    assert Recipe.from_dict(record).evaluation.fisher_examples == 3
    three = soup_from_hub(pair["refs"], method="fisher", output_dir=tmp_path / "three", eval_dataset=pair["csv"],
                          eval_spec=EvalSpec(dataset=pair["csv"], max_samples=3, batch_size=4, device="cpu"))
    assert torch.equal(state_dict_of(tmp_path / "out")["classifier.weight"],
                       state_dict_of(tmp_path / "three")["classifier.weight"])  # the same 3 examples' Fisher
    record["evaluation"]["fisher_examples"] = 0
    with pytest.raises(RecipeError, match="fisher_examples"):
        Recipe.from_dict(record)


def test_cli_method_fisher(pair, tmp_path):
    out = tmp_path / "cli"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "hf_soups", "soup", *pair["refs"], "--method", "fisher",
                           "--eval-dataset", pair["csv"], "--output", os.fspath(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    direct, uniform = _fisher_merge_direct(pair["refs"], batch_size=64)
    written = state_dict_of(out)
    name = "classifier.weight"
    assert name not in uniform and torch.allclose(written[name], direct[name], rtol=1e-5, atol=1e-7)
    assert "fisher" in (out / "README.md").read_text()


@pytest.fixture()
def private_bias_method():
    """A test-only method registered for one test (and removed after it: the registry is the house's one list)."""
    from hf_soups.recipes import METHODS

    @register_method("_test_private_bias", paper="https://example.org", needs=Needs(),
                     description="Test only: the classifier bias set to 7 from a private input.")
    def _private_bias(ctx: MethodContext) -> MethodResult:
        from safetensors.torch import save_file

        directory = os.path.join(ctx.workdir, "mine")
        os.makedirs(directory)
        shape = ctx.plan.tensor("classifier.bias").shape
        save_file({"classifier.bias": torch.full(shape, 7.0)}, os.path.join(directory, "model.safetensors"))
        plan = ctx.plan.with_private_inputs(1).with_sources({"classifier.bias": ctx.plan.num_inputs})
        return MethodResult(plan, inputs=[directory])

    yield "_test_private_bias"
    METHODS.pop("_test_private_bias", None)


def test_a_private_input_is_read_by_the_engine_and_left_out_of_the_recipe(pair, tmp_path, private_bias_method):
    import tempfile

    before = {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("hf-soups-method-")}
    soup = soup_from_hub(pair["refs"], method="_test_private_bias", output_dir=tmp_path / "out")
    written = state_dict_of(tmp_path / "out")
    states = [state_dict_of(r) for r in pair["refs"]]
    assert torch.equal(written["classifier.bias"], torch.full_like(written["classifier.bias"], 7.0))
    name = "classifier.weight"
    assert torch.allclose(written[name], (states[0][name] + states[1][name]) / 2)
    assert soup.recipe.tensors == () and soup.recipe.parameters == {"replay": "rerun"}
    after = {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("hf-soups-method-")}
    assert after <= before  # the method's private directory is removed once the soup is written


def test_private_inputs_must_match_the_plan(pair):
    readers = [open_checkpoint(r) for r in pair["refs"]]
    plan = build_plan([r.tensors for r in readers], [1.0, 1.0])
    with pytest.raises(RecipeError, match="private inputs"):
        as_result(MethodResult(plan.with_private_inputs(1)), "mine")  # one declared, none given
    with pytest.raises(RecipeError, match="private inputs"):
        as_result(MethodResult(plan, inputs=["somewhere"]), "mine")  # one given, none declared
