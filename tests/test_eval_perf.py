"""Held-out evaluation performance (issue #29): greedy's exact early decisions, the metric loaded once without
scikit-learn on the hot path, models released between candidates."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from hf_soups import EvalSpec, MergeOptions, soup_from_hub
from hf_soups.evaluation import Evaluator
from hf_soups.metric_spec import Metric
from hf_soups.testing import (finetune_tiny_classifier, make_tiny_bert, perturb_checkpoint, sentiment_examples,
                              write_csv)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """K=6: four close fine-tunes of one base and two destroyed ones (far off), and a held-out set of 96."""
    root = tmp_path_factory.mktemp("perf_sweep")
    init = make_tiny_bert(root / "init", seed=0, num_labels=2, id2label={0: "negative", 1: "positive"},
                          initializer_range=0.1)
    base = finetune_tiny_classifier(init, root / "base", seed=0, lr=1e-3, steps=60)
    refs = [perturb_checkpoint(base, root / f"ok{i}", seed=i + 1, scale=0.02) for i in range(4)]
    refs.insert(2, perturb_checkpoint(base, root / "bad0", seed=11, scale=30.0))
    refs.append(perturb_checkpoint(base, root / "bad1", seed=12, scale=30.0))
    val = write_csv(root / "val.csv", sentiment_examples(96, seed=5))
    return {"refs": [os.fspath(r) for r in refs], "val": val, "base": os.fspath(base)}


def _greedy(sweep, tmp_path, name, **spec):
    return soup_from_hub(sweep["refs"], method="greedy", output_dir=tmp_path / name,
                         eval_spec=EvalSpec(dataset=sweep["val"], batch_size=8, **spec),
                         merge_options=MergeOptions(progress=False))


def _full_evaluation(monkeypatch):
    """Every candidate evaluated on every example (the decision rule without early stops)."""
    monkeypatch.setattr(Evaluator, "decides_early", property(lambda self: False))


@pytest.mark.parametrize("strict", [False, True])
def test_greedy_early_decisions_equal_full_evaluation(sweep, tmp_path, monkeypatch, strict):
    early = _greedy(sweep, tmp_path, "early", strict=strict)
    with monkeypatch.context() as m:
        _full_evaluation(m)
        full = _greedy(sweep, tmp_path, "full", strict=strict)
    n, k = 96, len(sweep["refs"])
    assert [s["accepted"] for s in early.trace] == [s["accepted"] for s in full.trace]
    assert [s["ingredient"] for s in early.trace] == [s["ingredient"] for s in full.trace]
    assert list(early.weights) == list(full.weights)
    bad = {sweep["refs"][2], sweep["refs"][5]}
    for e, f in zip(early.trace[1:], full.trace[1:]):
        assert f["examples"] == n and not f.get("stopped_early")
        if e.get("stopped_early"):
            assert not e["accepted"] and e["examples"] < n
            assert e["score"] >= f["score"]  # the best it could have reached: at or above its full score
        else:
            assert e["score"] == f["score"] and e["examples"] == n
    stopped = {e["ingredient"] for e in early.trace if e.get("stopped_early")}
    assert bad <= stopped  # the destroyed candidates stopped early (so may rejected close ones)
    assert all(e["examples"] <= n // 2 for e in early.trace if e["ingredient"] in bad)
    evaluated = sum(e["examples"] for e in early.trace[1:])
    assert evaluated < n * (k - 1) == sum(f["examples"] for f in full.trace[1:])


def _evaluator(val, base, metric):
    from hf_soups.checkpoint.meta import read_config

    config = read_config(os.path.join(base, "config.json"), base)
    return Evaluator(val, base, config, metric=metric, batch_size=8)


@pytest.mark.parametrize("higher_is_better", [True, False])
def test_score_against_decides_as_the_full_score(sweep, higher_is_better):
    """For bars around the exact score (ties included), stopping early <=> the full score fails the bar; a
    lower-is-better metric with an unbounded per-example range (an error count) decides in the other direction."""
    from transformers import AutoModelForSequenceClassification

    import numpy as np

    def errors(p, r):
        return (np.asarray(p) != np.asarray(r)).astype(np.float64)

    metric = (Metric("acc", lambda p, r: float((np.asarray(p) == np.asarray(r)).mean()), None, True,
                     per_example=lambda p, r: 1.0 - errors(p, r)) if higher_is_better else
              Metric("err", lambda p, r: float(errors(p, r).mean()), None, False, per_example=errors,
                     per_example_range=(0.0, float("inf"))))
    ev = _evaluator(sweep["val"], sweep["base"], metric)
    n = len(ev)
    for path in (sweep["refs"][0], sweep["refs"][2]):
        model = AutoModelForSequenceClassification.from_pretrained(path).eval()
        truth, _ = ev.score(model)
        for delta in (-3, -1, 0, 1, 3, 40):
            bar = truth + delta / n
            score, logits, examples, reach = ev.score_against(model, bar)
            fails = truth < bar if higher_is_better else truth > bar
            if score is None:
                assert fails and examples < n and (reach < bar if higher_is_better else reach > bar)
            else:
                assert score == truth and examples == n and logits is not None


def test_metric_without_per_example_values_is_evaluated_in_full(sweep, tmp_path):
    """A metric that is not a mean of per-example values (a callable here) is never stopped early, and the trace
    says why."""
    import numpy as np

    def balanced(p, r):
        p, r = np.asarray(p), np.asarray(r)
        return float(np.mean([(p[r == c] == c).mean() for c in np.unique(r)]))

    soup = _greedy(sweep, tmp_path, "f1", metric=balanced)
    n = 96
    for step in soup.trace[1:]:
        if "reason" in step and step.get("examples") is None:
            continue
        assert step["examples"] == n and not step.get("stopped_early")
        assert "not a mean of per-example values" in step["evaluated_in_full"]


def test_greedy_with_accuracy_imports_no_sklearn(sweep, tmp_path):
    """The native accuracy is loaded before the first candidate, without `evaluate` or scikit-learn."""
    script = (
        "import sys, json\n"
        "from datasets import Dataset\n"
        "from hf_soups import EvalSpec, MergeOptions, soup_from_hub\n"
        "from hf_soups.testing import sentiment_examples\n"
        f"refs = {json.dumps(sweep['refs'][:3])}\n"
        "soup = soup_from_hub(refs, method='greedy', output_dir=sys.argv[1], eval_spec=EvalSpec("
        "batch_size=8), eval_dataset=Dataset.from_dict(sentiment_examples(24, seed=1)), "
        "merge_options=MergeOptions(progress=False))\n"
        "print(json.dumps({'sklearn': 'sklearn' in sys.modules, 'evaluate': 'evaluate' in sys.modules, "
        "'steps': len(soup.trace)}))\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", script, os.fspath(tmp_path / "s")], capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"sklearn": False, "evaluate": False, "steps": 3}
