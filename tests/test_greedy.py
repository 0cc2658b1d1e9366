"""Greedy and learned soups, baselines and evaluation, on tiny classifiers really fine-tuned in the fixture."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import state_dict_of
from datasets import ClassLabel, Dataset
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from hf_soups import LabelMismatchError, soup_from_hub
from hf_soups.evaluation import Evaluator, resolve_metric
from hf_soups.recipes.greedy import greedy_select
from hf_soups.testing import make_tiny_sweep, sentiment_examples
from hf_soups import EvalSpec, MergeOptions

METRIC_DIR = os.path.join(os.path.dirname(__file__), "data", "metrics", "exact_match_rate")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("trained")
    sweep = make_tiny_sweep(root)  # three real fine-tunes, and one destroyed by a destructive learning rate
    base, good, bad = sweep["base"], sweep["good"], sweep["bad"]
    val = Dataset.from_dict(sentiment_examples(200, seed=123))
    test = Dataset.from_dict(sentiment_examples(300, seed=7))
    return {"base": base, "good": good, "bad": bad, "val": val, "test": test, "root": root}


def _accuracy(path, ds):
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    with torch.no_grad():
        logits = model(**tok(list(ds["text"]), return_tensors="pt", padding=True)).logits
    return logits, float((logits.argmax(-1) == torch.tensor(list(ds["label"]))).float().mean())


def test_greedy_accepts_good_and_rejects_bad(trained, tmp_path):
    refs = [*trained["good"], trained["bad"]]
    soup = soup_from_hub(refs, method="greedy", eval_dataset=trained["val"], output_dir=tmp_path / "g",
                         merge_options=MergeOptions(progress=False))
    scores = {str(p): _accuracy(p, trained["val"])[1] for p in refs}  # independent truth
    assert soup.scores == pytest.approx(scores)
    assert len(soup.trace) == len(refs)
    assert soup.trace[0]["ingredient"] == max(scores, key=scores.get) and soup.trace[0]["accepted"]
    running = soup.trace[0]["score"]
    for step in soup.trace[1:]:
        assert step["accepted"] == (step["score"] >= running)
        running = max(running, step["score"]) if step["accepted"] else running
    decisions = {s["ingredient"]: s["accepted"] for s in soup.trace}
    assert decisions[str(trained["bad"])] is False
    assert sum(decisions.values()) >= 2  # at least one ingredient joined the best one
    kept = [p for p in refs if decisions[str(p)]]
    assert [i.weight for i in soup.ingredients] == pytest.approx([1 / len(kept) if decisions[str(p)] else 0.0
                                                                 for p in refs])
    sds = [state_dict_of(p) for p in kept]
    out = state_dict_of(soup.output_dir)
    for k in out:
        assert (out[k] - torch.stack([sd[k] for sd in sds]).mean(0)).abs().max() <= 1e-6
    _, soup_acc = _accuracy(soup.output_dir, trained["val"])
    assert soup_acc == pytest.approx(running) and soup_acc >= max(scores.values())
    assert "## Greedy trace" in str(soup.card) and "rejected" in str(soup.card)


def test_strict_rule_rejects_ties():
    scores = [0.9, 0.8, 0.7]

    def score_mean(members, candidate):
        return 0.9  # every candidate ties with the best

    accepted, trace = greedy_select(["a", "b", "c"], scores, score_mean)
    assert accepted == [0, 1, 2] and all(t["accepted"] for t in trace)
    accepted, trace = greedy_select(["a", "b", "c"], scores, score_mean, strict=True)
    assert accepted == [0] and [t["accepted"] for t in trace] == [True, False, False]


def test_evaluate_baselines_and_ensemble_equals_mean_logits(trained, tmp_path):
    refs = [*trained["good"], trained["bad"]]
    soup = soup_from_hub(refs, method="greedy", eval_dataset=trained["val"], output_dir=tmp_path / "g",
                         merge_options=MergeOptions(progress=False))
    report = soup.evaluate({"val": trained["val"], "test": trained["test"]}, base=trained["base"])
    for name in ("best_individual", "uniform_soup", "greedy_soup", "ensemble", "greedy_ensemble", "wise_ft@0.5"):
        assert name in report.results["test"], name
    all_logits = [_accuracy(p, trained["test"])[0] for p in refs]
    labels = torch.tensor(list(trained["test"]["label"]))
    expected = float((torch.stack(all_logits).mean(0).argmax(-1) == labels).float().mean())
    assert report.results["test"]["ensemble"] == pytest.approx(expected)
    _, greedy_acc = _accuracy(soup.output_dir, trained["test"])
    assert report.results["test"]["greedy_soup"] == pytest.approx(greedy_acc)
    assert report.results["test"]["wise_ft@1"] == pytest.approx(greedy_acc)
    _, base_acc = _accuracy(trained["base"], trained["test"])
    assert report.results["test"]["wise_ft@0"] == pytest.approx(base_acc)
    assert not soup.results and "| greedy_soup |" not in str(soup.card)  # evaluate changes nothing in place
    shown = soup.with_evaluation(report)
    assert shown.results["test"]["greedy_soup"] == pytest.approx(greedy_acc)
    assert "model-index" in str(shown.card) and "| greedy_soup |" in str(shown.card)


def test_learned_soup_weights_sum_to_one_and_beat_uniform(trained, tmp_path):
    refs = [*trained["good"], trained["bad"]]
    learned = soup_from_hub(refs, method="learned", eval_dataset=trained["val"], output_dir=tmp_path / "l",
                            merge_options=MergeOptions(progress=False))
    assert sum(learned.weights) == pytest.approx(1.0) and all(w >= 0 for w in learned.weights)
    uniform = soup_from_hub(refs, output_dir=tmp_path / "u", merge_options=MergeOptions(progress=False))
    _, learned_acc = _accuracy(learned.output_dir, trained["val"])
    _, uniform_acc = _accuracy(uniform.output_dir, trained["val"])
    assert learned_acc >= uniform_acc
    sds = [state_dict_of(p) for p in refs]
    out = state_dict_of(learned.output_dir)
    k = "classifier.weight"
    expected = sum(w * sd[k].float() for w, sd in zip(learned.weights, sds))
    assert (out[k] - expected).abs().max() <= 1e-6


def test_label_map_mismatch_is_a_clear_error(trained, tmp_path):
    ds = Dataset.from_dict(sentiment_examples(20, seed=1))
    other_names = ds.cast_column("label", ClassLabel(names=["good", "bad"]))
    with pytest.raises(LabelMismatchError) as err:
        soup_from_hub(trained["good"][:2], method="greedy", eval_dataset=other_names, output_dir=tmp_path / "x",
                      merge_options=MergeOptions(progress=False))
    assert "negative" in str(err.value) and "Fix:" in str(err.value)
    assert not (tmp_path / "x").exists()
    # the same names with other ids are mapped by name (tests/test_vision_soups.py checks scores on an imagefolder)
    swapped = ds.cast_column("label", ClassLabel(names=["positive", "negative"]))
    config = {"architectures": ["BertForSequenceClassification"], "id2label": {"0": "negative", "1": "positive"}}
    assert Evaluator(swapped, trained["good"][0], config).references.tolist() == [1 - y for y in ds["label"]]
    out_of_range = Dataset.from_dict({"text": ["good movie"], "label": [5]})
    with pytest.raises(LabelMismatchError, match="outside"):
        soup_from_hub(trained["good"][:2], method="greedy", eval_dataset=out_of_range,
                      merge_options=MergeOptions(progress=False))
    named = Dataset.from_dict({"text": ["good movie", "awful plot"], "label": ["positive", "negative"]})
    config = {"architectures": ["BertForSequenceClassification"], "id2label": {"0": "negative", "1": "positive"}}
    assert Evaluator(named, trained["good"][0], config).references.tolist() == [1, 0]
    unknown = Dataset.from_dict({"text": ["good movie"], "label": ["meh"]})
    with pytest.raises(LabelMismatchError, match="meh"):
        Evaluator(unknown, trained["good"][0], config)


def test_metrics_offline_and_from_local_scripts(trained, tmp_path):
    import evaluate

    acc = resolve_metric("accuracy")
    assert acc.name == "accuracy" and acc([1, 0, 1, 1], [1, 1, 1, 0]) == 0.5
    module = evaluate.load(METRIC_DIR)
    for metric in (module, METRIC_DIR):
        m = resolve_metric(metric)
        assert m.name == "exact_match_rate" and m([1, 0, 1, 1], [1, 1, 1, 0]) == 0.5
    a = soup_from_hub(trained["good"], method="greedy", eval_dataset=trained["val"],
                      merge_options=MergeOptions(progress=False), eval_spec=EvalSpec(metric=module),
                      output_dir=tmp_path / "a")
    b = soup_from_hub(trained["good"], method="greedy", eval_dataset=trained["val"], output_dir=tmp_path / "b",
                      merge_options=MergeOptions(progress=False))
    assert a.scores == b.scores and a.trace == b.trace


def test_image_classifier_greedy_and_evaluate(tmp_path):
    """The vision path: the image processor prepares pixels once; transformers-5 renamed ViT weights load right."""
    import numpy as np
    from datasets import Image as ImageFeature
    from PIL import Image
    from transformers import AutoImageProcessor, ViTForImageClassification

    from hf_soups.testing import make_tiny_vit, perturb_checkpoint

    base = make_tiny_vit(tmp_path / "base", seed=0)
    refs = [perturb_checkpoint(base, tmp_path / f"v{i}", seed=i, scale=0.05) for i in range(3)]
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)) for _ in range(40)]
    ds = Dataset.from_dict({"img": images, "label": [i % 3 for i in range(40)]}).cast_column("img", ImageFeature())
    soup = soup_from_hub(refs, method="greedy", eval_dataset=ds, output_dir=tmp_path / "soup",
                         merge_options=MergeOptions(progress=False))
    processor = AutoImageProcessor.from_pretrained(refs[0])
    pixels = processor([im.convert("RGB") for im in images], return_tensors="pt")["pixel_values"]
    labels = torch.tensor([i % 3 for i in range(40)])
    for ref in refs:  # independent truth for every individual score
        model = ViTForImageClassification.from_pretrained(ref).eval()
        with torch.no_grad():
            expected = float((model(pixel_values=pixels).logits.argmax(-1) == labels).float().mean())
        assert soup.scores[str(ref)] == pytest.approx(expected)
    report = soup.evaluate({"val": ds})
    assert report.results["val"]["best_individual"] == pytest.approx(max(soup.scores.values()))
