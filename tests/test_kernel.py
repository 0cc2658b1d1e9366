"""One weighted-sum kernel: the engine, greedy and learned candidates and the evaluation baselines compute every soup
tensor with `merge.ops.weighted_sum`, so the same weights give bit-identical tensors everywhere."""

from __future__ import annotations

import contextlib
import itertools
import os

import pytest
import torch
from conftest import state_dict_of
from datasets import Dataset

from hf_soups import EvalSpec, MergeOptions, soup_from_hub
from hf_soups.checkpoint import open_checkpoint
from hf_soups.checkpoint.meta import read_config
from hf_soups.evaluation import evaluator as evaluator_module
from hf_soups.evaluation.candidates import ModelHolder, read_float_state
from hf_soups.merge import build_plan, merge_state_dict
from hf_soups.merge.ops import weighted_sum
from hf_soups.recipes.greedy import greedy_ensemble
from hf_soups.testing import sentiment_examples


def test_weighted_sum_against_independent_truth():
    gen = torch.Generator().manual_seed(0)
    ts = [torch.randn(1000, generator=gen) for _ in range(4)]
    torch.testing.assert_close(weighted_sum(ts, [0.25] * 4), torch.stack(ts).mean(0), rtol=0, atol=1e-6)
    ws = [0.1, 0.2, 0.3, 0.4]
    torch.testing.assert_close(weighted_sum(ts, ws), sum(w * t.double() for w, t in zip(ws, ts)).float(),
                               rtol=0, atol=1e-6)
    assert torch.equal(weighted_sum(ts, [0.0, 1.0, 0.0, 0.0]), ts[1])  # one tensor: exact
    half = [t.to(torch.bfloat16) for t in ts]
    out = weighted_sum(iter(half), [1.0] * 4)
    assert out.dtype == torch.float32  # bf16 inputs, fp32 accumulation
    torch.testing.assert_close(out, torch.stack([t.float() for t in half]).mean(0), rtol=0, atol=1e-6)
    with pytest.raises(ValueError):
        weighted_sum(ts, [0.0] * 4)
    with pytest.raises(ValueError):
        weighted_sum(ts[:2], [0.5, 0.25, 0.25])


@contextlib.contextmanager
def _readers(paths):
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(open_checkpoint(p)) for p in paths]


def _fp32_plan(readers):
    return build_plan([r.tensors for r in readers], [1.0] * len(readers), dtype=torch.float32)


WEIGHTS = [(1, 0, 0), (0, 1, 1), (1, 1, 1), (0.2, 0.5, 0.3), (0.7, 0.0, 0.3), (1 / 3, 1 / 3, 1 / 3)]


def test_in_memory_candidates_equal_the_engine_bit_for_bit(family):
    paths = [family["a"], family["b"], family["d"]]  # sharded fp32, bf16, single-file fp32: chunks cross shards
    with _readers(paths) as readers:
        plan = _fp32_plan(readers)
        holder = ModelHolder(paths[0], read_config(os.path.join(paths[0], "config.json"), "a"))
        states = [holder.model_names(read_float_state(plan, r, i)) for i, r in enumerate(readers)]
        for w in WEIGHTS:
            weighted = plan.with_weights(w)
            engine = merge_state_dict(weighted, readers)
            model = {k: v.clone() for k, v in holder.load_plan(weighted, readers).state_dict().items()}
            combined = holder.load_combination(states, w).state_dict()
            compared = 0
            for tp in plan.tensors:
                if tp.average:
                    name = holder.name_map.get(tp.name, tp.name)
                    assert torch.equal(model[name], engine[tp.name]), (w, tp.name)
                    assert torch.equal(combined[name], engine[tp.name]), (w, tp.name)
                    compared += 1
            assert compared == sum(tp.average for tp in plan.tensors) > 10


class _Scripted:
    """Replaces `Evaluator.score`: records the model's tensors at each call and returns scripted scores."""

    def __init__(self, scores):
        self.scores, self.states = iter(scores), []

    def __call__(self, model):
        self.states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return next(self.scores), torch.zeros(1)


def _val():
    return Dataset.from_dict(sentiment_examples(16, seed=3))


def test_greedy_scores_exactly_the_soup_it_writes(family, tmp_path, monkeypatch):
    """Accepted out of ingredient order (d, then a, then c): each trial is still summed in the engine's order, so the
    last accepted trial is bit for bit the written soup (a running sum in acceptance order is not)."""
    refs = [family["a"], family["c"], family["d"]]
    scripted = _Scripted([0.5, 0.3, 0.9, 0.95, 0.96])  # individuals a, c, d; then trials d+a, d+a+c
    monkeypatch.setattr(evaluator_module.Evaluator, "score", lambda self, model: scripted(model))
    # greedy scores its trials against the bar (early decisions): scripted too, as a full evaluation
    monkeypatch.setattr(evaluator_module.Evaluator, "score_against",
                        lambda self, model, bar, strict=False: (*scripted(model), len(self.references), None))
    soup = soup_from_hub(refs, "greedy", eval_dataset=_val(), output_dir=tmp_path / "g",
                         merge_options=MergeOptions(progress=False))
    assert [s["ingredient"] for s in soup.trace] == [str(family[x]) for x in "dac"]
    assert all(s["accepted"] for s in soup.trace) and soup.weights == pytest.approx([1 / 3] * 3)
    written = state_dict_of(soup.output_dir)
    last = scripted.states[-1]
    sds = [state_dict_of(r) for r in refs]
    in_acceptance_order = {k: (((sds[2][k] + sds[0][k]) + sds[1][k]) / 3) for k in written}
    assert any(not torch.equal(in_acceptance_order[k], written[k]) for k in written if written[k].is_floating_point())
    compared = [k for k in written if k in last and written[k].is_floating_point()]
    assert len(compared) > 10 and all(torch.equal(last[k], written[k]) for k in compared)
    for (i, j), state in zip([(2, 0)], scripted.states[3:4]):  # the first trial: d + a
        with _readers([refs[i], refs[j]]) as readers:
            pair = merge_state_dict(build_plan([r.tensors for r in readers], [1, 1]), readers)
        assert all(torch.equal(state[k], pair[k]) for k in compared)


def test_learned_scores_exactly_the_soup_it_writes(family, tmp_path, monkeypatch):
    refs = [family["a"], family["c"], family["d"]]
    scripted = _Scripted([0.5, 0.5, 0.5, 0.7, 0.7])  # individuals; uniform; learned (kept: not below uniform)
    monkeypatch.setattr(evaluator_module.Evaluator, "score", lambda self, model: scripted(model))
    soup = soup_from_hub(refs, "learned", eval_dataset=_val(), output_dir=tmp_path / "l",
                         eval_spec=EvalSpec(learned_steps=3), merge_options=MergeOptions(progress=False))
    assert len(set(soup.weights)) > 1  # learned, unequal weights
    written = state_dict_of(soup.output_dir)
    compared = [k for k in written if k in scripted.states[-1] and written[k].is_floating_point()]
    assert len(compared) > 10 and all(torch.equal(scripted.states[-1][k], written[k]) for k in compared)
    uniform = state_dict_of(soup_from_hub(refs, output_dir=tmp_path / "u",
                                          merge_options=MergeOptions(progress=False)).output_dir)
    assert all(torch.equal(scripted.states[3][k], uniform[k]) for k in compared)


def test_ensembles_average_logits_with_the_kernel():
    gen = torch.Generator().manual_seed(1)
    logits = [torch.randn(50, 3, generator=gen) for _ in range(4)]
    seen = []

    def score_logits(avg):
        seen.append(avg)
        return float(avg.sum())

    members = greedy_ensemble(logits, [0.9, 0.1, 0.5, 0.7], score_logits)
    for trial in seen:
        assert any(torch.equal(trial, weighted_sum([logits[i] for i in subset], [1.0] * len(subset)))
                   for k in range(2, 5) for subset in itertools.combinations(range(4), k))
    assert members == sorted(members) and 0 in members


@pytest.mark.parametrize("dtypes", [(torch.bfloat16,) * 4, (torch.float16,) * 4,
                                    (torch.float32, torch.bfloat16, torch.float16, torch.bfloat16)])
@pytest.mark.parametrize("weights", [[1.0] * 4, [0.1, 0.2, 0.3, 0.4], [0.0, 0.5, 0.0, 0.5]])
def test_scratch_buffer_changes_no_bit(dtypes, weights):
    """Half-precision inputs converted into a reused fp32 buffer: the same bits as torch's own per-add temporary."""
    gen = torch.Generator().manual_seed(2)
    ts = [torch.randn(31, 17, generator=gen).to(d) for d in dtypes]
    scratch = torch.full((1000,), float("nan"))  # larger than needed, and dirty
    with_scratch = weighted_sum(ts, weights, scratch=scratch)
    assert torch.equal(with_scratch, weighted_sum(ts, weights))
    active = [(w, t) for w, t in zip(weights, ts) if w]
    if len({w for w, _ in active}) == 1:
        expected = torch.stack([t.float() for _, t in active]).sum(0) / len(active)
    else:
        expected = sum(w * t.double() for w, t in active).float()
    torch.testing.assert_close(with_scratch, expected, rtol=0, atol=1e-6)
