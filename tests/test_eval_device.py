"""The evaluation device rule, candidates built on the evaluation device, bootstrap intervals, `Soup.evaluate`
subsets: all on CPU-only machines (fake accelerate states stand in for `accelerate launch` ranks on GPUs)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from datasets import Dataset

import hf_soups.evaluation.device as device_mod
import hf_soups.evaluation.distributed as distributed
import hf_soups.evaluation.evaluator as evaluator_mod
import hf_soups.evaluation.held_out as held_out
from hf_soups import EvalSpec, EvaluationError, MergeOptions, soup_from_hub
from hf_soups.checkpoint.meta import read_config
from hf_soups.evaluation import Bootstrap, Evaluator, paired_bootstrap, resolve_eval_device, resolve_metric
from hf_soups.evaluation.candidates import ModelHolder
from hf_soups.evaluation.uncertainty import separation_warning
from hf_soups.testing import make_tiny_bert, perturb_checkpoint, sentiment_examples

QUIET = MergeOptions(progress=False)


class FakeState:
    """Stands in for accelerate's `PartialState` of one `accelerate launch` rank."""

    def __init__(self, device: str, num_processes: int = 1) -> None:
        self.device = torch.device(device)
        self.num_processes = num_processes
        self.is_main_process = True


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaldev")
    base = make_tiny_bert(root / "base", seed=0, num_labels=2)
    refs = [perturb_checkpoint(base, root / f"ft{i}", seed=i, scale=0.5) for i in range(3)]
    return {"base": base, "refs": refs, "config": read_config(f"{refs[0]}/config.json", refs[0]),
            "val": Dataset.from_dict(sentiment_examples(48, seed=3)),
            "test": Dataset.from_dict(sentiment_examples(40, seed=4))}


@pytest.fixture
def rank(monkeypatch):
    """Make the resolver see an accelerate state with the given device (as on a GPU rank)."""

    def use(device: str, world_size: int = 1) -> None:
        monkeypatch.setattr(distributed, "state", lambda: FakeState(device, world_size))
        if world_size > 1:
            monkeypatch.setenv("WORLD_SIZE", str(world_size))
        else:
            monkeypatch.delenv("WORLD_SIZE", raising=False)
            monkeypatch.setattr(device_mod, "accelerator_available", lambda: True)

    return use


def test_device_rule(rank, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(device_mod, "accelerator_available", lambda: False)
    assert resolve_eval_device() == torch.device("cpu")
    rank("cuda:1", world_size=2)  # an `accelerate launch` rank: its own device
    assert resolve_eval_device() == torch.device("cuda", 1)
    assert resolve_eval_device("cpu") == torch.device("cpu")  # explicit wins
    assert resolve_eval_device(0) == torch.device("cuda", 0)
    rank("mps")  # a single process with an accelerator: accelerate's default device
    assert resolve_eval_device() == torch.device("mps")
    with pytest.raises(EvaluationError, match="unknown evaluation device"):
        resolve_eval_device("gpu7")


def test_evaluator_and_holder_ask_for_the_rank_device(family, rank):
    rank("cuda:1", world_size=2)
    ev = Evaluator(family["val"], family["refs"][0], family["config"])
    assert ev.device == torch.device("cuda", 1) and ev.batch_size == 256  # accelerator default
    assert Evaluator(family["val"], family["refs"][0], family["config"], batch_size=8).batch_size == 8
    assert Evaluator(family["val"], family["refs"][0], family["config"], device="cpu").batch_size == 64
    rank("meta")
    holder = ModelHolder(family["refs"][0], family["config"])
    assert holder.device == torch.device("meta")
    assert {p.device.type for p in holder.model.parameters()} == {"meta"}


class _Recorder:
    def __init__(self) -> None:
        self.devices: list[torch.device] = []


def test_greedy_and_evaluate_ask_for_the_resolved_device(family, rank, monkeypatch, tmp_path):
    """Under a fake GPU rank, greedy and `Soup.evaluate` ask for `cuda:1` (run on the CPU here); explicit wins."""
    import hf_soups.evaluation.report as report_mod

    asked = _Recorder()

    def recording(cls):
        class Recording(cls):
            def __init__(self, *args, device=None, **kwargs):
                asked.devices.append(resolve_eval_device(device))
                super().__init__(*args, device="cpu", **kwargs)
        return Recording

    monkeypatch.setattr(evaluator_mod, "Evaluator", recording(Evaluator))  # built per image processor there
    for module in (held_out, report_mod):
        monkeypatch.setattr(module, "ModelHolder", recording(ModelHolder))
    rank("cuda:1")
    soup = soup_from_hub(family["refs"], "greedy", eval_dataset=family["val"], output_dir=tmp_path / "g",
                         merge_options=QUIET)
    assert asked.devices == [torch.device("cuda", 1)] * 2
    asked.devices.clear()
    soup.evaluate({"test": family["test"]}, methods=["soup"], progress=False)
    assert asked.devices == [torch.device("cuda", 1)] * 2
    asked.devices.clear()
    soup.evaluate({"test": family["test"]}, methods=["soup"], device="cpu", progress=False)
    soup_from_hub(family["refs"], "greedy", eval_dataset=family["val"], output_dir=tmp_path / "g2",
                  eval_spec=EvalSpec(device="cpu"), merge_options=QUIET)
    assert asked.devices == [torch.device("cpu")] * 4


def test_candidates_live_on_the_evaluation_device(family, monkeypatch, tmp_path):
    """The whole greedy selection on the meta device: the skeleton and every candidate (computed into it by the
    merge kernel, tensor by tensor) are there."""
    from hf_soups.evaluation import candidates as candidates_mod

    seen: list[set[str]] = []
    kernel: set[str] = set()
    scores = iter([0.5, 0.7, 0.6, 0.75, 0.7])  # 3 ingredients, then 2 candidates (the second is rejected)

    class MetaEvaluator(Evaluator):
        def score(self, model):
            seen.append({p.device.type for p in model.parameters()})
            return next(scores), torch.zeros(len(self), 2)

    def recording_sum(tensors, weights, out=None):
        result = candidates_mod.__dict__["_kernel"](tensors, weights, out=out)
        kernel.add(result.device.type)
        return result

    monkeypatch.setattr(candidates_mod, "_kernel", candidates_mod.weighted_sum, raising=False)
    monkeypatch.setattr(candidates_mod, "weighted_sum", recording_sum)
    monkeypatch.setattr(evaluator_mod, "Evaluator", MetaEvaluator)
    soup = soup_from_hub(family["refs"], "greedy", eval_dataset=family["val"], output_dir=tmp_path / "g",
                         eval_spec=EvalSpec(device="meta"), merge_options=QUIET)
    assert seen == [{"meta"}] * 5 and kernel == {"meta"}
    assert [s["accepted"] for s in soup.trace] == [True, True, False]
    holder = ModelHolder(family["refs"][0], family["config"], device="meta")
    from hf_soups.checkpoint.reader import open_checkpoint
    from hf_soups.merge.plan import build_plan

    readers = [open_checkpoint(r) for r in family["refs"]]
    plan = build_plan([r.tensors for r in readers], [1.0] * 3)
    states = held_out._learned_states(plan, readers, holder)  # learned soups: the ingredients fit, so on the device
    assert {t.device.type for s in states for t in s.values()} == {"meta"}


def test_inference_mode_exact_fp32_and_autocast(family):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = family["refs"][1]
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    flags = []
    model.register_forward_pre_hook(lambda m, a: flags.append(torch.is_inference_mode_enabled()))
    ev = Evaluator(family["val"], path, family["config"], device="cpu")
    logits = ev.logits(model)
    assert flags and all(flags)
    tok = AutoTokenizer.from_pretrained(path)
    texts = list(family["val"]["text"])
    with torch.no_grad():  # independent truth: one padded batch, fp32
        expected = model(**tok(texts, return_tensors="pt", padding=True)).logits
    assert torch.allclose(logits, expected, atol=1e-5)
    bf16 = Evaluator(family["val"], path, family["config"], device="cpu", dtype="bfloat16").logits(model)
    assert not torch.equal(bf16, logits) and torch.allclose(bf16, logits, atol=0.1)
    with pytest.raises(EvaluationError, match="evaluation dtype"):
        Evaluator(family["val"], path, family["config"], dtype="int8")


def test_paired_bootstrap_matches_numpy_resampling():
    rng = np.random.default_rng(0)
    n = 300
    refs = rng.integers(0, 3, n)
    a = np.where(rng.random(n) < 0.8, refs, (refs + 1) % 3)
    b = np.where(rng.random(n) < 0.7, refs, (refs + 2) % 3)
    boot = Bootstrap(resamples=400, confidence=0.9, seed=7)
    scores, diffs = paired_bootstrap({"a": a, "b": b}, refs, resolve_metric("accuracy"), baseline="b",
                                     bootstrap=boot)
    idx = np.random.default_rng(7).integers(0, n, size=(400, n))  # independent: one draw of every resample
    acc_a, acc_b = (a[idx] == refs[idx]).mean(1), (b[idx] == refs[idx]).mean(1)
    assert scores["a"].value == pytest.approx((a == refs).mean())
    assert [scores["a"].low, scores["a"].high] == pytest.approx(np.percentile(acc_a, [5, 95]), abs=1e-12)
    assert [diffs["a"].low, diffs["a"].high] == pytest.approx(np.percentile(acc_a - acc_b, [5, 95]), abs=1e-12)
    assert diffs["a"].value == pytest.approx((a == refs).mean() - (b == refs).mean())
    assert diffs["b"].low == diffs["b"].high == 0.0

    def recall_of_class_0(p, r):  # any metric: recomputed per resample
        p, r = np.asarray(p), np.asarray(r)
        return float((p[r == 0] == 0).mean()) if (r == 0).any() else 0.0

    custom, _ = paired_bootstrap({"a": a}, refs, resolve_metric(recall_of_class_0), bootstrap=boot)
    expected = [recall_of_class_0(a[row], refs[row]) for row in idx]
    assert [custom["a"].low, custom["a"].high] == pytest.approx(np.percentile(expected, [5, 95]), abs=1e-12)


def test_bootstrap_analytic_cases():
    refs = np.zeros(4000, dtype=int)
    perfect, _ = paired_bootstrap({"m": refs}, refs, resolve_metric("accuracy"))
    assert (perfect["m"].low, perfect["m"].high) == (1.0, 1.0)
    p = np.where(np.arange(4000) % 5 == 0, 1, 0)  # 80% accuracy
    ci, _ = paired_bootstrap({"m": p}, refs, resolve_metric("accuracy"))
    normal = 1.959964 * np.sqrt(0.8 * 0.2 / 4000)  # the normal approximation of a proportion's 95% interval
    assert ci["m"].half_width == pytest.approx(normal, rel=0.15)
    assert separation_warning("val", 4000, {"a": 0.80, "b": 0.81}, ci["m"]) is not None  # spread 0.01 < ±0.012
    assert separation_warning("val", 4000, {"a": 0.70, "b": 0.81}, ci["m"]) is None


@pytest.fixture(scope="module")
def greedy_soup(family, tmp_path_factory):
    return soup_from_hub(family["refs"], "greedy", eval_dataset=family["val"],
                         output_dir=tmp_path_factory.mktemp("gs") / "soup", merge_options=QUIET)


def test_evaluate_scores_only_the_requested_methods(family, greedy_soup, monkeypatch):
    sets = {"val": family["val"], "test": family["test"]}
    full = greedy_soup.evaluate(sets, progress=False)
    calls = []
    original = Evaluator.logits
    monkeypatch.setattr(Evaluator, "logits", lambda self, model: calls.append(1) or original(self, model))
    sub = greedy_soup.evaluate(sets, methods=["soup", "best_individual"], progress=False)
    assert len(calls) == 4  # the soup and the best ingredient (known from the held-out scores), on two sets
    assert {s: set(r) for s, r in sub.results.items()} == {s: {"greedy_soup", "best_individual"} for s in sets}
    for s in sets:
        for m in ("greedy_soup", "best_individual"):
            assert sub.results[s][m] == full.results[s][m]
            assert sub.intervals[s][m] == full.intervals[s][m]  # same seed, same resamples
        assert sub.differences[s]["greedy_soup"] == full.differences[s]["greedy_soup"]
    calls.clear()
    ens = greedy_soup.evaluate(sets, methods=["ensemble"], progress=False)
    assert len(calls) == 6 and set(ens.results["test"]) == {"ensemble"}
    assert ens.results["test"]["ensemble"] == full.results["test"]["ensemble"]
    with pytest.raises(EvaluationError, match="did you mean 'ensemble'"):
        greedy_soup.evaluate(sets, methods=["ensembel"], progress=False)
    with pytest.raises(EvaluationError, match="base="):
        greedy_soup.evaluate(sets, methods=["wise_ft"], progress=False)


def test_uniform_soup_best_individual_chosen_on_the_held_out_set(family, tmp_path, monkeypatch):
    soup = soup_from_hub(family["refs"], output_dir=tmp_path / "u", merge_options=QUIET)
    sets = {"val": family["val"], "test": family["test"]}
    full = soup.evaluate(sets, progress=False)
    calls = []
    original = Evaluator.logits
    monkeypatch.setattr(Evaluator, "logits", lambda self, model: calls.append(1) or original(self, model))
    sub = soup.evaluate(sets, methods=["best_individual"], progress=False)
    assert len(calls) == 3 + 1  # every ingredient on the held-out (first) set, then the best one on the other
    assert sub.results["test"]["best_individual"] == full.results["test"]["best_individual"]
    best = max(full.ingredient_scores["val"], key=full.ingredient_scores["val"].get)
    assert full.results["test"]["best_individual"] == full.results["test"][f"ingredient:{best}"]


def test_report_rows_table_and_card_show_intervals(family, greedy_soup):
    report = greedy_soup.evaluate({"test": family["test"]}, progress=False, bootstrap=200)
    rows = {(r.eval_set, r.method): r for r in report.rows()}
    row = rows[("test", "greedy_soup")]
    assert row.low <= row.score <= row.high and row.delta == pytest.approx(
        report.results["test"]["greedy_soup"] - report.results["test"]["best_individual"])
    assert row.delta_low <= row.delta <= row.delta_high
    assert len(report.to_pandas()) == len(rows)
    table = report.to_table()
    assert "paired bootstrap intervals (200 resamples" in table and f"[{row.low:.4f}, {row.high:.4f}]" in table
    card = str(greedy_soup.with_evaluation(report).card)
    assert f"{row.score:.4f} [{row.low:.4f}, {row.high:.4f}]" in card
    assert "### Difference to the best individual" in card and f"{row.delta:+.4f}" in card


def test_small_held_out_set_is_warned_in_soup_and_card(family, tmp_path, caplog):
    tiny = Dataset.from_dict(sentiment_examples(12, seed=5))
    near = [perturb_checkpoint(family["base"], tmp_path / f"n{i}", seed=i, scale=1e-4) for i in range(2)]
    with caplog.at_level("WARNING"):
        soup = soup_from_hub(near, "greedy", eval_dataset=tiny, output_dir=tmp_path / "g", merge_options=QUIET)
    assert soup.warnings and "too small to separate the candidates" in soup.warnings[0]
    assert "12 examples" in soup.warnings[0] and "too small" in caplog.text
    assert "## Warnings" in str(soup.card) and "too small to separate" in str(soup.card)


def test_cli_eval_device_and_dtype(family, tmp_path, capsys):
    from hf_soups.cli.main import main
    from hf_soups.testing import write_csv

    csv = write_csv(tmp_path / "val.csv", sentiment_examples(24, seed=9))
    args = ["soup", *family["refs"], "--method", "greedy", "--eval-dataset", csv]
    assert main([*args, "--output", str(tmp_path / "s"), "--eval-device", "cpu", "--eval-dtype", "bfloat16"]) == 0
    assert "dtype: bfloat16" in (tmp_path / "s" / "README.md").read_text()  # recorded: it decides the result
    assert main([*args, "--output", str(tmp_path / "t"), "--eval-device", "gpu7"]) == 8
    assert "unknown evaluation device 'gpu7'" in capsys.readouterr().err
