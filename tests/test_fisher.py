"""Fisher-weighted merging (evaluation/fisher.py) against a direct, example-by-example computation written here."""

from __future__ import annotations

import os

import pytest
import torch

from hf_soups.checkpoint.meta import read_config
from hf_soups.checkpoint.reader import open_checkpoint
from hf_soups.errors import EvaluationError, SoupError
from hf_soups.evaluation.candidates import ModelHolder
from hf_soups.evaluation.evaluator import Evaluator
from hf_soups.evaluation.fisher import diagonal_fisher, fisher_merge
from hf_soups.evaluation.tasks import task_for
from hf_soups.merge.plan import build_plan
from hf_soups.testing import make_tiny_bert, make_tiny_vit, perturb_checkpoint, sentiment_examples

from conftest import state_dict_of


@pytest.fixture(scope="module")
def trio(tmp_path_factory):
    """A tiny 3-class BERT and two perturbations of it, plus 12 held-out sentences."""
    root = tmp_path_factory.mktemp("fisher")
    base = make_tiny_bert(root / "base", seed=0, num_labels=3, initializer_range=0.2)
    refs = [base, perturb_checkpoint(base, root / "a", seed=1, scale=0.2),
            perturb_checkpoint(base, root / "b", seed=2, scale=0.2, dtype=torch.bfloat16)]
    data = sentiment_examples(8, seed=3)
    return {"refs": [os.fspath(r) for r in refs], "data": data}


def _setup(refs, data, batch_size=5):
    config = read_config(os.path.join(refs[0], "config.json"), refs[0])
    readers = [open_checkpoint(r) for r in refs]
    plan = build_plan([r.tensors for r in readers], [1.0] * len(refs))
    holder = ModelHolder(refs[0], config, device="cpu")
    evaluator = Evaluator(data, refs[0], config, batch_size=batch_size, device="cpu")
    return plan, readers, holder, evaluator


def _direct_fisher(path, texts, floor=1e-6):
    """F = mean_x sum_y p(y|x) (d log p(y|x)/d theta)^2, one example and one label at a time, with autograd."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(path)
    names = [n for n, _ in model.named_parameters()]
    params = list(model.parameters())
    total = {n: torch.zeros_like(p) for n, p in zip(names, params)}
    for text in texts:
        log_p = torch.log_softmax(model(**tok(text, return_tensors="pt")).logits[0], -1)
        for y in range(log_p.shape[0]):
            grads = torch.autograd.grad(log_p[y], params, retain_graph=True, allow_unused=True)
            for n, g in zip(names, grads):
                if g is not None:
                    total[n] += log_p[y].exp().detach() * g * g
    return {n: (t / len(texts)).clamp(min=floor) for n, t in total.items()}


def test_fisher_merge_matches_direct_computation(trio):
    refs, data = trio["refs"], trio["data"]
    plan, readers, holder, evaluator = _setup(refs, data)
    weights = [0.5, 0.3, 0.2]
    with fisher_merge(plan, readers, holder, evaluator.batches, evaluator.task_impl, weights=weights) as soup:
        merged = dict(soup.tensors())
        assert soup.examples == len(data["text"]) == 8
        uniform = set(soup.uniform)
    states = [{k: v.float() for k, v in state_dict_of(r).items()} for r in refs]
    fishers = [_direct_fisher(r, data["text"]) for r in refs]
    checked = 0
    for name, got in merged.items():
        thetas = [s[name] for s in states]
        spread = torch.stack(thetas).amax(0) - torch.stack(thetas).amin(0)
        if name in fishers[0]:
            num = sum(w * f[name] * t for w, f, t in zip(weights, fishers, thetas))
            den = sum(w * f[name] for w, f in zip(weights, fishers))
            want = num / den
            checked += 1
        else:  # buffers: the plain weighted average
            assert name in uniform
            want = sum(w * t for w, t in zip(weights, thetas))
        assert bool(((got - want).abs() <= 2e-3 * spread + 1e-6 * want.abs()).all()), name
    assert checked > 10
    # the Fisher moved the soup away from the plain weighted average somewhere
    name = "classifier.weight"
    plain = sum(w * s[name] for w, s in zip(weights, states))
    assert (merged[name] - plain).abs().max() > 1e-3 * (merged[name].abs().max())


def test_diagonal_fisher_values_and_example_cap(trio):
    refs, data = trio["refs"], trio["data"]
    _, _, holder, evaluator = _setup(refs[:1], data, batch_size=4)
    fisher = diagonal_fisher(holder.model, evaluator.batches, evaluator.task_impl, max_examples=5)
    assert fisher.examples == 5
    # the evaluator sorts by length: the examples used are the first 5 rows of its batches
    rows = torch.cat([idx for idx, _ in evaluator.batches])[:5].tolist()
    want = _direct_fisher(refs[0], [data["text"][i] for i in rows])
    for name, value in fisher.values.items():
        scale = want[name].abs().max()
        assert torch.allclose(value, want[name], rtol=1e-3, atol=1e-4 * float(scale) + 1e-9), name
        assert bool((value >= 1e-6).all())


def test_two_class_fisher_takes_one_gradient_and_matches_both_labels(tmp_path):
    """Two classes: one gradient of the log-odds per example (p_0 p_1 dz^2), against the direct sum over both labels."""
    path = os.fspath(make_tiny_bert(tmp_path / "binary", seed=4, num_labels=2, initializer_range=0.2))
    data = sentiment_examples(6, seed=5)
    _, _, holder, evaluator = _setup([path], data, batch_size=4)
    calls = []
    task = evaluator.task_impl
    real_output = task.output

    class Counting:  # counts the forward passes inside the gradients (one per example, not one per label)
        name = task.name

        def output(self, out):
            calls.append(1)
            return real_output(out)

    fisher = diagonal_fisher(holder.model, evaluator.batches, Counting())
    assert fisher.examples == 6
    # per batch: one forward for p(y|x), then one vmapped gradient call for both labels (two before the shortcut)
    assert len(evaluator.batches) == 2 and len(calls) == 2 * 2
    want = _direct_fisher(path, data["text"])
    for name, value in fisher.values.items():
        scale = want[name].abs().max()
        assert torch.allclose(value, want[name], rtol=1e-3, atol=1e-4 * float(scale) + 1e-9), name


def test_memory_mapped_buffers_give_the_same_bits(trio, tmp_path):
    refs, data = trio["refs"], trio["data"]
    plan, readers, holder, evaluator = _setup(refs[:2], data)
    with fisher_merge(plan, readers, holder, evaluator.batches, evaluator.task_impl, max_examples=3) as plain:
        expected = dict(plain.tensors())
        assert not plain.memmapped
    soup = fisher_merge(plan, readers, holder, evaluator.batches, evaluator.task_impl, max_examples=3, memmap_bytes=0,
                        workdir=os.fspath(tmp_path))
    assert soup.memmapped and len(os.listdir(tmp_path)) == 1
    for name, value in soup.tensors():
        assert torch.equal(value, expected[name]), name
    soup.close()
    assert os.listdir(tmp_path) == []  # the temporary buffers are removed


def test_image_classifier_fisher_runs_batched(tmp_path):
    """A variant beyond text: a ViT's Fisher through pixel_values, batched, against the per-example autograd."""
    path = make_tiny_vit(tmp_path / "vit", seed=0)
    config = read_config(os.path.join(path, "config.json"), path)
    holder = ModelHolder(path, config, device="cpu")
    torch.manual_seed(0)
    pixels = torch.randn(3, 3, 16, 16)
    task = task_for(config)
    fisher = diagonal_fisher(holder.model, [(torch.arange(3), {"pixel_values": pixels})], task)
    assert fisher.batched and fisher.examples == 3
    model = holder.model
    params = dict(model.named_parameters())
    name = next(n for n in params if n.endswith("0.attention.q_proj.weight") or n.endswith("0.attention.attention.query.weight"))
    want = torch.zeros_like(params[name])
    for x in pixels:
        log_p = torch.log_softmax(model(pixel_values=x[None]).logits[0], -1)
        for y in range(log_p.shape[0]):
            (g,) = torch.autograd.grad(log_p[y], [params[name]], retain_graph=True)
            want += log_p[y].exp().detach() * g * g
    want = (want / 3).clamp(min=1e-6)
    assert torch.allclose(fisher.values[name], want, rtol=1e-3, atol=1e-5 * float(want.max()))


@pytest.mark.parametrize("config", [
    {"architectures": ["BertForSequenceClassification"], "num_labels": 1, "problem_type": "regression"},
    {"architectures": ["BertForTokenClassification"], "num_labels": 3},
])
def test_unsupported_tasks_are_refused_by_name(config):
    task = task_for(config)
    with pytest.raises(EvaluationError) as info:
        diagonal_fisher(torch.nn.Linear(2, 2), [], task)
    assert isinstance(info.value, SoupError)
    assert task.title in str(info.value) and "method=" in str(info.value)


def test_fisher_soup_from_held_out_data_records_examples(trio):
    from types import SimpleNamespace

    from hf_soups import EvalSpec
    from hf_soups.evaluation.fisher import fisher_soup

    refs = trio["refs"][:2]
    readers = [open_checkpoint(r) for r in refs]
    plan = build_plan([r.tensors for r in readers], [1.0, 1.0])
    config = read_config(os.path.join(refs[0], "config.json"), refs[0])
    ingredients = [SimpleNamespace(name=f"ft{i}", local_dir=r) for i, r in enumerate(refs)]
    with fisher_soup(plan, readers, ingredients, config, trio["data"], EvalSpec(max_samples=3), device="cpu") as soup:
        assert soup.examples == 3 and set(soup.zero) == {"ft0", "ft1"}
        assert {name for name, _ in soup.tensors()} == {tp.name for tp in plan.tensors if tp.average}


def test_fisher_soup_refuses_an_unsupported_task_before_reading_weights():
    from hf_soups import EvalSpec
    from hf_soups.evaluation.fisher import fisher_soup

    config = {"architectures": ["BertForSequenceClassification"], "num_labels": 1, "problem_type": "regression"}
    with pytest.raises(EvaluationError, match="regression"):
        fisher_soup(None, [], [], config, None, EvalSpec())  # nothing else is touched


@pytest.mark.parametrize("value, memmapped", [("1", True), ("1GB", False)])
def test_memmap_threshold_from_the_environment(trio, monkeypatch, value, memmapped):
    refs, data = trio["refs"], trio["data"]
    plan, readers, holder, evaluator = _setup(refs[:1], data)
    monkeypatch.setenv("HF_SOUPS_FISHER_MEMMAP_BYTES", value)
    with fisher_merge(plan, readers, holder, evaluator.batches, evaluator.task_impl, max_examples=1) as soup:
        assert soup.memmapped is memmapped


def test_bad_memmap_threshold_is_named(trio, monkeypatch):
    from hf_soups.errors import InvalidArgumentError

    refs, data = trio["refs"], trio["data"]
    plan, readers, holder, evaluator = _setup(refs[:1], data)
    monkeypatch.setenv("HF_SOUPS_FISHER_MEMMAP_BYTES", "64 lemons")
    with pytest.raises(InvalidArgumentError, match="HF_SOUPS_FISHER_MEMMAP_BYTES.*64 lemons"):
        fisher_merge(plan, readers, holder, evaluator.batches, evaluator.task_impl, max_examples=1)
