"""LoRA adapters as ingredients (#26): the soup of adapters is the soup of their merged models.

The oracle is peft itself: `PeftModel.from_pretrained(base, adapter).merge_and_unload()` for each adapter, then
`torch.stack(...).mean(0)`. hf_soups reads the adapters without peft.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file

from hf_soups import check_compatibility, soup_from_hub
from hf_soups.errors import IncompatibleIngredientsError, SoupError
from hf_soups.testing import make_tiny_bert, perturb_checkpoint

peft = pytest.importorskip("peft", reason="peft is the oracle of these tests (setup.cfg's test extra installs it)")


def _load_base(base: str) -> torch.nn.Module:
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(base)


def make_adapter(base: str, path: str, seed: int, **lora: object) -> str:
    """A peft LoRA adapter of `base` with random, non-zero lora_B (so every delta is real), saved at `path`."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    lora.setdefault("target_modules", ["query", "value"])
    model = get_peft_model(_load_base(base), LoraConfig(r=lora.pop("r", 4), lora_alpha=lora.pop("lora_alpha", 8),
                                                        **lora))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name or "lora_embedding_B" in name or "modules_to_save" in name:
                param.normal_(0, 0.2)
    model.save_pretrained(path)
    return path


def merged(base: str, adapter: str) -> dict[str, torch.Tensor]:
    """peft's own merge of one adapter into its base."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(_load_base(base), adapter).merge_and_unload()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def full_state(path: str) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in _load_base(path).state_dict().items()}


def assert_soup_is_mean(out: str, states: list[dict[str, torch.Tensor]], atol: float = 1e-5) -> None:
    soup = load_file(os.path.join(out, "model.safetensors"))
    assert set(soup) <= set(states[0]) and len(soup) > 10
    for name, tensor in soup.items():
        if not tensor.is_floating_point():
            continue
        truth = torch.stack([s[name].float() for s in states]).mean(0)
        torch.testing.assert_close(tensor.float(), truth, atol=atol, rtol=0, msg=name)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> str:
    return make_tiny_bert(tmp_path_factory.mktemp("adapters") / "base", seed=0)


@pytest.fixture(scope="module")
def plain(base, tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("plain")
    return [make_adapter(base, str(root / f"a{i}"), seed=10 + i) for i in range(3)]


def test_uniform_soup_of_lora_adapters_equals_mean_of_peft_merges(base, plain, tmp_path):
    soup = soup_from_hub(plain, output_dir=tmp_path / "soup", merge_options=_quiet())
    assert_soup_is_mean(soup.output_dir, [merged(base, a) for a in plain])
    # the base's companions: config and tokenizer
    assert json.load(open(tmp_path / "soup" / "config.json"))["architectures"] == ["BertForSequenceClassification"]
    assert os.path.isfile(tmp_path / "soup" / "tokenizer.json") or os.path.isfile(tmp_path / "soup" / "vocab.txt")


def test_rslora_rank_pattern_and_embedding_lora(base, tmp_path):
    adapters = [
        make_adapter(base, str(tmp_path / "rs"), seed=1, use_rslora=True, r=8, lora_alpha=4),
        make_adapter(base, str(tmp_path / "rp"), seed=2, rank_pattern={"layer.1.attention.self.query": 2},
                     alpha_pattern={"value": 3}),
        # lora_embedding_A/B: ΔW = (B·A)ᵀ, the transposed path (as fan_in_fan_out)
        make_adapter(base, str(tmp_path / "emb"), seed=3, target_modules=["word_embeddings", "key"], r=2),
    ]
    soup = soup_from_hub(adapters, output_dir=tmp_path / "soup", merge_options=_quiet())
    assert_soup_is_mean(soup.output_dir, [merged(base, a) for a in adapters])


def test_modules_to_save_head_and_different_targets(base, tmp_path):
    adapters = [
        make_adapter(base, str(tmp_path / "h1"), seed=4, task_type="SEQ_CLS"),  # classifier in modules_to_save
        make_adapter(base, str(tmp_path / "h2"), seed=5, task_type="SEQ_CLS", target_modules=["dense"]),
    ]
    report = check_compatibility(adapters, arch_check=False)
    assert report.compatible, report
    assert any(w.field == "target_modules" and "zero" in w.message for w in report.warnings)
    soup = soup_from_hub(adapters, output_dir=tmp_path / "soup", merge_options=_quiet())
    states = [merged(base, a) for a in adapters]
    assert not torch.equal(states[0]["classifier.weight"], full_state(base)["classifier.weight"])  # a real head
    assert_soup_is_mean(soup.output_dir, states)


def test_full_fine_tune_mixed_with_two_adapters(base, plain, tmp_path):
    full = perturb_checkpoint(base, tmp_path / "full", seed=7)
    refs = [full, plain[0], plain[1]]
    soup = soup_from_hub(refs, "weighted", weights=[2, 1, 1], output_dir=tmp_path / "soup", merge_options=_quiet())
    states = [full_state(full), merged(base, plain[0]), merged(base, plain[1])]
    out = load_file(os.path.join(soup.output_dir, "model.safetensors"))
    for name, tensor in out.items():
        if tensor.is_floating_point():
            truth = (2 * states[0][name] + states[1][name] + states[2][name]) / 4
            torch.testing.assert_close(tensor, truth, atol=1e-5, rtol=0, msg=name)


def _quiet():
    from hf_soups import MergeOptions

    return MergeOptions(progress=False)


# --- the verdict ---------------------------------------------------------------------------------------------------


def test_adapters_of_two_bases_are_refused_naming_the_adapter(base, plain, tmp_path):
    other = make_tiny_bert(tmp_path / "other-base", seed=1)  # same architecture, other weights
    stranger = make_adapter(other, str(tmp_path / "stranger"), seed=6)
    report = check_compatibility([plain[0], stranger], arch_check=False)
    assert not report.compatible
    (problem,) = [p for p in report.problems if p.field == "base"]
    assert problem.ingredient == stranger and "adapts" in problem.message and "base=" in problem.fix
    with pytest.raises(IncompatibleIngredientsError, match="stranger"):
        soup_from_hub([plain[0], stranger], output_dir=tmp_path / "soup", merge_options=_quiet())
    assert not os.path.exists(tmp_path / "soup")


def test_a_copy_of_the_base_elsewhere_is_the_same_base(base, plain, tmp_path):
    """Identical weight files at another path are one base (digests), so its adapters soup together."""
    copy = shutil.copytree(base, tmp_path / "base-copy")
    moved = make_adapter(str(copy), str(tmp_path / "moved"), seed=8)
    assert check_compatibility([plain[0], moved], arch_check=False).compatible


@pytest.mark.parametrize("kind", ["dora", "ia3", "lora_bias", "bias_all"])
def test_refused_adapter_kinds_name_reason_and_fix(base, plain, tmp_path, kind):
    from peft import IA3Config, get_peft_model

    path = str(tmp_path / kind)
    if kind == "ia3":
        get_peft_model(_load_base(base), IA3Config(target_modules=["query", "value"], feedforward_modules=[])
                       ).save_pretrained(path)
        field = "peft_type"
    else:
        extra = {"dora": {"use_dora": True}, "lora_bias": {"lora_bias": True}, "bias_all": {"bias": "all"}}[kind]
        make_adapter(base, path, seed=9, **extra)
        field = {"dora": "use_dora", "lora_bias": "lora_bias", "bias_all": "bias"}[kind]
    report = check_compatibility([plain[0], path], arch_check=False)
    (problem,) = [p for p in report.problems if p.ingredient == path]
    assert problem.field == field and ("merge_and_unload" in problem.fix or "LoRA" in problem.fix)
    with pytest.raises(IncompatibleIngredientsError) as err:
        soup_from_hub([plain[0], path], output_dir=tmp_path / "soup", merge_options=_quiet())
    assert isinstance(err.value, SoupError) and path in str(err.value) and field in str(err.value)


def test_dora_magnitude_vectors_are_refused_even_if_the_config_hides_them(base, plain, tmp_path):
    path = make_adapter(base, str(tmp_path / "dora"), seed=9, use_dora=True)
    config = json.load(open(os.path.join(path, "adapter_config.json")))
    config["use_dora"] = False
    json.dump(config, open(os.path.join(path, "adapter_config.json"), "w"))
    report = check_compatibility([plain[0], path], arch_check=False)
    assert [p.field for p in report.problems if p.ingredient == path] == ["use_dora"]


def test_check_on_an_adapter_folder_no_longer_says_no_config(base, plain, tmp_path):
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-m", "hf_soups", "check", plain[0], plain[1]],
                         capture_output=True, text=True, timeout=120)
    assert "config.json" not in run.stderr, run.stderr
    assert run.returncode == 0, run.stdout + run.stderr


# --- through the loopback Hub ---------------------------------------------------------------------------------------


def _publish_adapter(api, path: str, repo_id: str, base_repo: str) -> str:
    from conftest import publish

    config_path = os.path.join(path, "adapter_config.json")
    config = json.load(open(config_path))
    config["base_model_name_or_path"] = base_repo
    json.dump(config, open(config_path, "w"))
    with open(os.path.join(path, "README.md"), "w") as f:  # as peft writes it for a Hub base
        f.write(f"---\nbase_model: {base_repo}\nlibrary_name: peft\n---\n\n# {repo_id}\n")
    return publish(api, path, repo_id)


def test_hub_adapters_and_a_hub_fine_tune_equal_peft(api, hub, base, tmp_path):
    from conftest import publish

    base_sha = publish(api, base, "alice/lora-base")
    adapters = [make_adapter(base, str(tmp_path / f"h{i}"), seed=20 + i, task_type="SEQ_CLS") for i in range(2)]
    for i, path in enumerate(adapters):
        _publish_adapter(api, path, f"alice/lora-{i}", "alice/lora-base")
    full = perturb_checkpoint(base, tmp_path / "full", seed=30)
    publish(api, full, "alice/lora-full")
    refs = ["alice/lora-0", "alice/lora-1", "alice/lora-full"]
    states = [merged(base, adapters[0]), merged(base, adapters[1]), full_state(full)]
    for stream in (False, True):
        from hf_soups import MergeOptions

        soup = soup_from_hub(refs, output_dir=tmp_path / f"soup-{stream}",
                             merge_options=MergeOptions(progress=False, stream=stream))
        assert_soup_is_mean(soup.output_dir, states)
    assert soup.ingredients[0].adapter.base.revision == base_sha  # the base, pinned to its sha


# --- as_adapter: the soup written as one LoRA adapter ---------------------------------------------------------------


def _share_a(source: str, target: str) -> None:
    """Give `target` the lora_A matrices of `source`: the adapters then share one subspace."""
    from safetensors.torch import save_file

    a, t = load_file(os.path.join(source, "adapter_model.safetensors")), load_file(os.path.join(target,
                                                                                              "adapter_model.safetensors"))
    save_file({k: (a[k] if "lora_A" in k else v) for k, v in t.items()}, os.path.join(target,
              "adapter_model.safetensors"))


def _deltas(base: str, states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    ref = full_state(base)
    mean = {k: torch.stack([s[k].double() for s in states]).mean(0) for k in states[0] if states[0][k].is_floating_point()}
    return {k: mean[k] - ref[k].double() for k in mean}


def test_as_adapter_reproduces_a_rank_r_soup_exactly(base, tmp_path):
    adapters = [make_adapter(base, str(tmp_path / f"s{i}"), seed=40 + i, task_type="SEQ_CLS") for i in range(3)]
    for other in adapters[1:]:
        _share_a(adapters[0], other)
    soup = soup_from_hub(adapters, output_dir=tmp_path / "soup", as_adapter=4, merge_options=_quiet())
    export = soup.adapter_export
    assert export["exact"] and export["worst"][1] < 1e-6 and len(export["errors"]) == 4
    assert "exact" in soup.card.text and "As a LoRA adapter" in soup.card.text
    truth = _deltas(base, [merged(base, a) for a in adapters])
    got = _deltas(base, [merged(base, soup.output_dir)])  # the written adapter, loaded and merged by peft
    for name in truth:
        torch.testing.assert_close(got[name], truth[name], atol=1e-5, rtol=0, msg=name)
    from hf_soups import load_recipe, replay_recipe

    replay = replay_recipe(load_recipe(soup.output_dir), tmp_path / "replay", allow_local=True, progress=False)
    assert not os.path.exists(os.path.join(replay.output_dir, "model.safetensors"))  # an adapter again, bit for bit
    assert open(os.path.join(replay.output_dir, "adapter_model.safetensors"), "rb").read() == \
        open(os.path.join(soup.output_dir, "adapter_model.safetensors"), "rb").read()


def test_as_adapter_reports_the_truncation_error_per_module(base, plain, tmp_path):
    soup = soup_from_hub(plain, "weighted", weights=[3, 2, 1], output_dir=tmp_path / "soup", as_adapter=2,
                         merge_options=_quiet())
    export = soup.adapter_export
    assert not export["exact"]
    states = [merged(base, a) for a in plain]
    ref = full_state(base)
    truth = {k: (3 * states[0][k].double() + 2 * states[1][k].double() + states[2][k].double()) / 6 - ref[k].double()
             for k in ref if ref[k].is_floating_point()}
    got = _deltas(base, [merged(base, soup.output_dir)])
    for module, error in export["errors"].items():
        name = f"{module}.weight"
        independent = float((got[name] - truth[name]).norm() / truth[name].norm())
        assert 0.05 < independent and abs(independent - error) < 1e-4, (module, independent, error)
    assert export["worst"][1] == max(export["errors"].values())
    assert f"{export['worst'][1]:.2e}" in soup.card.text


def test_as_adapter_arguments_are_checked_first(base, plain, tmp_path):
    from hf_soups.errors import InvalidArgumentError

    for kwargs in ({"as_adapter": True}, {"as_adapter": 0}, {"as_adapter": "8"}, {"rank": 4}):
        with pytest.raises(InvalidArgumentError, match="rank"):
            soup_from_hub(plain, output_dir=tmp_path / "soup", merge_options=_quiet(), **kwargs)
    full = perturb_checkpoint(base, tmp_path / "full", seed=7)
    with pytest.raises(InvalidArgumentError, match="full model"):
        soup_from_hub([plain[0], full], output_dir=tmp_path / "soup", as_adapter=2, merge_options=_quiet())
    assert not os.path.exists(tmp_path / "soup")


def test_cli_as_adapter_and_rank_speak_flags(plain, tmp_path):
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-m", "hf_soups", "soup", plain[0], plain[1], "--as-adapter",
                          "--output", str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "--rank" in run.stderr and "rank=" not in run.stderr, run.stderr
    run = subprocess.run([sys.executable, "-m", "hf_soups", "soup", plain[0], plain[1], "--as-adapter", "--rank", "4",
                          "--output", str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert os.path.isfile(tmp_path / "o" / "adapter_config.json") and not os.path.exists(tmp_path / "o" / "model.safetensors")


# --- discovery ------------------------------------------------------------------------------------------------------


def test_find_lists_adapters_only_with_the_flag(api, hub, base, tmp_path):
    from conftest import publish

    from hf_soups import find_ingredients

    publish(api, base, "alice/find-base")
    for i in range(2):
        path = make_adapter(base, str(tmp_path / f"f{i}"), seed=50 + i)
        _publish_adapter(api, path, f"alice/find-lora-{i}", "alice/find-base")
    dora = make_adapter(base, str(tmp_path / "fd"), seed=52, use_dora=True)
    _publish_adapter(api, dora, "alice/find-dora", "alice/find-base")
    without = find_ingredients("alice/find-base", arch_check=False, progress=False)
    assert not any(c.repo_id.startswith("alice/find-lora") for c in without.ingredients)
    reasons = {c.repo_id: c.fix for c in without.rejected}
    assert "adapters=True" in reasons["alice/find-lora-0"]
    found = find_ingredients("alice/find-base", arch_check=False, progress=False, adapters=True)
    assert {c.repo_id for c in found.ingredients} >= {"alice/find-lora-0", "alice/find-lora-1"}
    (dora_row,) = [c for c in found.rejected if c.repo_id == "alice/find-dora"]
    assert "use_dora" in dora_row.reason
    soup = soup_from_hub(found, output_dir=tmp_path / "soup", merge_options=_quiet())
    assert os.path.isfile(os.path.join(soup.output_dir, "model.safetensors"))


@pytest.mark.parametrize("method", ["greedy", "learned"])
def test_held_out_methods_soup_adapters_as_their_merged_models(tmp_path, method):
    from hf_soups import EvalSpec
    from hf_soups.testing import sentiment_examples

    base2 = make_tiny_bert(tmp_path / "base2", seed=3, num_labels=2)
    adapters = [make_adapter(base2, str(tmp_path / f"g{i}"), seed=60 + i, task_type="SEQ_CLS") for i in range(3)]
    spec = EvalSpec(batch_size=8, **({"learned_steps": 3} if method == "learned" else {}))
    soup = soup_from_hub(adapters, method, eval_dataset=sentiment_examples(24), eval_spec=spec,
                         output_dir=tmp_path / "soup", merge_options=_quiet())
    weights = soup.weights
    assert len(weights) == 3 and abs(sum(weights) - 1) < 1e-6 and set(soup.scores) == set(adapters)
    states = [merged(base2, a) for a in adapters]
    out = load_file(os.path.join(soup.output_dir, "model.safetensors"))
    for name, tensor in out.items():
        if tensor.is_floating_point():
            truth = sum(w * s[name].double() for w, s in zip(weights, states))
            torch.testing.assert_close(tensor.double(), truth, atol=1e-5, rtol=0, msg=name)


# --- the base, pinned in the recipe and the card; --base on check ---------------------------------------------------


def test_replay_uses_the_recorded_base_after_the_base_moves(api, hub, base, tmp_path, capsys):
    """The adapters name the base without a revision: the recipe pins it, so a replay after a new commit on the base's
    main branch re-creates the very same soup (from the recipe object and from the card, API and CLI)."""
    from conftest import publish

    from hf_soups import load_recipe, replay_recipe
    from hf_soups.cli.main import main

    base_sha = publish(api, base, "alice/moving-base")
    for i in range(2):
        _publish_adapter(api, make_adapter(base, str(tmp_path / f"m{i}"), seed=70 + i), f"alice/moving-{i}",
                         "alice/moving-base")
    soup = soup_from_hub(["alice/moving-0", "alice/moving-1"], output_dir=tmp_path / "soup", merge_options=_quiet())
    assert soup.recipe.base == f"alice/moving-base@{base_sha}"
    assert f"alice/moving-base@{base_sha}" in soup.card.text and f"base: alice/moving-base@{base_sha}" in \
        soup.recipe.to_yaml()
    original = open(os.path.join(soup.output_dir, "model.safetensors"), "rb").read()
    moved = publish(api, perturb_checkpoint(base, tmp_path / "base-v2", seed=71), "alice/moving-base")
    assert moved != base_sha  # main now points at other weights
    replay = replay_recipe(load_recipe(soup.output_dir), tmp_path / "replay", progress=False)
    assert open(os.path.join(replay.output_dir, "model.safetensors"), "rb").read() == original
    assert main(["recipe", str(soup.output_dir), "--output", str(tmp_path / "cli-replay")]) == 0
    assert open(tmp_path / "cli-replay" / "model.safetensors", "rb").read() == original
    fresh = soup_from_hub(["alice/moving-0", "alice/moving-1"], output_dir=tmp_path / "fresh", merge_options=_quiet())
    assert fresh.recipe.base == f"alice/moving-base@{moved}"  # a new soup reads today's base (and says so)


def test_a_recorded_base_must_be_pinned_like_the_ingredients(plain):
    from hf_soups import replay_recipe
    from hf_soups.errors import RecipeError
    from hf_soups.recipes import Recipe

    pinned = ["alice/a@" + "1" * 40, "alice/b@" + "2" * 40]
    for base in ("alice/base", "alice/base@main", plain[0]):
        recipe = Recipe(method="uniform", ingredients=tuple(pinned), weights=(0.5, 0.5), base=base)
        with pytest.raises(RecipeError, match="base"):
            replay_recipe(recipe)
    with pytest.raises(RecipeError, match="base"):
        Recipe.from_dict({"method": "uniform", "ingredients": pinned, "weights": [1, 1], "base": ["x"]})


def test_cli_check_takes_base_like_soup(base, tmp_path, capsys):
    from hf_soups.cli.main import main

    adapters = [make_adapter(base, str(tmp_path / f"c{i}"), seed=80 + i) for i in range(2)]
    for path in adapters:  # the configs name a base that is not there (moved, or trained elsewhere)
        config = json.load(open(os.path.join(path, "adapter_config.json")))
        config["base_model_name_or_path"] = str(tmp_path / "gone")
        json.dump(config, open(os.path.join(path, "adapter_config.json"), "w"))
    code = main(["check", *adapters])
    err = capsys.readouterr().err
    assert code not in (0, 1) and "--base" in err and "base=" not in err, err
    assert main(["check", *adapters, "--base", base]) == 0, capsys.readouterr().err


@pytest.mark.parametrize("wrapped", ["unmerged_with_head", "modules_to_save_only", "embedding_lora"])
def test_a_full_model_saved_still_wrapped_by_peft_names_merge_and_unload(base, plain, tmp_path, wrapped):
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import save_file

    path = str(tmp_path / wrapped)
    if wrapped == "unmerged_with_head":  # the wrapped model saved as a full model: base_layer, lora_A, modules_to_save
        get_peft_model(_load_base(base), LoraConfig(r=2, target_modules=["query"], modules_to_save=["classifier"])
                       ).base_model.model.save_pretrained(path)
    else:  # a merged model whose head (or embeddings) still carry peft's wrapper names
        shutil.copytree(base, path)
        state = load_file(os.path.join(path, "model.safetensors"))
        if wrapped == "modules_to_save_only":
            for kind in ("weight", "bias"):
                state[f"classifier.modules_to_save.default.{kind}"] = state[f"classifier.{kind}"].clone()
                state[f"classifier.original_module.{kind}"] = state.pop(f"classifier.{kind}")
        else:
            emb = "bert.embeddings.word_embeddings"
            state[f"{emb}.base_layer.weight"] = state.pop(f"{emb}.weight")
            state[f"{emb}.lora_embedding_A.default"] = torch.zeros(2, state[f"{emb}.base_layer.weight"].shape[0])
        save_file(state, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    report = check_compatibility([path], arch_check=False)
    (problem,) = [p for p in report.problems if p.ingredient == path and "peft" in p.message]
    assert "merge_and_unload()" in problem.fix and problem.field == "tensors"
    assert ("not merged" in problem.message) == (wrapped != "modules_to_save_only")
    with pytest.raises(IncompatibleIngredientsError, match="merge_and_unload"):
        soup_from_hub([plain[0], path], output_dir=tmp_path / "soup", merge_options=_quiet())


def test_a_local_copy_of_a_hub_base_is_that_base_and_else_the_fix_is_base(api, hub, base, tmp_path, monkeypatch):
    """An adapter trained on a local copy of a Hub base and one trained on the Hub base: the copy's sha256 is the
    Hub's LFS sha256, so they share the base. Where the Hub lists no digest, the refusal says to pass base=, and
    base= then soups them against that base exactly."""
    from conftest import publish

    from hf_soups import hub as hub_mod

    publish(api, base, "alice/copied-base")
    on_hub = make_adapter(base, str(tmp_path / "on-hub"), seed=90)
    _publish_adapter(api, on_hub, "alice/copied-0", "alice/copied-base")
    copy = shutil.copytree(base, tmp_path / "copy")
    local = make_adapter(str(copy), str(tmp_path / "local"), seed=91)
    refs = ["alice/copied-0", local]
    assert check_compatibility(refs, arch_check=False, weight_check=False).compatible
    resolve = hub_mod.resolve

    def no_digests(*args, **kwargs):  # a Hub-compatible server that lists no blob ids or LFS sha256
        import dataclasses

        return dataclasses.replace(resolve(*args, **kwargs), blob_ids={}, lfs_sha256={})

    monkeypatch.setattr(hub_mod, "resolve", no_digests)
    report = check_compatibility(refs, arch_check=False, weight_check=False)
    (problem,) = [p for p in report.problems if p.field == "base"]
    assert problem.ingredient == local and "cannot be compared" in problem.message and "base=" in problem.fix
    soup = soup_from_hub(refs, base="alice/copied-base", output_dir=tmp_path / "soup", merge_options=_quiet())
    assert soup.recipe.base.startswith("alice/copied-base@")
    assert_soup_is_mean(soup.output_dir, [merged(base, on_hub), merged(base, local)])


# --- hostile or broken adapter files: each a clear SoupError naming the adapter and the fix -------------------------

_HOSTILE = {  # adapter_config.json change -> words the error must hold
    "huge_r": ({"r": 10**12}, "rank 4 but the config says"),
    "r_not_int": ({"r": 2.5}, "positive integer"),
    "alpha_inf": ({"lora_alpha": "inf"}, "finite number"),
    "bad_regex_in_rank_pattern": ({"rank_pattern": {"(query": 4}}, "regular expression"),
    "modules_to_save_int": ({"modules_to_save": 5}, "modules_to_save"),
    "target_modules_dict": ({"target_modules": {"q": 1}}, "target_modules"),
    "peft_type_list": ({"peft_type": ["LORA"]}, "peft_type"),
    "dotdot_base": ({"base_model_name_or_path": "../../.."}, "base_model_name_or_path"),
    "absolute_base_not_a_model": ({"base_model_name_or_path": "/"}, "base_model_name_or_path"),
    "no_base": ({"base_model_name_or_path": None}, "base_model_name_or_path"),
}


def test_hostile_adapter_configs_are_clear_errors_in_cli_terms(plain, tmp_path, capsys):
    from hf_soups.cli.main import main

    for name, (change, words) in _HOSTILE.items():
        path = shutil.copytree(plain[0], tmp_path / name)
        config = json.load(open(path / "adapter_config.json"))
        config.update(change)
        (path / "adapter_config.json").write_text(json.dumps(config))
        code = main(["check", plain[1], str(path)])
        err = capsys.readouterr().err
        assert code not in (0, 1) and "Traceback" not in err, (name, code, err)
        assert str(path) in err and words in err and "Fix:" in err and "=" not in err.split("Fix:")[1], (name, err)
    gone = shutil.copytree(plain[0], tmp_path / "no-weights")
    os.remove(gone / "adapter_model.safetensors")
    assert main(["check", plain[1], str(gone)]) == 5
    assert "adapter_model.safetensors" in capsys.readouterr().err


def test_negative_lora_alpha_is_merged_as_peft_does(base, plain, tmp_path):
    negative = make_adapter(base, str(tmp_path / "neg"), seed=92, lora_alpha=-6, alpha_pattern={"value": -2.5})
    soup = soup_from_hub([plain[0], negative], output_dir=tmp_path / "soup", merge_options=_quiet())
    assert_soup_is_mean(soup.output_dir, [merged(base, plain[0]), merged(base, negative)])


def test_a_pickled_adapter_is_refused_unless_allow_pickle(plain, tmp_path, capsys):
    from hf_soups.cli.main import main
    from hf_soups.errors import NoSafetensorsError, UnsafeCheckpointError

    pickled = shutil.copytree(plain[1], tmp_path / "pickled")
    torch.save(load_file(pickled / "adapter_model.safetensors"), pickled / "adapter_model.bin")
    os.remove(pickled / "adapter_model.safetensors")
    with pytest.raises(NoSafetensorsError, match="allow_pickle=True"):
        check_compatibility([plain[0], str(pickled)], arch_check=False)
    assert main(["soup", plain[0], str(pickled), "--output", str(tmp_path / "x")]) == 5
    assert "--allow-pickle" in capsys.readouterr().err and not os.path.exists(tmp_path / "x")
    safe = soup_from_hub(plain[:2], output_dir=tmp_path / "safe", merge_options=_quiet())
    loaded = soup_from_hub([plain[0], str(pickled)], output_dir=tmp_path / "loaded", allow_pickle=True,
                           merge_options=_quiet())
    assert open(os.path.join(loaded.output_dir, "model.safetensors"), "rb").read() == \
        open(os.path.join(safe.output_dir, "model.safetensors"), "rb").read()
    evil = shutil.copytree(pickled, tmp_path / "evil")  # more than tensors: weights_only refuses it
    torch.save({"w": torch.zeros(1), "x": argparse.Namespace()}, evil / "adapter_model.bin")
    with pytest.raises(UnsafeCheckpointError, match="weights_only"):
        check_compatibility([plain[0], str(evil)], arch_check=False, allow_pickle=True)


def test_a_hub_adapter_never_makes_a_local_directory_its_base(api, hub, base, tmp_path):
    """A Hub adapter's config naming a local path (absolute, or `../..`) must not make hf_soups read (and a push
    publish) that directory: the base of a Hub adapter is a Hub repo, or what base= says."""
    from hf_soups.errors import IngredientNotFoundError

    for i, local in enumerate([os.path.abspath(base), os.path.relpath(base)]):
        path = make_adapter(base, str(tmp_path / f"l{i}"), seed=93)
        _publish_adapter(api, path, f"alice/points-home-{i}", local)
        with pytest.raises(IngredientNotFoundError) as err:
            check_compatibility([f"alice/points-home-{i}"], arch_check=False)
        assert err.value.ingredient.startswith(f"alice/points-home-{i}") and "base=" in err.value.fix
    assert check_compatibility(["alice/points-home-0"], base=base, arch_check=False).compatible  # said by the user
