"""Vision soups done right (issue 17), on real tiny vision models fine-tuned on real Fashion-MNIST images.

A BatchNorm ConvNet (`ResNetForImageClassification`) and a ViT, each fine-tuned a few steps from one shared
initialisation on a few hundred images of Debian's `dataset-fashion-mnist`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import state_dict_of

from hf_soups import soup_from_hub
from hf_soups.recipes import EvalSpec

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
from _fashion import NAMES, arrays, train_vit  # noqa: E402

LABELS = [n.replace("/", "-") for n in NAMES]  # class names double as imagefolder folder names
ID2LABEL = dict(enumerate(LABELS))


def to_dataset(x, y, names=LABELS):
    from datasets import ClassLabel, Dataset, Features
    from datasets import Image as ImageFeature
    from PIL import Image

    features = Features({"image": ImageFeature(), "label": ClassLabel(names=list(names))})
    return Dataset.from_dict({"image": [Image.fromarray(a) for a in x], "label": [int(v) for v in y]},
                             features=features)


@pytest.fixture(scope="module")
def fashion():
    train_x, train_y, test_x, test_y = arrays()
    return {"train": (train_x[:480], train_y[:480]), "val": (train_x[-160:], train_y[-160:]),
            "test": (test_x[:160], test_y[:160])}


def _processor(channels, size=28, **kwargs):
    from transformers import ViTImageProcessor

    settings = {"image_mean": [0.5] * channels, "image_std": [0.5] * channels, **kwargs}
    return ViTImageProcessor(size={"height": size, "width": size}, **settings)


def _base(path, kind, channels=3, seed=0):
    from transformers import ResNetConfig, ResNetForImageClassification, ViTConfig, ViTForImageClassification

    labels = {"num_labels": 10, "id2label": ID2LABEL, "label2id": {v: k for k, v in ID2LABEL.items()}}
    if kind == "resnet":
        config = ResNetConfig(num_channels=channels, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                              layer_type="basic", **labels)
        cls = ResNetForImageClassification
    else:
        config = ViTConfig(image_size=28, patch_size=7, num_channels=channels, hidden_size=32, num_hidden_layers=2,
                           num_attention_heads=4, intermediate_size=64, **labels)
        cls = ViTForImageClassification
    torch.manual_seed(seed)
    cls(config).save_pretrained(path)
    _processor(channels).save_pretrained(path)
    return str(path)


def _family(root, fashion, kind, channels=3, n=3):
    x, y = fashion["train"]
    base = _base(os.path.join(root, "base"), kind, channels)
    grid = [(1e-3, 0), (2e-3, 1), (7e-4, 2)][:n]  # one epoch of 15 AdamW steps each, BatchNorm in training mode
    return [train_vit(base, x, y, os.path.join(root, f"ft{i}"), lr=lr, seed=seed, epochs=1, batch_size=32)
            for i, (lr, seed) in enumerate(grid)]


@pytest.fixture(scope="module")
def resnets(tmp_path_factory, fashion):
    return _family(str(tmp_path_factory.mktemp("resnets")), fashion, "resnet")


@pytest.fixture(scope="module")
def vits(tmp_path_factory, fashion):
    return _family(str(tmp_path_factory.mktemp("vits")), fashion, "vit")


def _accuracy(directory, images, labels, mode="RGB"):
    """Independent truth: transformers' own model and processor, no hf_soups code."""
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    processor = AutoImageProcessor.from_pretrained(directory)
    model = AutoModelForImageClassification.from_pretrained(directory).eval()
    pixels = processor([Image.fromarray(a).convert(mode) for a in images], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        pred = model(pixel_values=pixels).logits.argmax(-1).numpy()
    return float((pred == labels).mean())


# ---------------------------------------------------------------------------------------------------------------
# 1. Learned soups of BatchNorm models


def test_learned_soup_of_batchnorm_models_averages_statistics_with_the_learned_weights(resnets, fashion, tmp_path):
    val = to_dataset(*fashion["val"])
    soup = soup_from_hub(resnets, "learned", eval_dataset=val, output_dir=tmp_path / "soup",
                         eval_spec=EvalSpec(learned_steps=12, batch_size=32))
    weights = soup.weights
    assert abs(sum(weights) - 1) < 1e-6 and len(weights) == 3
    sds = [state_dict_of(r) for r in resnets]
    out = state_dict_of(soup.output_dir)
    stats = [k for k in out if k.endswith(("running_mean", "running_var"))]
    assert stats
    for k in stats:  # documented: averaged with the learned weights (no gradient ever flowed into them)
        expected = sum(w * sd[k].double() for w, sd in zip(weights, sds)).float()
        torch.testing.assert_close(out[k], expected, atol=1e-6, rtol=1e-5)
        assert not torch.equal(sds[0][k], sds[1][k])  # the statistics really differ between ingredients
    for k in (k for k in out if k.endswith("num_batches_tracked")):
        assert torch.equal(out[k], sds[0][k])  # integer buffers follow int_rule="first"
    # the learned trace's score is the shipped soup's accuracy, measured by transformers alone
    learned_score = next(s["score"] for s in soup.trace if s["ingredient"] == "learned weights")
    uniform_score = next(s["score"] for s in soup.trace if s["ingredient"] == "uniform weights")
    assert _accuracy(soup.output_dir, *fashion["val"]) == pytest.approx(max(learned_score, uniform_score))


def test_cli_learned_soup_of_batchnorm_models(resnets, fashion, tmp_path):
    val = to_dataset(*fashion["val"])
    val.save_to_disk(str(tmp_path / "val"))
    proc = subprocess.run([sys.executable, "-m", "hf_soups", "soup", *resnets, "--method", "learned",
                           "--eval-dataset", str(tmp_path / "val"), "--output", str(tmp_path / "soup")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "weight" in proc.stdout
    with open(tmp_path / "soup" / "config.json") as f:
        assert json.load(f)["architectures"] == ["ResNetForImageClassification"]


# ---------------------------------------------------------------------------------------------------------------
# 2. Image processors in the verdict


def _copy_with_processor(src, dst, **settings):
    import shutil

    shutil.copytree(src, dst)
    _processor(3, **settings).save_pretrained(dst)
    return str(dst)


def test_processor_mismatch_is_a_problem_naming_ingredient_and_field_local_and_hub(vits, tmp_path, api):
    from conftest import publish

    from hf_soups import check_compatibility
    from hf_soups.errors import IncompatibleIngredientsError

    big = _copy_with_processor(vits[1], tmp_path / "vit-56px", size=56)
    report = check_compatibility([vits[0], big, vits[2]])
    assert not report.compatible
    problem = next(p for p in report.problems if p.field == "image processor size")
    assert problem.ingredient == big and "56" in problem.message and "28" in problem.message
    assert [p.ingredient for p in report.problems] == [big]  # the two agreeing ingredients are not blamed
    with pytest.raises(IncompatibleIngredientsError, match="image processor size"):
        soup_from_hub([vits[0], big], output_dir=tmp_path / "soup")
    assert not (tmp_path / "soup").exists()  # nothing written, nothing changed silently
    # the Hub preflight fetches preprocessor_config.json (a small file) before any weight
    publish(api, vits[0], "alice/vit-fashion-a")
    publish(api, big, "alice/vit-fashion-56px")
    hub_report = check_compatibility(["alice/vit-fashion-a", "alice/vit-fashion-56px"])
    hub_problem = next(p for p in hub_report.problems if p.field == "image processor size")
    assert hub_problem.ingredient.startswith("alice/vit-fashion-56px@")
    normalize = _copy_with_processor(vits[1], tmp_path / "vit-mean", image_mean=[0.2] * 3)
    assert any(p.field == "image processor image_mean" for p in check_compatibility([vits[0], normalize]).problems)


def test_harmless_processor_difference_each_scored_with_its_own_soup_ships_the_lead(vits, fashion, tmp_path):
    """The first ingredient (a ruined fine-tune, bicubic resampling) gets weight 0: its processor must not ship."""
    from hf_soups import check_compatibility
    from hf_soups.testing import perturb_checkpoint

    ruined = perturb_checkpoint(vits[0], tmp_path / "ruined", seed=7, scale=3.0)
    _processor(3, resample=3).save_pretrained(ruined)
    refs = [ruined, *vits]
    report = check_compatibility(refs)
    assert report.compatible
    assert [(w.ingredient, w.field) for w in report.warnings if w.field.startswith("image processor")] == \
        [(vits[i], "image processor resample") for i in range(3)]
    val = to_dataset(*fashion["val"])
    soup = soup_from_hub(refs, "greedy", eval_dataset=val, output_dir=tmp_path / "soup")
    assert soup.scores[ruined] < max(soup.scores.values())  # never the lead: weight 0, or a tie with a worse score
    for ref in refs:  # each individual score is that ingredient's accuracy through its own processor
        assert soup.scores[ref] == pytest.approx(_accuracy(ref, *fashion["val"]), abs=1e-12)
    lead = max(range(len(refs)), key=lambda i: (soup.weights[i], soup.scores[refs[i]]))
    assert lead != 0
    with open(tmp_path / "soup" / "preprocessor_config.json") as f:
        shipped = json.load(f)
    with open(os.path.join(refs[lead], "preprocessor_config.json")) as f:
        assert shipped == json.load(f)
    assert shipped["resample"] == 2  # not the weight-0 first ingredient's bicubic


# ---------------------------------------------------------------------------------------------------------------
# 3. BatchNorm recalibration: recorded, replayed bit for bit, compared like for like


def _tensors_equal(a, b):
    sa, sb = state_dict_of(a), state_dict_of(b)
    assert sa.keys() == sb.keys()
    return [k for k in sa if not torch.equal(sa[k], sb[k])]


def _independent_recalibrated_accuracy(directory, calib_x, sample, test_x, test_y, batch_size):
    """torch's own recipe (update_bn: reset, momentum=None, train-mode forward) on transformers' model."""
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    processor = AutoImageProcessor.from_pretrained(directory)
    model = AutoModelForImageClassification.from_pretrained(directory).eval()
    layers = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    chosen = [calib_x[i] for i in sample]
    with torch.no_grad():
        for start in range(0, len(chosen), batch_size):
            images = [Image.fromarray(a).convert("RGB") for a in chosen[start : start + batch_size]]
            model(pixel_values=processor(images, return_tensors="pt")["pixel_values"])
    model.eval()
    pixels = processor([Image.fromarray(a).convert("RGB") for a in test_x], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        return float((model(pixel_values=pixels).logits.argmax(-1).numpy() == test_y).mean())


def test_recalibration_is_recorded_replayed_bit_for_bit_and_compared_like_for_like(resnets, fashion, tmp_path):
    from hf_soups.api import replay_recipe
    from hf_soups.errors import SoupError

    train_x, train_y = fashion["train"]
    calib = to_dataset(train_x[-200:], train_y[-200:])  # calibration images: neither validation nor test
    val, test = to_dataset(*fashion["val"]), to_dataset(*fashion["test"])
    soup = soup_from_hub(resnets, "greedy", eval_dataset=val, output_dir=tmp_path / "soup")
    averaged = state_dict_of(soup.output_dir)
    assert "bit for bit:" in str(soup.card)
    averaged_soup = soup
    soup = soup.recompute_batchnorm(calib, num_batches=3, batch_size=32, seed=5)
    assert soup.batchnorm_layers > 0 and averaged_soup.recipe.batchnorm is None  # a new soup: the old one unchanged
    bn = soup.recipe.batchnorm
    assert (bn.dataset, bn.num_batches, bn.batch_size, bn.seed, bn.examples) == ("<in-memory dataset>", 3, 32, 5, 96)
    recalibrated = state_dict_of(soup.output_dir)
    changed = {k for k in averaged if not torch.equal(averaged[k], recalibrated[k])}
    assert changed and all(k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in changed)
    card = str(soup.card)
    assert "re-creates the averaged weights bit for bit" in card and "in-memory calibration set" in card
    assert "This recipe re-creates the soup bit for bit" not in card

    recipe = soup.recipe
    with pytest.raises(SoupError, match="calibration_dataset"):
        replay_recipe(recipe, tmp_path / "replay-nodata", progress=False, allow_local=True)
    assert not (tmp_path / "replay-nodata").exists()
    other = to_dataset(train_x[:200], train_y[:200])
    with pytest.raises(SoupError, match="differs from the recipe"):
        replay_recipe(recipe, tmp_path / "replay-other", progress=False, calibration_dataset=other,
                      allow_local=True)
    assert not (tmp_path / "replay-other").exists()
    replayed = replay_recipe(recipe, tmp_path / "replay", progress=False, calibration_dataset=calib,
                             allow_local=True)
    assert _tensors_equal(soup.output_dir, replayed.output_dir) == []  # bit for bit, safetensors' own loader
    assert replayed.recipe.batchnorm == bn

    # like for like: every baseline recalibrated on the same 96 calibration images
    report = soup.evaluate({"val": val, "test": test}, held_out="val")
    soup = soup.with_evaluation(report)
    test_scores = report.results["test"]
    best = max(range(3), key=lambda i: report.ingredient_scores["val"][resnets[i]])
    sample = sorted(torch.randperm(200, generator=torch.Generator().manual_seed(5))[:96].tolist())
    expected = _independent_recalibrated_accuracy(resnets[best], train_x[-200:], sample, *fashion["test"], 32)
    assert test_scores["best_individual"] == pytest.approx(expected, abs=1e-12)
    assert test_scores["best_individual (no BN recalibration)"] == pytest.approx(_accuracy(resnets[best],
                                                                                          *fashion["test"]))
    assert test_scores["greedy_soup"] == pytest.approx(_accuracy(soup.output_dir, *fashion["test"]))
    assert {"uniform_soup", "uniform_soup (no BN recalibration)", "greedy_soup (no BN recalibration)"} <= \
        set(test_scores)
    card = str(soup.card)
    assert "were recalibrated the same way" in card and "is the BatchNorm calibration set" not in card


def test_recalibration_keeps_the_soup_dtype_and_its_other_files(resnets, fashion, tmp_path):
    from hf_soups import MergeOptions

    soup = soup_from_hub(resnets, output_dir=tmp_path / "soup", merge_options=MergeOptions(dtype="bfloat16"))
    before = state_dict_of(soup.output_dir)
    soup = soup.recompute_batchnorm(to_dataset(*fashion["test"]), batch_size=32)
    after = state_dict_of(soup.output_dir)
    assert {t.dtype for t in after.values() if t.is_floating_point()} == {torch.bfloat16}
    assert [k for k in before if not torch.equal(before[k], after[k])] and all(
        torch.equal(before[k], after[k]) for k in before if not k.endswith(("running_mean", "running_var",
                                                                             "num_batches_tracked")))
    assert (tmp_path / "soup" / "preprocessor_config.json").is_file()
    assert "batchnorm:" in (tmp_path / "soup" / "recipe.yaml").read_text()


def test_calibrating_on_a_reported_set_is_flagged_and_recorded_paths_replay(resnets, fashion, tmp_path):
    from huggingface_hub import ModelCard

    from hf_soups.card import recipe_from_card

    val = to_dataset(*fashion["val"])
    val.save_to_disk(str(tmp_path / "val"))
    proc = subprocess.run([sys.executable, "-m", "hf_soups", "soup", *resnets, "--method", "greedy",
                           "--eval-dataset", str(tmp_path / "val"), "--recompute-batchnorm",
                           "--calibration-batches", "2", "--calibration-batch-size", "40",
                           "--output", str(tmp_path / "soup")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "reuses --eval-dataset" in proc.stderr and "Recomputed the statistics" in proc.stdout
    card = ModelCard.load(tmp_path / "soup" / "README.md")
    assert "The calibration data is the held-out data that chose the weights" in card.text
    recipe = recipe_from_card(card)
    assert recipe.batchnorm.dataset == str(tmp_path / "val") and recipe.batchnorm.num_batches == 2
    (tmp_path / "recipe.yaml").write_text(recipe.to_yaml())
    proc = subprocess.run([sys.executable, "-m", "hf_soups", "recipe", str(tmp_path / "recipe.yaml"),
                           "--allow-local-ingredients", "--output", str(tmp_path / "replay")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert _tensors_equal(tmp_path / "soup", tmp_path / "replay") == []

    soup = soup_from_hub(resnets, "greedy", eval_dataset=val, output_dir=tmp_path / "soup2")
    soup = soup.recompute_batchnorm(val, batch_size=40)
    report = soup.evaluate({"val": val})
    assert any("'val' is the BatchNorm calibration set" in w for w in report.warnings)
    assert "'val' is the BatchNorm calibration set" in str(soup.with_evaluation(report).card)


# ---------------------------------------------------------------------------------------------------------------
# 4. Image data as vision users hold it


def _score(directory, dataset, **kwargs):
    from transformers import AutoModelForImageClassification

    from hf_soups.checkpoint.meta import read_config
    from hf_soups.evaluation import Evaluator

    config = read_config(os.path.join(directory, "config.json"), directory)
    model = AutoModelForImageClassification.from_pretrained(directory)
    return Evaluator(dataset, directory, config, batch_size=32, **kwargs).score(model)[0]


def test_imagefolder_with_class_names_in_another_order_scores_as_the_ordered_set(vits, fashion, tmp_path, caplog):
    from PIL import Image

    from hf_soups.evaluation.data import load_eval_dataset

    x, y = fashion["test"]
    for k, (a, label) in enumerate(zip(x, y)):
        folder = tmp_path / "images" / LABELS[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).save(folder / f"{k:04d}.png")
    folder_ds = load_eval_dataset(str(tmp_path / "images"))
    names = folder_ds.features["label"].names
    assert names == sorted(LABELS) and names != LABELS  # ids alphabetical: they differ from the model's id2label
    with caplog.at_level("WARNING"):
        score = _score(vits[0], folder_ds)
    assert "mapped by name" in caplog.text
    assert score == _score(vits[0], to_dataset(x, y)) == pytest.approx(_accuracy(vits[0], x, y), abs=1e-12)
    # a csv listing the image files (paths relative to the csv) with string labels scores the same
    rows = [f"images/{LABELS[label]}/{k:04d}.png,{LABELS[label]}" for k, label in enumerate(y)]
    (tmp_path / "images.csv").write_text("image,label\n" + "\n".join(rows) + "\n")
    assert _score(vits[0], load_eval_dataset(str(tmp_path / "images.csv"))) == score
    # the same via soup_from_hub with the folder path (greedy scores every ingredient on it)
    soup = soup_from_hub(vits[:2], "greedy", eval_dataset=str(tmp_path / "images"), output_dir=tmp_path / "soup")
    assert soup.scores[vits[0]] == score


def test_common_image_dataset_shapes_are_supported(vits, fashion):
    import datasets
    from transformers import AutoImageProcessor

    from hf_soups.evaluation.data import as_eval_dataset

    x, y = fashion["val"]
    plain = to_dataset(x, y)
    expected = _score(vits[0], plain)
    processor = AutoImageProcessor.from_pretrained(vits[0])

    def transform(batch):  # the transformers image-classification tutorial's way
        return {"pixel_values": processor([im.convert("RGB") for im in batch["image"]],
                                          return_tensors="pt")["pixel_values"], "labels": batch["label"]}

    assert _score(vits[0], plain.with_transform(transform)) == expected
    mapped = plain.map(lambda b: {"pixel_values": processor([im.convert("RGB") for im in b["image"]])["pixel_values"]},
                       batched=True, remove_columns=["image"])
    assert _score(vits[0], mapped) == expected
    arrays_ds = datasets.Dataset.from_dict({"image": x, "label": y.astype("int64")})  # uint8 arrays, int labels
    assert _score(vits[0], arrays_ds) == expected
    two_splits = datasets.DatasetDict({"train": to_dataset(*fashion["train"]), "validation": plain})
    assert _score(vits[0], as_eval_dataset(two_splits, "validation")) == expected
    head = _score(vits[0], plain.select(range(64)))
    assert _score(vits[0], plain.to_iterable_dataset(), max_samples=64) == head
    assert _score(vits[0], plain, max_samples=64) == head
    # the same through soup_from_hub: the streamed set's first 64 examples score every ingredient
    soup = soup_from_hub(vits[:2], "greedy", eval_dataset=plain.to_iterable_dataset(),
                         eval_spec=EvalSpec(max_samples=64))
    assert soup.scores[vits[0]] == head and soup.recipe.evaluation.max_samples == 64


def test_unsupported_image_dataset_shapes_end_in_a_soup_error(vits, fashion):
    import datasets

    from hf_soups.errors import EvaluationError, SoupError

    x, y = fashion["val"]
    plain = to_dataset(x, y)
    cases = {
        "bare array": (x, "no labels"),
        "iterable without a limit": (plain.to_iterable_dataset(), "max_samples"),
        "DatasetDict without a split": (datasets.DatasetDict({"train": plain, "extra": plain}), "split"),
        "transform without pixel_values": (plain.with_transform(lambda b: {"image": b["image"]}), "pixel_values"),
        "float arrays": (datasets.Dataset.from_dict({"image": x.astype("float32") / 255, "label": y}), "not images"),
        "wrong channel count": (datasets.Dataset.from_dict({"pixel_values": np.zeros((4, 1, 28, 28), "float32"),
                                                             "label": [0, 1, 2, 3]}), "channels"),
    }
    for name, (data, match) in cases.items():
        with pytest.raises(SoupError, match=match) as err:
            _score(vits[0], data)
        assert isinstance(err.value, EvaluationError) and "Fix:" in str(err.value), name


def test_one_channel_models_get_one_channel_images(fashion, tmp_path):
    refs = _family(str(tmp_path), fashion, "resnet", channels=1, n=2)
    val = to_dataset(*fashion["val"])
    soup = soup_from_hub(refs, "greedy", eval_dataset=val, output_dir=tmp_path / "soup")
    for ref in refs:
        assert soup.scores[ref] == pytest.approx(_accuracy(ref, *fashion["val"], mode="L"), abs=1e-12)


def test_calibration_flags_without_their_partner_are_usage_errors(tmp_path, capsys):
    from hf_soups.cli.main import main

    refs = [str(tmp_path / "never-read-1"), str(tmp_path / "never-read-2")]  # refused before anything is read
    assert main(["soup", *refs, "--calibration-dataset", "calib/", "--output", str(tmp_path / "o")]) == 2
    assert "--recompute-batchnorm" in capsys.readouterr().err
    assert main(["soup", *refs, "--recompute-batchnorm", "--output", str(tmp_path / "o")]) == 2
    assert "--calibration-dataset" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_eval_dataset_help_documents_image_forms():
    from hf_soups.cli.main import build_parser

    soup = next(a for a in build_parser()._subparsers._group_actions[0].choices["soup"]._actions
                if "--eval-dataset" in a.option_strings)
    for form in ("save_to_disk", "parquet", "imagefolder", "csv", "Hub dataset id"):
        assert form in soup.help


# ---------------------------------------------------------------------------------------------------------------
# 5. Evaluation memory


def test_image_batches_are_preprocessed_per_batch_within_the_cache_budget(vits, fashion, monkeypatch):
    from transformers import AutoModelForImageClassification

    from hf_soups.checkpoint.meta import read_config
    from hf_soups.evaluation import Evaluator

    config = read_config(os.path.join(vits[0], "config.json"), vits[0])
    model = AutoModelForImageClassification.from_pretrained(vits[0])
    val = to_dataset(*fashion["val"])
    monkeypatch.setenv("HF_SOUPS_EVAL_CACHE_MB", "0")
    uncached = Evaluator(val, vits[0], config, batch_size=32)
    first = uncached.score(model)
    assert uncached.batches._cache == {}  # nothing kept: every pass preprocesses batch by batch
    monkeypatch.setenv("HF_SOUPS_EVAL_CACHE_MB", "64")
    cached = Evaluator(val, vits[0], config, batch_size=32)
    assert cached.score(model)[0] == first[0] and len(cached.batches._cache) == len(cached.batches)
    torch.testing.assert_close(cached.score(model)[1], first[1])
