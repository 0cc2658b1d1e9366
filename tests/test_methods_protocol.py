"""The method protocol (#23 item 1): a method is one file, registered once; the engine, the recipe, the card, the
evaluation and the replay follow the plan it returns (per-tensor weights, copies, the base as an input)."""

from __future__ import annotations

import hashlib
import importlib
import os
import re
import sys

import pytest
import torch
from conftest import state_dict_of
from datasets import Dataset

from hf_soups import MergeOptions, replay_recipe, soup_from_hub
from hf_soups.checkpoint import open_checkpoint
from hf_soups.errors import InvalidArgumentError, RecipeError, SoupError
from hf_soups.merge import MergePlan, build_plan, merge_state_dict
from hf_soups.recipes import METHODS, MethodContext, MethodResult, Needs, Recipe, register_method
from hf_soups.testing import sentiment_examples

QUIET = MergeOptions(progress=False)
HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture
def toy():
    """tests/toy_method.py, imported (so registered) for one test, then unregistered."""
    sys.modules.pop("toy_method", None)
    module = importlib.import_module("toy_method")
    yield module
    METHODS.pop("head_from_first", None)
    sys.modules.pop("toy_method", None)


@pytest.fixture
def registered():
    """Register test methods for one test; unregistered afterwards."""
    names: list[str] = []

    def register(name, fn, needs):
        register_method(name, paper="https://example.org/paper", description=f"test method {name}.",
                        needs=needs)(fn)
        names.append(name)

    yield register
    for name in names:
        METHODS.pop(name, None)


def _files_digest(directory):
    """sha256 of every safetensors file and index in a soup directory (independent of hf_soups)."""
    return {f: hashlib.sha256(open(os.path.join(directory, f), "rb").read()).hexdigest()
            for f in sorted(os.listdir(directory)) if f.endswith((".safetensors", ".index.json"))}


def _fp32(path):
    return {k: v.float() for k, v in state_dict_of(path).items()}


def test_toy_method_in_one_file_soups_evaluates_records_and_replays(toy, family, tmp_path):
    refs = [str(family["a"]), str(family["c"]), str(family["d"])]  # a and c sharded differently, d one file
    soup = soup_from_hub(refs, "head_from_first", output_dir=tmp_path / "soup", merge_options=QUIET)
    written = state_dict_of(soup.output_dir)
    inputs = [state_dict_of(r) for r in refs]
    head = sorted(k for k in written if k.startswith("classifier."))
    assert head == ["classifier.bias", "classifier.weight"]
    for name, tensor in written.items():
        if name in head:  # copied from the first ingredient, bit for bit
            assert torch.equal(tensor, inputs[0][name])
        elif tensor.is_floating_point():  # the mean of the three elsewhere
            torch.testing.assert_close(tensor, torch.stack([i[name] for i in inputs]).mean(0), rtol=0, atol=1e-6)
    assert not torch.equal(written["classifier.weight"], torch.stack([i["classifier.weight"] for i in inputs]).mean(0))

    # recorded: the recipe names the method, its parameters and the per-tensor plan; so does the card
    recipe = soup.recipe
    assert recipe.method == soup.method == "head_from_first"
    assert recipe.parameters == {"head": head, "source": refs[0]}
    assert list(recipe.tensors) == [{"source": 0, "tensors": head}]
    card = open(os.path.join(soup.output_dir, "README.md")).read()
    assert "The first ingredient's classifier, the mean of all ingredients elsewhere." in card
    assert "method: head_from_first" in card and re.search(r"parameters:\n\s+head:\n\s+- classifier.bias", card)

    # evaluated: the soup's row is scored from the written soup
    report = soup.evaluate(Dataset.from_dict(sentiment_examples(12, seed=5)), progress=False)
    scores = report.results["eval"]
    label = next(m for m in scores if "head_from_first" in m)
    assert 0.0 <= scores[label] <= 1.0 and "uniform_soup" in scores

    # replayed from the recipe text (as a card holds it): the same bytes, without re-running the method
    again = replay_recipe(Recipe.from_yaml(recipe.to_yaml()), tmp_path / "again", allow_local=True, progress=False)
    assert _files_digest(again.output_dir) == _files_digest(soup.output_dir)
    assert again.recipe.parameters == recipe.parameters and again.method == "head_from_first"


def test_base_input_and_per_tensor_weights_reach_the_engine_exactly(registered, family, tmp_path):
    seen: dict[str, object] = {}

    def stock_like(ctx: MethodContext) -> MethodResult:
        """t * mean(θ_i) + (1 - t) * θ_base with t per tensor; task arithmetic (base weight negative) on the head;
        equal weights that are not 1/count on the pooler."""
        seen["base"], seen["k"], seen["inputs"] = ctx.base, ctx.k, len(ctx.readers)
        seen["read"] = [ctx.read(i, "classifier.weight") for i in range(3)]  # the ingredients, then the base
        weights = {}
        for n, tp in enumerate(t for t in ctx.plan.tensors if t.average):
            t = 0.25 + 0.5 * (n % 3) / 2
            weights[tp.name] = [t / ctx.k] * ctx.k + [1.0 - t]
        weights["classifier.weight"] = [0.6, 0.6, -0.2]
        weights["bert.pooler.dense.weight"] = [1.0, 1.0, 0.0]  # equal but not 1/2: applied as given
        return MethodResult(ctx.plan.with_tensor_weights(weights), parameters={"t": "per tensor"})

    registered("stock_like", stock_like, Needs(base=True))
    refs = [str(family["a"]), str(family["b"])]  # b is bf16: inputs of mixed dtypes
    with pytest.raises(InvalidArgumentError, match=r"needs the base.*base="):
        soup_from_hub(refs, "stock_like", output_dir=tmp_path / "nobase", merge_options=QUIET)
    assert not os.path.exists(tmp_path / "nobase")
    soup = soup_from_hub(refs, "stock_like", base=str(family["base"]), output_dir=tmp_path / "soup",
                         merge_options=QUIET)
    assert seen["base"] is not None and seen["k"] == 2 and seen["inputs"] == 3
    for path, tensor in zip([*refs, family["base"]], seen["read"]):
        assert torch.equal(tensor, state_dict_of(path)["classifier.weight"])
    written = state_dict_of(soup.output_dir)
    a, b, base = _fp32(refs[0]), _fp32(refs[1]), _fp32(family["base"])
    assert len(soup.recipe.tensors) == 5  # recorded: three values of t, the head, the pooler
    for name, tensor in written.items():
        if not tensor.is_floating_point():
            continue
        ws = next(tp["weights"] for tp in soup.recipe.tensors if name in tp["tensors"])
        direct = ws[0] * a[name].double() + ws[1] * b[name].double() + ws[2] * base[name].double()
        torch.testing.assert_close(tensor.double(), direct.to(tensor.dtype).double(), rtol=0, atol=1e-6)
    pooled = a["bert.pooler.dense.weight"].double() + b["bert.pooler.dense.weight"].double()
    torch.testing.assert_close(written["bert.pooler.dense.weight"].double(), pooled, rtol=0, atol=1e-6)
    assert soup.recipe.base == str(family["base"]) and soup.recipe.base_input
    again = replay_recipe(Recipe.from_yaml(soup.recipe.to_yaml()), tmp_path / "again", allow_local=True,
                          progress=False)
    assert _files_digest(again.output_dir) == _files_digest(soup.output_dir)


def test_in_memory_candidates_follow_per_tensor_plans(family):
    """The evaluation's model skeleton computes a per-tensor plan exactly as the engine writes it."""
    from hf_soups.checkpoint.meta import read_config
    from hf_soups.evaluation.candidates import ModelHolder

    refs = [family["a"], family["d"]]
    readers = [open_checkpoint(r) for r in [*refs, family["base"]]]
    try:
        plan = build_plan([r.tensors for r in readers[:2]], [1, 1]).with_base()
        floating = [t.name for t in plan.tensors if t.average]
        plan = plan.with_tensor_weights({floating[0]: [0.5, 0.5, 0.0], floating[1]: [0.9, 0.9, -0.8],
                                         floating[3]: [1.0, 1.0, 0.0]}) \
            .with_sources({floating[2]: 2, "classifier.bias": 1})
        engine = merge_state_dict(plan, readers)
        holder = ModelHolder(str(refs[0]), read_config(os.path.join(refs[0], "config.json"), "a"))
        model = holder.load_plan(plan, readers)
        state = model.state_dict()
        for name in floating:
            assert torch.equal(state[holder.name_map.get(name, name)], engine[name]), name
        assert torch.equal(engine[floating[2]], readers[2].read(floating[2]).float())
        two = [r.read(floating[3]).float() for r in readers[:2]]
        torch.testing.assert_close(engine[floating[3]], two[0] + two[1], rtol=0, atol=1e-6)  # as given, not a mean
    finally:
        for r in readers:
            r.close()


@pytest.mark.parametrize("threads", ["1", "2"])
def test_per_tensor_weights_through_the_threads_and_the_exact_path(family, tmp_path, monkeypatch, threads):
    """The engine's serial and threaded writers, and its fp64 recomputation when the fp32 sum overflows, follow the
    tensor's own weights (the base among them, negative)."""
    from hf_soups.merge import merge_to_directory

    monkeypatch.setenv("HF_SOUPS_NUM_THREADS", threads)
    paths = [family["a"], family["b"], family["base"]]
    readers = [open_checkpoint(p) for p in paths]
    try:
        plan = build_plan([r.tensors for r in readers[:2]], [1, 1]).with_base()
        big = [2e38, 2e38, -2e38]  # on weights near 1: the fp32 sum overflows (4e38), 2e38 * (a + b - base) fits
        plan = plan.with_tensor_weights({"bert.embeddings.LayerNorm.weight": big,
                                         "bert.pooler.dense.weight": [0.7, 0.7, -0.4]})
        os.makedirs(tmp_path / "out")
        merge_to_directory(plan, readers, str(tmp_path / "out"), progress=False)
    finally:
        for r in readers:
            r.close()
    out = state_dict_of(tmp_path / "out")
    a, b, base = (_fp32(p) for p in paths)
    for name, ws in (("bert.embeddings.LayerNorm.weight", big), ("bert.pooler.dense.weight", [0.7, 0.7, -0.4])):
        direct = ws[0] * a[name].double() + ws[1] * b[name].double() + ws[2] * base[name].double()
        if ws is big:  # the exact path was needed (the fp32 partial sum overflows), and its result fits fp32
            assert not torch.isfinite((a[name] * big[0]) + (b[name] * big[1])).all() and direct.abs().max() < 3e38
        torch.testing.assert_close(out[name].double(), direct.float().double(), rtol=1e-6 if ws is big else 0,
                                   atol=0 if ws is big else 1e-6)
    name = "bert.embeddings.word_embeddings.weight"  # no override: the plan-wide mean
    torch.testing.assert_close(out[name], (a[name] + b[name]) / 2, rtol=0, atol=1e-6)


@pytest.mark.parametrize("labels", [None, 5])
def test_a_base_lacking_a_weighted_tensor_is_named_before_anything_is_written(family, tmp_path, labels):
    """The base need not have the ingredients' head (another label count, or none): a plan that weighs it from the
    base is refused naming the tensor and the base; the same plan with the mean there is fine."""
    from hf_soups.merge import merge_to_directory
    from hf_soups.testing import make_tiny_bert

    base = make_tiny_bert(tmp_path / "base", seed=0, num_labels=labels or 3)
    if labels is None:  # a headless base: the encoder only
        from safetensors.torch import load_file, save_file

        weights = os.path.join(base, "model.safetensors")
        save_file({k: v for k, v in load_file(weights).items() if not k.startswith("classifier.")}, weights)
    readers = [open_checkpoint(p) for p in (family["a"], family["d"], base)]
    try:
        plan = build_plan([r.tensors for r in readers[:2]], [1, 1]).with_base()
        bad = plan.with_tensor_weights({"classifier.weight": [0.4, 0.4, 0.2]})
        os.makedirs(tmp_path / "out")
        with pytest.raises(SoupError, match=r"'base'|classifier.weight") as err:
            merge_to_directory(bad, readers, str(tmp_path / "out"), progress=False)
        assert os.listdir(tmp_path / "out") == []
        from hf_soups.checkpoint.meta import read_config
        from hf_soups.evaluation.candidates import ModelHolder

        holder = ModelHolder(str(family["a"]), read_config(os.path.join(family["a"], "config.json"), "a"))
        with pytest.raises(SoupError, match="classifier.weight"):  # an in-memory candidate too
            holder.load_plan(bad, readers)
        assert "classifier.weight" in str(err.value) and ("missing" if labels is None else "shape") in str(err.value)
        ok = plan.with_tensor_weights({"bert.pooler.dense.bias": [0.4, 0.4, 0.2]})
        assert merge_state_dict(ok, readers)["classifier.weight"].shape == readers[0].tensors["classifier.weight"].shape
    finally:
        for r in readers:
            r.close()


def test_plan_wide_plans_keep_their_json_and_per_tensor_plans_round_trip(family):
    readers = [open_checkpoint(family["a"]), open_checkpoint(family["d"])]
    try:
        plan = build_plan([r.tensors for r in readers], [1, 3])
        text = plan.to_json()
        assert '"source"' not in text and '"base"' not in text and '"weights": [0.25, 0.75]' in text
        assert text.count('"weights"') == 1 and MergePlan.from_json(text) == plan
        rich = plan.with_base().with_tensor_weights({"classifier.weight": [0.5, 0.5, -1.0]}) \
            .with_sources({"classifier.bias": 2})
        assert MergePlan.from_json(rich.to_json()) == rich
        assert rich.with_weights([1, 1]).overrides() == rich.overrides() == [  # in plan order
            {"source": 2, "tensors": ["classifier.bias"]},
            {"weights": [0.5, 0.5, -1.0], "tensors": ["classifier.weight"]}]
        assert plan.with_base().with_overrides(rich.overrides()) == rich
        assert merge_state_dict(plan, readers).keys() == {t.name for t in plan.tensors}
    finally:
        for r in readers:
            r.close()


@pytest.mark.parametrize(("change", "message"), [
    (lambda p: p.with_tensor_weights({"classifier.weight": [0.5, 0.5]}), "2 weights for 3 inputs"),
    (lambda p: p.with_tensor_weights({"classifier.weight": [0.5, float("nan"), 0.1]}), "not finite"),
    (lambda p: p.with_tensor_weights({"classifier.weight": [0.0, 0.0, 0.0]}), "all zero"),
    (lambda p: p.with_tensor_weights({"classifier.weight": [1e39, 1.0, 0.0]}), "beyond fp32"),
    (lambda p: p.with_tensor_weights({"no.such.tensor": [1.0, 0.0, 0.0]}), "no such tensor"),
    (lambda p: p.with_sources({"classifier.bias": 3}), "input 3 does not exist"),
    (lambda p: p.with_sources({"classifier.bias": True}), "does not exist"),
])
def test_invalid_per_tensor_plans_are_refused_naming_the_tensor(family, change, message):
    with open_checkpoint(family["a"]) as a, open_checkpoint(family["d"]) as d:
        plan = build_plan([a.tensors, d.tensors], [1, 1]).with_base()
    with pytest.raises(SoupError, match=message):
        change(plan)


def _recipe(**extra):
    return {"method": "uniform", "ingredients": ["user/a@" + "0" * 40, "user/b@" + "1" * 40], "weights": [0.5, 0.5],
            **extra}


@pytest.mark.parametrize("extra", [
    {"tensors": [{"source": 2, "tensors": ["x"]}]},  # no base input: index 2 does not exist
    {"tensors": [{"weights": [0.5, 0.5, 0.0], "tensors": ["x"]}]},  # three weights for two inputs
    {"tensors": [{"weights": [0.5, float("nan")], "tensors": ["x"]}]},
    {"tensors": [{"weights": [0.5, 0.5], "source": 0, "tensors": ["x"]}]},
    {"tensors": [{"weights": [0.5, 0.5], "tensors": []}]},
    {"tensors": "all"},
    {"parameters": {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {"i": {"j": 1}}}}}}}}}}},
    {"parameters": {"t": float("inf")}},
    {"base_input": True},  # no pinned base to read
])
def test_recipe_per_tensor_fields_from_a_card_are_validated(extra):
    with pytest.raises(RecipeError) as err:
        Recipe.from_dict(_recipe(**extra))
    assert "unknown field" not in str(err.value) and re.search(r"tensors|parameters|base_input", str(err.value))


def test_recipe_without_per_tensor_fields_reads_as_before():
    recipe = Recipe.from_dict(_recipe())
    assert "tensors" not in recipe.to_dict() and "parameters" not in recipe.to_dict()
    assert "base_input" not in recipe.to_yaml()
    ok = Recipe.from_dict(_recipe(base="user/base@" + "2" * 40, base_input=True,
                                  tensors=[{"weights": [0.5, 0.5, -0.25], "tensors": ["x"]}], parameters={"t": [1, 2]}))
    assert Recipe.from_yaml(ok.to_yaml()) == ok


def test_a_method_returning_something_else_is_named(registered, family, tmp_path):
    registered("returns_weights", lambda ctx: [0.5, 0.5], Needs())
    with pytest.raises(RecipeError, match="'returns_weights' returned list"):
        soup_from_hub([family["a"], family["d"]], "returns_weights", output_dir=tmp_path / "s", merge_options=QUIET)
    assert not os.path.exists(tmp_path / "s")


def test_no_module_branches_on_a_method_name():
    """The engine, the evaluation (held-out, candidates, baselines), the card, the CLI and `_brew` read the
    registry: no `method == "greedy"`-style branches."""
    import inspect

    from hf_soups import api

    root = os.path.join(os.path.dirname(HERE), "hf_soups")
    pattern = re.compile(r"""method\s*(==|!=|in)\s*[("'\[]\s*["']?(uniform|weighted|greedy|learned)""")
    texts = {"api._brew": inspect.getsource(api._brew), "card.py": open(os.path.join(root, "card.py")).read()}
    for sub in ("merge", "evaluation", "cli", "recipes"):
        for folder, _, files in os.walk(os.path.join(root, sub)):
            texts.update({f: open(os.path.join(folder, f)).read() for f in files if f.endswith(".py")})
    assert len(texts) > 20
    found = [f"{name}: {m.group(0)}" for name, text in texts.items() for m in pattern.finditer(text)]
    assert found == []
    assert re.search(r"method\s*==\s*.greedy", 'if method == "greedy":')  # the pattern finds what it looks for
