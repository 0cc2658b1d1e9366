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


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Each test its own logits cache (the suite shares one HF_HOME)."""
    monkeypatch.setenv("HF_SOUPS_CACHE", os.fspath(tmp_path / "cache"))


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
    assert "at best" in str(early.card) and "at best" not in str(full.card)  # the card shows a bound as a bound
    evaluated = sum(e["examples"] for e in early.trace[1:])
    assert evaluated < n * (k - 1) == sum(f["examples"] for f in full.trace[1:])


def test_greedy_early_decisions_equal_full_evaluation_on_the_same_batches(sweep, tmp_path, monkeypatch):
    """With the examples the ingredients missed first (5 candidates here), every score in the trace, the seed's bar
    included, is bit for bit the full evaluation's on the same batches; only the examples evaluated differ."""
    from hf_soups.evaluation.held_out import HeldOutEvaluation

    ordered: list[bool] = []
    bar_score = HeldOutEvaluation.bar_score
    monkeypatch.setattr(HeldOutEvaluation, "bar_score", lambda self, i: (
        bar_score(self, i), ordered.append(self.evaluator.candidate_batches is not None))[0])
    early = _greedy(sweep, tmp_path, "early")
    run = Evaluator._run
    with monkeypatch.context() as m:  # no stop: every candidate on every example, on the same batches
        m.setattr(Evaluator, "_run", lambda self, model, stop=None, every=1, batches=None:
                  run(self, model, None, every, batches))
        full = _greedy(sweep, tmp_path, "full")
    assert ordered == [True, True]
    assert [(s["ingredient"], s["accepted"]) for s in early.trace] == [(s["ingredient"], s["accepted"])
                                                                         for s in full.trace]
    assert early.trace[0]["score"] == full.trace[0]["score"]
    for e, f in zip(early.trace[1:], full.trace[1:]):
        assert f["examples"] == 96 and not f.get("stopped_early")
        assert e["score"] == f["score"] if not e.get("stopped_early") else e["score"] >= f["score"]
    assert any(e.get("stopped_early") for e in early.trace)


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


def test_candidates_run_what_the_ingredients_missed_first(sweep):
    """`order_candidates` batches the examples the ingredients missed first (the hardest quarter, then the other
    missed ones, then the rest, each by length); `score_against` on those batches decides exactly as their full score
    and stops a candidate just short of the bar once its misses are in, where the length order needs more. The
    batches are rebuilt from the padded ones exactly: one priority for every row gives the evaluator's own batches."""
    import math

    from transformers import AutoModelForSequenceClassification

    from hf_soups.evaluation.metrics import accuracy_metric

    ev = _evaluator(sweep["val"], sweep["base"], accuracy_metric())
    n = len(ev)
    model = AutoModelForSequenceClassification.from_pretrained(sweep["refs"][0]).eval()
    truth, logits = ev.score(model)
    missed = set(torch.nonzero(logits.argmax(-1) != ev.references).flatten().tolist())
    assert 0 < len(missed) < n // 4  # (the fixture's fine-tunes are good: its misses are the hardest quarter)
    _, _, unordered, _ = ev.score_against(model, truth + 1 / n)

    same = ev.prepared.reorder([0] * n)
    assert [i.tolist() for i, _ in same] == [i.tolist() for i, _ in ev.batches]
    assert all(a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
               for (_, a), (_, b) in zip(same, ev.batches))
    values = ev.metric.per_example(logits.argmax(-1), ev.references)
    assert ev.order_candidates([values, values])
    rows = torch.cat([idx for idx, _ in ev.candidate_batches]).tolist()
    assert sorted(rows) == list(range(n)) and set(rows[:len(missed)]) == missed
    lengths = [int(inputs["attention_mask"].sum(1).max()) for _, inputs in ev.candidate_batches]
    first = math.ceil(len(missed) / 8)  # the missed examples' batches, then the others', each in length order
    assert lengths[first:] == sorted(lengths[first:])
    on_candidates = ev.score_logits(ev._run(model, batches=ev.candidate_batches)[0])
    for delta in (-2, 0, 1, 3):
        bar = on_candidates + delta / n
        score, _, examples, reach = ev.score_against(model, bar)
        if score is None:
            assert on_candidates < bar and reach < bar and examples < n
        else:
            assert score == on_candidates and examples == n
    _, _, ordered, _ = ev.score_against(model, on_candidates + 1 / n)
    assert ordered <= first * 8 < unordered


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


def _count_passes(monkeypatch):
    """Count forward passes over an evaluation set (whole or stopped early) by wrapping the evaluator's loop."""
    calls = []
    run = Evaluator._run

    def counted(self, model, *args, **kwargs):
        calls.append(len(self))
        return run(self, model, *args, **kwargs)

    monkeypatch.setattr(Evaluator, "_run", counted)
    return calls


def test_logits_computed_once_greedy_then_evaluate(sweep, tmp_path, monkeypatch):
    """Greedy over 3 ingredients (one destroyed) makes 5 passes over val (3 ingredients, 2 candidates, too few to
    reorder the examples for); evaluate on val right after makes 1 (the uniform soup): the ingredients, the
    ensembles and the greedy soup (greedy's last accepted candidate, on the evaluator's own batches) come from the
    cache. Without the cache it is 5 + 5."""
    from hf_soups.evaluation import logit_cache

    refs = [sweep["refs"][0], sweep["refs"][1], sweep["refs"][2]]  # the third is destroyed: uniform != greedy
    with monkeypatch.context() as m:
        m.setenv("HF_SOUPS_LOGIT_CACHE", "0")
        calls = _count_passes(m)
        soup = soup_from_hub(refs, method="greedy", output_dir=tmp_path / "nocache", eval_dataset=sweep["val"],
                             eval_spec=EvalSpec(), merge_options=MergeOptions(progress=False))
        greedy_passes = len(calls)
        uncached = soup.evaluate({"val": sweep["val"]})
        assert (greedy_passes, len(calls) - greedy_passes) == (5, 5)
    calls = _count_passes(monkeypatch)
    soup = soup_from_hub(refs, method="greedy", output_dir=tmp_path / "cached", eval_dataset=sweep["val"],
                         eval_spec=EvalSpec(), merge_options=MergeOptions(progress=False))
    assert len(calls) == 5
    report = soup.evaluate({"val": sweep["val"]})
    assert len(calls) == 5 + 1
    assert report.results == uncached.results  # the same numbers, from the cache
    assert os.listdir(logit_cache.cache_dir())


def test_logits_cache_reused_by_the_next_process_and_planted_entries_ignored(sweep, tmp_path):
    """A second process on the same data runs no pass for what the first computed in full; entries that are not
    this user's private, authenticated files are ignored (recomputed), whatever they hold."""
    script = (
        "import sys, json\n"
        "from hf_soups import EvalSpec, MergeOptions, soup_from_hub\n"
        "from hf_soups.evaluation import Evaluator\n"
        "calls = []\n"
        "run = Evaluator._run\n"
        "Evaluator._run = lambda self, model, *a, **k: calls.append(1) or run(self, model, *a, **k)\n"
        f"refs = {json.dumps(sweep['refs'][:2])}\n"
        f"soup = soup_from_hub(refs, method='greedy', output_dir=sys.argv[1], eval_spec=EvalSpec("
        f"dataset={json.dumps(sweep['val'])}, batch_size=8), merge_options=MergeOptions(progress=False))\n"
        "print(json.dumps({'passes': len(calls), 'scores': soup.scores, 'weights': list(soup.weights), "
        "'rejected': sum(not s['accepted'] for s in soup.trace)}))\n")
    env = {**os.environ, "HF_SOUPS_CACHE": os.fspath(tmp_path / "cache"),
           "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}

    def run(name):
        out = subprocess.run([sys.executable, "-c", script, os.fspath(tmp_path / name)], capture_output=True,
                             text=True, env=env, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    first, second = run("a"), run("b")
    # 2 ingredients + 1 candidate, then only the candidate (never looked up: hashed only once it passes)
    assert first["passes"] == 3 and second["passes"] == 1
    assert first["scores"] == second["scores"] and first["weights"] == second["weights"]
    folder = tmp_path / "cache" / "logits"
    entries = sorted(folder.iterdir())
    assert len(entries) == 3 - first["rejected"] >= 2
    # planted: same names, other bytes (a forged tensor without this user's MAC), group-writable, a link
    from safetensors.torch import load, save

    original = {p: p.read_bytes() for p in entries}
    forged = save({"logits": torch.zeros_like(load(original[entries[0]])["logits"])}, metadata={"key": "x"})
    entries[0].write_bytes(forged)
    if len(entries) == 3:
        os.chmod(entries[1], 0o664)
    target = tmp_path / "elsewhere.safetensors"
    target.write_bytes(original[entries[-1]])
    entries[-1].unlink()
    os.symlink(target, entries[-1])
    third = run("c")
    assert third["passes"] == 3 and third["scores"] == first["scores"]


def test_offloaded_candidates_are_released_before_the_next(sweep, tmp_path, monkeypatch):
    """Offloaded greedy (`max_memory` below one model): when a candidate is loaded, every model loaded before it
    is already freed (accelerate's hooks removed, collected), so memory stays flat in K; same decisions as in
    memory."""
    import weakref

    import hf_soups.modeling as modeling

    loaded: list[weakref.ref] = []
    alive_at_load: list[int] = []
    original = modeling.load_model

    def tracking(*args, **kwargs):
        alive_at_load.append(sum(r() is not None for r in loaded))
        model = original(*args, **kwargs)
        if kwargs.get("device_map"):
            loaded.append(weakref.ref(model))
        return model

    monkeypatch.setattr(modeling, "load_model", tracking)
    refs = sweep["refs"][:4]
    offloaded = _greedy({"refs": refs, "val": sweep["val"]}, tmp_path, "off",
                        max_memory={"cpu": "40KB"}, offload_folder=os.fspath(tmp_path / "off-folder"))
    monkeypatch.setattr(modeling, "load_model", original)
    in_memory = _greedy({"refs": refs, "val": sweep["val"]}, tmp_path, "mem")
    assert len(loaded) >= 2 * len(refs) - 1  # every ingredient and candidate went through the offload
    assert max(alive_at_load) == 0, alive_at_load
    assert [s["accepted"] for s in offloaded.trace] == [s["accepted"] for s in in_memory.trace]
    assert list(offloaded.weights) == list(in_memory.weights)


def test_logits_cache_is_bounded_least_recently_used_first(monkeypatch):
    """Beyond HF_SOUPS_LOGIT_CACHE_MB the least recently used entries go (a read counts as a use); what stays reads
    back bit for bit, and a key never written is a miss."""
    import time

    from hf_soups.evaluation import logit_cache

    entry = torch.randn(1000, 10)  # ~40 KB each
    monkeypatch.setenv("HF_SOUPS_LOGIT_CACHE_MB", str(130 / 1024))  # room for three
    for i in range(3):
        logit_cache.put(f"k{i}", entry + i)
        time.sleep(0.02)
    assert torch.equal(logit_cache.get("k0"), entry)  # k0 is now the most recently used
    time.sleep(0.02)
    logit_cache.put("k3", entry + 3)
    folder = logit_cache.cache_dir()
    assert sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder)) <= 130 * 1024
    assert logit_cache.get("k1") is None  # the least recently used went first
    assert torch.equal(logit_cache.get("k0"), entry) and torch.equal(logit_cache.get("k3"), entry + 3)
    assert logit_cache.get("never") is None
    assert all(os.stat(os.path.join(folder, f)).st_mode & 0o077 == 0 for f in os.listdir(folder))


def test_model_digest_reads_the_weights_in_place():
    """A model's digest hashes each tensor's own buffer: no bytes copy of the model (4 MiB of weights here), and
    the digest is the documented one (class, then each tensor's own sha256 of its name, dtype, shape and bytes,
    sorted by name; those computed on up to one thread per core), whatever the dtype or layout (a bf16 buffer, a
    transposed one)."""
    import hashlib
    import tracemalloc

    from hf_soups.evaluation import logit_cache

    model = torch.nn.Linear(1024, 1024)
    model.register_buffer("low", torch.arange(6, dtype=torch.bfloat16).reshape(2, 3))
    model.register_buffer("transposed", torch.arange(12, dtype=torch.float32).reshape(3, 4).t())
    h = hashlib.sha256(b"Linear")
    for name, t in sorted(model.state_dict().items()):
        h.update(hashlib.sha256(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode()
                                + t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()).digest())
    tracemalloc.start()
    try:
        digest = logit_cache.model_digest(model)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert digest == h.hexdigest()
    assert peak < 1024 * 1024, f"hashing allocated {peak} bytes for 4 MiB of weights"


def test_logits_cache_writes_without_fsync_and_ignores_a_torn_entry(monkeypatch, tmp_path):
    """Cache entries are not fsynced (write_atomic(durable=False)); a torn entry (cut short, as a crash may leave
    it) fails its HMAC and is a miss. Other atomic writes still fsync."""
    from hf_soups.atomic_file import write_atomic
    from hf_soups.evaluation import logit_cache

    assert logit_cache.cache_dir() is not None  # the cache secret exists (its first write is fsynced)
    synced: list[int] = []
    fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or fsync(fd))
    logits = torch.randn(50, 3)
    logit_cache.put("torn", logits)
    assert synced == [] and torch.equal(logit_cache.get("torn"), logits)
    (path,) = [os.path.join(logit_cache.cache_dir(), f) for f in os.listdir(logit_cache.cache_dir())]
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 7)
    assert logit_cache.get("torn") is None
    write_atomic(tmp_path / "card.md", "durable")
    assert len(synced) == 1


@pytest.mark.parametrize("reordered", [False, True])
def test_greedy_hashes_only_the_candidates_it_keeps(sweep, tmp_path, monkeypatch, reordered):
    """Every ingredient is hashed (its logits are looked up and kept), a candidate only when it passes the bar on
    the evaluator's own batches (its logits are kept); a rejected candidate, stopped early or not, is never hashed,
    nor one that ran on the reordered batches (nothing reads those logits back). The soup here is bit for bit its
    first ingredient (its twin joined), so `Soup.evaluate` finds its logits either way."""
    from hf_soups.evaluation import held_out, logit_cache

    monkeypatch.setattr(held_out, "_MIN_CANDIDATES_TO_ORDER", 3 if reordered else 99)

    import shutil

    twin = shutil.copytree(sweep["refs"][0], tmp_path / "twin")  # ties with it: accepted (the soup is the same)
    refs = [sweep["refs"][0], os.fspath(twin), sweep["refs"][1], sweep["refs"][2]]
    hashed: list[int] = []
    digest = logit_cache.model_digest
    monkeypatch.setattr(logit_cache, "model_digest", lambda model: hashed.append(1) or digest(model))
    soup = _greedy({"refs": refs, "val": sweep["val"]}, tmp_path, "soup")
    accepted = sum(step["accepted"] for step in soup.trace)
    assert 1 < accepted < len(refs) and any(step.get("stopped_early") for step in soup.trace), soup.trace
    assert len(hashed) == len(refs) + (0 if reordered else accepted - 1)
    runs: list[int] = []
    run = Evaluator._run
    monkeypatch.setattr(Evaluator, "_run", lambda self, model, *a, **kw: runs.append(1) or run(self, model, *a, **kw))
    soup.evaluate({"val": sweep["val"]}, progress=False, batch_size=8)
    assert len(runs) == 1  # the uniform soup; the ingredients and the greedy soup come from the cache


def test_small_csv_reads_as_datasets_csv_builder_without_it(tmp_path, monkeypatch):
    """A held-out csv/tsv is read as `datasets.load_dataset("csv")` reads it (same features and rows: quoting, NA,
    empty cells, a sentence pair, float labels), without running the builder (no copy under the datasets cache), and
    with a fingerprint of its bytes (re-reading gives the same one; other bytes another); a file with no rows is
    an `EvaluationError`."""
    import datasets

    from hf_soups import EvaluationError
    from hf_soups.evaluation.data import load_eval_dataset

    builder = datasets.load_dataset
    bodies = {"one.csv": 'text,label\nhello,1\n"quoted, comma\nover two lines",0\nNA,1\n',
              "pair.tsv": "sentence1\tsentence2\tlabel\na\tb\t0.5\nc\t\t1.5\n"}
    for name, body in bodies.items():
        path = tmp_path / name
        path.write_text(body)
        with monkeypatch.context() as m:
            m.setattr(datasets, "load_dataset", lambda *a, **kw: pytest.fail("the csv builder ran"))
            fast = load_eval_dataset(os.fspath(path))
            again = load_eval_dataset(os.fspath(path))
        kwargs = {"delimiter": "\t"} if name.endswith(".tsv") else {}
        truth = builder("csv", data_files=os.fspath(path), split="train", cache_dir=tmp_path / "ref",
                                      **kwargs)
        assert fast.features == truth.features and fast.to_dict() == truth.to_dict()
        assert fast._fingerprint == again._fingerprint
    path.write_text(bodies["pair.tsv"] + "d\te\t2.5\n")
    assert load_eval_dataset(os.fspath(path))._fingerprint != fast._fingerprint
    (tmp_path / "empty.csv").write_text("text,label\n")
    with pytest.raises(EvaluationError, match="no rows"):
        load_eval_dataset(os.fspath(tmp_path / "empty.csv"))
