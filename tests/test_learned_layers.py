"""Memory-light learned soups by layer (evaluation/learned_stream.py): the streamed gradient against autograd on a
materialised soup, recorded weights replayed bit for bit, determinism, and the ingredients never held in memory."""

from __future__ import annotations

import json
import os
import weakref

import pytest
import torch

from hf_soups.checkpoint.meta import read_config
from hf_soups.checkpoint.reader import open_checkpoint
from hf_soups.errors import EvaluationError
from hf_soups.evaluation.candidates import ModelHolder
from hf_soups.evaluation.evaluator import Evaluator
from hf_soups.evaluation.learned_stream import StreamedSoup, group_of, layer_groups, learn_layer_weights
from hf_soups.merge.plan import build_plan
from hf_soups.testing import sentiment_examples

from conftest import state_dict_of

DATA = sentiment_examples(10, seed=5)


def _soup(refs, groups="layer", readers=None):
    config = read_config(os.path.join(refs[0], "config.json"), refs[0])
    readers = readers or [open_checkpoint(r) for r in refs]
    plan = build_plan([r.tensors for r in readers], [1.0] * len(refs))
    holder = ModelHolder(refs[0], config, device="cpu")
    evaluator = Evaluator(DATA, refs[0], config, batch_size=4, device="cpu")
    return StreamedSoup(plan, readers, holder, groups), evaluator


def _hand_group(name: str) -> str:
    """The tiny BERT's groups, written out by hand."""
    for prefix in ("bert.embeddings.", "bert.encoder.layer.0.", "bert.encoder.layer.1.", "bert.pooler.", "classifier."):
        if name.startswith(prefix):
            return prefix[:-1]
    raise AssertionError(name)


@pytest.mark.parametrize("name, group", [
    ("bert.encoder.layer.11.attention.self.query.weight", "bert.encoder.layer.11"),
    ("bert.embeddings.word_embeddings.weight", "bert.embeddings"),
    ("bert.embeddings.LayerNorm.bias", "bert.embeddings"),
    ("classifier.weight", "classifier"),
    ("transformer.h.3.attn.c_attn.weight", "transformer.h.3"),
    ("model.layers.0.mlp.up_proj.weight", "model.layers.0"),
    ("vit.layers.2.attention.q_proj.bias", "vit.layers.2"),
    ("visual.blocks.7.norm1.weight", "visual.blocks.7"),
    ("resnet.encoder.stages.1.layers.0.shortcut.convolution.weight", "resnet.encoder.stages.1.layers.0"),
    ("logit_scale", "logit_scale"),
])
def test_group_of_names(name, group):
    assert group_of(name) == group


def test_unknown_grouping_is_refused():
    with pytest.raises(EvaluationError, match="groups='layer'"):
        layer_groups(["a.weight"], groups="tensor")


def test_streamed_gradient_equals_autograd_on_materialised_soup(family):
    refs = [family["a"], family["b"], family["c"]]  # sharded fp32, bf16, sharded differently
    soup, evaluator = _soup(refs)
    assert soup.groups == ("bert.embeddings", "bert.encoder.layer.0", "bert.encoder.layer.1", "bert.pooler",
                           "classifier")
    torch.manual_seed(0)
    alpha = torch.randn(len(soup.groups), 3)
    idx, inputs = evaluator.batches[1]
    targets = evaluator.references[idx]
    loss_value, grad = soup.loss_and_gradient(
        alpha, inputs, lambda out: torch.nn.functional.cross_entropy(out.logits, targets))

    # independent: every ingredient in memory, the soup a differentiable function of alpha, autograd
    from torch.func import functional_call
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(refs[0], dtype=torch.float32).eval()
    states = [{k: v.float() for k, v in state_dict_of(r).items()} for r in refs]
    a = alpha.clone().requires_grad_(True)
    w = torch.softmax(a, 1)
    order = ["bert.embeddings", "bert.encoder.layer.0", "bert.encoder.layer.1", "bert.pooler", "classifier"]
    params = {n: sum(w[order.index(_hand_group(n)), k] * states[k][n] for k in range(3))
              for n, _ in model.named_parameters()}
    out = functional_call(model, params, args=(), kwargs=inputs)
    want = torch.nn.functional.cross_entropy(out.logits, targets)
    want.backward()
    assert loss_value == pytest.approx(float(want.detach()), rel=1e-5)
    # fp32 rounding of two different summation orders; the softmax chain cancels nearly equal terms
    assert torch.allclose(grad, a.grad, rtol=1e-3, atol=1e-3 * float(a.grad.abs().max())), (grad, a.grad)
    assert float(grad.abs().max()) > 0


def test_weights_recorded_and_replayed_bitwise(family):
    refs = [family["a"], family["b"], family["d"]]
    soup, evaluator = _soup(refs)
    runs = [learn_layer_weights(soup, evaluator.batches, evaluator.loss, lambda m: -1.0, steps=3, lr=0.5, seed=1)
            for _ in range(2)]
    first = runs[0]
    assert first.weights == runs[1].weights  # deterministic
    assert first.trace[1]["accepted"] and len(first.weights) == len(soup.groups) == 5
    assert all(abs(sum(row) - 1) < 1e-6 for row in first.weights)
    assert len({row for row in first.weights}) > 1  # the groups learned different weights
    soup.load(first.weights)
    expected = {k: v.clone() for k, v in soup.holder.model.state_dict().items()}
    # replay from the record alone (through JSON), in a new skeleton
    record = json.loads(json.dumps(first.to_dict()))
    again, _ = _soup(refs)
    again.load([record["groups"][g] for g in again.groups])
    for name, value in again.holder.model.state_dict().items():
        assert torch.equal(value, expected[name]), name


def test_one_group_is_the_per_model_learned_soup_and_uniform_is_kept_when_not_beaten(family):
    refs = [family["a"], family["c"]]
    soup, evaluator = _soup(refs, groups="model")
    assert soup.groups == ("model",)
    scores = iter([1.0, 0.5])  # the uniform weights score higher: they are kept
    result = learn_layer_weights(soup, evaluator.batches, evaluator.loss, lambda m: next(scores), steps=2)
    assert result.weights == ((0.5, 0.5),)
    assert [t["accepted"] for t in result.trace] == [True, False]


class _CountingReader:
    """A reader whose tensors are counted while alive."""

    def __init__(self, reader, counter):
        self.reader, self.counter = reader, counter
        self.tensors = reader.tensors

    def read(self, name, buffer=None):
        t = self.reader.read(name, buffer)
        self.counter["alive"] += 1
        self.counter["peak"] = max(self.counter["peak"], self.counter["alive"])
        weakref.finalize(t, _decrement, self.counter)
        return t


def _decrement(counter):
    counter["alive"] -= 1


@pytest.mark.parametrize("k", [2, 4])
def test_ingredient_tensors_alive_at_once_do_not_grow_with_k(family, k):
    """K-flat: however many ingredients, at most two of their tensors are alive at once (one soup is held)."""
    refs = [family["a"], family["b"], family["c"], family["d"]][:k]
    counter = {"alive": 0, "peak": 0}
    readers = [_CountingReader(open_checkpoint(r), counter) for r in refs]
    soup, evaluator = _soup(refs, readers=readers)
    learn_layer_weights(soup, evaluator.batches, evaluator.loss, lambda m: 0.0, steps=2)
    assert counter["peak"] <= 2, counter
    assert counter["alive"] == 0


def test_learn_by_layer_from_held_out_data(family):
    from types import SimpleNamespace

    from hf_soups import EvalSpec
    from hf_soups.evaluation.learned_stream import learn_by_layer

    refs = [family["a"], family["d"]]
    readers = [open_checkpoint(r) for r in refs]
    plan = build_plan([r.tensors for r in readers], [1.0, 1.0])
    config = read_config(os.path.join(refs[0], "config.json"), refs[0])
    ingredients = [SimpleNamespace(name=f"ft{i}", local_dir=r) for i, r in enumerate(refs)]
    result, evaluator = learn_by_layer(plan, readers, ingredients, config, DATA,
                                       EvalSpec(learned_steps=2, batch_size=4), device="cpu")
    assert len(evaluator) == 10 and result.steps == 2
    record = result.to_dict()["groups"]
    assert list(record) == ["bert.embeddings", "bert.encoder.layer.0", "bert.encoder.layer.1", "bert.pooler",
                            "classifier"]
    assert all(len(w) == 2 and abs(sum(w) - 1) < 1e-6 for w in record.values())


def test_soup_from_hub_learned_by_layer_records_and_writes_the_weights(family, tmp_path):
    from hf_soups import EvalSpec, soup_from_hub
    from hf_soups.testing import write_csv

    refs = [family["a"], family["d"]]
    val = write_csv(tmp_path / "val.csv", DATA)
    soup = soup_from_hub(refs, method="learned_by_layer", output_dir=tmp_path / "out",
                         eval_spec=EvalSpec(dataset=os.fspath(val), batch_size=4, learned_steps=2))
    recorded = json.loads(json.dumps(soup.recipe.to_dict()))
    assert recorded["method"] == "learned_by_layer"
    groups = recorded["parameters"]["groups"]
    assert list(groups) == ["bert.embeddings", "bert.encoder.layer.0", "bert.encoder.layer.1", "bert.pooler",
                            "classifier"]
    assert len({tuple(w) for w in groups.values()}) > 1  # per-layer weights, not one weight per model
    # the written soup is the streamed soup with the recorded weights, bit for bit
    again, _ = _soup(refs)
    model = again.load([groups[g] for g in again.groups])
    written = state_dict_of(tmp_path / "out")
    for name, value in model.state_dict().items():
        if name in written and value.is_floating_point():
            assert torch.equal(written[name], value), name
