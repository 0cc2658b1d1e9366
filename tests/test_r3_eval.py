"""Issue 24, items 7, 8 and 10: label values, image files and degenerate logits in evaluation.

- Item 7: a label is an integer id in range or a label name; anything else (None, NaN, 2.9, -0.4, lists, bools) is
  an `EvaluationError` naming the row, column and value, never truncated; regression and multi-label models are
  refused as not supported yet.
- Item 8: image paths are read as regular files only (FIFOs, sockets, devices, directories refused without opening
  them), within a size cap; PIL failures (not an image, truncated, a decompression bomb) become `EvaluationError`s
  naming the row and the file.
- Item 10: a greedy candidate whose logits are non-finite, beyond `HF_SOUPS_MAX_ABS_LOGIT` or the same for every
  example is rejected with its reason in the trace and the card; evaluation rows with such logits are flagged.
"""

from __future__ import annotations

import io
import os
import socket
import threading

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, Value
from datasets import Image as ImageFeature
from PIL import Image

from hf_soups import EvaluationError, LabelMismatchError, SoupError
from hf_soups.evaluation.data import as_eval_dataset, check_labels
from hf_soups.evaluation.evaluator import Evaluator, task_of

ID2LABEL = {0: "neg", 1: "pos", 2: "neu"}


# ---------------------------------------------------------------------------------------------------- item 7: labels


@pytest.mark.parametrize("value", [None, float("nan"), float("inf"), 2.9, 0.5, -0.4, [1], {"a": 1}, True, b"1", 1.5e-9])
def test_label_values_that_are_not_labels_name_row_column_and_value(value):
    ds = {"label": [0, 1, value, 2]}  # a plain mapping keeps every Python value as it is
    holder = type("Rows", (dict,), {"features": {}})(ds)
    with pytest.raises(EvaluationError) as info:
        check_labels(holder, "label", ID2LABEL, "m")
    text = str(info.value)
    assert "row 2" in text and "'label'" in text and repr(value)[:20] in text and "integer ids in [0, 3)" in text


@pytest.mark.parametrize("values", [[0.5, 1.0], [2.9, 0], [-0.4, 1], [None, 1], [float("nan"), 1.0]])
def test_fractional_or_missing_labels_in_a_real_dataset_are_refused_not_truncated(values):
    with pytest.raises(EvaluationError, match="row 0 of label column 'label'"):
        check_labels(Dataset.from_dict({"label": values}), "label", ID2LABEL, "m")


def test_exactly_integral_floats_numpy_ints_and_names_map_to_one_id_each():
    rows = type("Rows", (dict,), {"features": {}})(
        {"label": [2.0, np.int64(1), np.float32(0.0), "POS", "neu", 0, np.uint8(2)]})
    assert check_labels(rows, "label", ID2LABEL, "m") == [2, 1, 0, 1, 2, 0, 2]


@pytest.mark.parametrize("values, match", [([3, 0], r"ids 3 .*row 0"), ([0, -1], r"ids -1 .*row 1.*unlabeled"),
                                           ([0, 1e300], r"row 1"), (["neg", "happy"], r"'happy'.*row 1")])
def test_out_of_range_ids_and_unknown_names_are_a_label_mismatch_naming_the_row(values, match):
    with pytest.raises(LabelMismatchError, match=match):
        check_labels(Dataset.from_dict({"label": values}), "label", ID2LABEL, "m")


def test_classlabel_minus_one_is_not_mapped_to_the_last_class():
    """A test split marks unlabeled rows with -1; remapped by name it must not wrap to the last class."""
    features = Features({"label": ClassLabel(names=["pos", "neg", "neu"])})
    ds = Dataset.from_dict({"label": [0, -1]}, features=features)
    with pytest.raises(LabelMismatchError, match="-1"):
        check_labels(ds, "label", ID2LABEL, "m")
    assert check_labels(Dataset.from_dict({"label": [0, 1]}, features=features), "label", ID2LABEL, "m") == [1, 0]


def test_a_mixed_type_label_column_is_an_evaluation_error_not_an_arrow_crash():
    with pytest.raises(EvaluationError, match="mixes values of different types"):
        as_eval_dataset({"text": ["a", "b"], "label": [1, "x"]})
    with pytest.raises(EvaluationError):
        as_eval_dataset([{"text": "a", "label": [1]}, {"text": "b", "label": 2}])


@pytest.mark.parametrize("config, task", [
    ({"problem_type": "multi_label_classification", "num_labels": 3}, "multi_label"),
    ({"num_labels": 1}, "regression"),
    ({"id2label": {"0": "score"}}, "regression"),
    ({"problem_type": "regression", "num_labels": 1}, "regression"),
    ({"num_labels": 2}, "text"),
])
def test_regression_and_multi_label_models_get_their_task(config, task):
    """#30: regression (num_labels == 1, as transformers decides) and multi-label models are evaluated by their own
    task instead of being refused."""
    assert task_of({"architectures": ["BertForSequenceClassification"], **config}) == task


@pytest.mark.parametrize("config", [
    {"architectures": ["BertForSequenceClassification"], "problem_type": "regression", "num_labels": 3},
    {"architectures": ["GPT2LMHeadModel"]},
])
def test_an_unsupported_head_names_what_is_supported(config):
    with pytest.raises(EvaluationError, match="supports image classification.*regression"):
        task_of(config)


def test_cli_with_a_nan_label_exits_with_one_line_not_a_traceback(family, tmp_path):
    import subprocess
    import sys

    data = tmp_path / "eval.csv"
    data.write_text("text,label\ngood movie,1\nbad movie,\nfine,0.5\n")
    run = subprocess.run([sys.executable, "-m", "hf_soups", "soup", family["a"], family["c"], "--method", "greedy",
                          "--eval-dataset", str(data), "--output", str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode not in (0, 1), run.stderr
    assert "Traceback" not in run.stderr and "row 1 of label column 'label'" in run.stderr
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------------- item 8: images


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    from hf_soups.testing import make_tiny_vit

    return make_tiny_vit(tmp_path_factory.mktemp("vit") / "vit", seed=0)


def _png(path, size=(16, 16)):
    Image.fromarray(np.full((*size, 3), 100, dtype=np.uint8)).save(path)
    return str(path)


def _score_paths(vit, paths):
    """Evaluate the tiny ViT on image `paths` given as a csv of file paths (cast to an `Image` column)."""
    from transformers import ViTForImageClassification

    from hf_soups.checkpoint.meta import read_config

    ds = Dataset.from_dict({"image": [str(p) for p in paths], "label": [0] * len(paths)})
    ds = ds.cast_column("image", ImageFeature())
    config = read_config(os.path.join(vit, "config.json"), vit)
    ev = Evaluator(ds, vit, config, batch_size=2)
    return ev.score(ViTForImageClassification.from_pretrained(vit))


def _bad_image(tmp_path, kind):
    path = tmp_path / f"bad-{kind}"
    if kind == "missing":
        pass
    elif kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev_zero_link":
        os.symlink("/dev/zero", path)
    elif kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
        sock.close()
    elif kind == "not_an_image":
        path.write_bytes(b"GIF89a but not really" * 10)
    elif kind == "truncated_png":
        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
        path.write_bytes(buf.getvalue()[:300])
    elif kind == "empty":
        path.write_bytes(b"")
    return path


@pytest.mark.parametrize("kind, why", [
    ("missing", "does not exist"), ("directory", "a directory"), ("fifo", "FIFO"), ("dev_zero_link", "character device"),
    ("socket", "socket"), ("not_an_image", "cannot be decoded"), ("truncated_png", "cannot be decoded"),
    ("empty", "cannot be decoded"),
])
def test_bad_image_files_are_refused_naming_row_and_path_without_hanging(vit, tmp_path, kind, why):
    good = _png(tmp_path / "good.png")
    bad = _bad_image(tmp_path, kind)
    done: list[BaseException] = []

    def run():
        try:
            _score_paths(vit, [good, good, bad])
        except BaseException as e:  # noqa: BLE001 - reported to the test thread
            done.append(e)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(30)
    if worker.is_alive() and kind == "fifo":
        with open(bad, "wb"):  # release the blocked reader so the thread ends
            pass
    assert not worker.is_alive(), f"{kind}: evaluation hung"
    assert done and isinstance(done[0], EvaluationError), done
    text = str(done[0])
    assert "row 2 of image column 'image'" in text and str(bad) in text and why in text


def test_decompression_bombs_and_their_warning_are_refused(vit, tmp_path, monkeypatch):
    good = _png(tmp_path / "good.png")
    big = _png(tmp_path / "big.png", size=(64, 64))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64 * 64 - 1)  # just over: PIL only warns
    with pytest.raises(EvaluationError, match=r"row 1 .*DecompressionBomb"):
        _score_paths(vit, [good, big])
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64 * 64 // 3)  # over twice: PIL raises
    with pytest.raises(EvaluationError, match=r"row 1 .*DecompressionBombError"):
        _score_paths(vit, [good, big])


def test_image_files_over_the_size_cap_are_refused_before_decoding(vit, tmp_path, monkeypatch):
    good = _png(tmp_path / "good.png")
    monkeypatch.setenv("HF_SOUPS_MAX_IMAGE_MB", str(os.path.getsize(good) / 2 / 1024 / 1024))
    with pytest.raises(EvaluationError, match=r"row 0 .*larger than .*HF_SOUPS_MAX_IMAGE_MB"):
        _score_paths(vit, [good])


def test_image_bytes_that_are_not_an_image_name_the_row(vit):
    from transformers import ViTForImageClassification

    from hf_soups.checkpoint.meta import read_config

    buf = io.BytesIO()
    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(buf, "PNG")
    ds = Dataset.from_dict({"img": [{"bytes": buf.getvalue(), "path": None}, {"bytes": b"\x89PNG\r\n", "path": None}],
                            "label": [0, 1]}).cast_column("img", ImageFeature())
    config = read_config(os.path.join(vit, "config.json"), vit)
    with pytest.raises(EvaluationError, match="row 1 of image column 'img'"):
        Evaluator(ds, vit, config, batch_size=4).score(ViTForImageClassification.from_pretrained(vit))


def test_good_image_files_score_as_before(vit, tmp_path):
    """Independent truth: the same pixels through the processor and the model by hand."""
    from transformers import AutoImageProcessor, ViTForImageClassification

    paths = [_png(tmp_path / f"{i}.png") for i in range(3)]
    os.symlink(paths[0], tmp_path / "link.png")  # a user's own symlink to a regular file is fine
    paths.append(str(tmp_path / "link.png"))
    _, logits = _score_paths(vit, paths)
    processor = AutoImageProcessor.from_pretrained(vit)
    pixels = processor([Image.open(p).convert("RGB") for p in paths], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = ViTForImageClassification.from_pretrained(vit).eval()(pixel_values=pixels).logits
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5)



@pytest.mark.parametrize("kind", ["fifo"])  # the other kinds are covered through the API above
def test_cli_with_a_bad_image_path_in_a_csv_exits_with_one_line_and_never_hangs(vit, tmp_path, kind):
    import subprocess
    import sys

    from hf_soups.testing import perturb_checkpoint

    other = perturb_checkpoint(vit, tmp_path / "vit2", seed=1, scale=0.05)
    _png(tmp_path / "good.png")
    bad = _bad_image(tmp_path, kind)
    data = tmp_path / "eval.csv"
    data.write_text(f"image,label\ngood.png,0\n{bad.name},1\n")  # paths relative to the csv
    run = subprocess.run([sys.executable, "-m", "hf_soups", "soup", vit, other, "--method", "greedy",
                          "--eval-dataset", str(data), "--output", str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 8, run.stderr  # EvaluationError's code, never 1 ("incompatible")
    assert "Traceback" not in run.stderr and "row 1 of image column 'image'" in run.stderr and bad.name in run.stderr
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------- item 10: degenerate logits


def _with_head(src, dst, weight, bias):
    """A copy of checkpoint `src` whose classifier weight and bias are filled with `weight` and `bias`."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    tensors = load_file(os.path.join(dst, "model.safetensors"))
    tensors["classifier.weight"] = torch.full_like(tensors["classifier.weight"], weight)
    tensors["classifier.bias"] = torch.tensor(bias, dtype=torch.float32)
    save_file(tensors, os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})
    return str(dst)


@pytest.fixture(scope="module")
def degenerate_family(tmp_path_factory):
    """Two tiny 2-label BERTs and degenerate variants of the first: classifier weights ~1e38 (inf or huge logits),
    and a zero classifier with a bias for class 0 (the same logits for every example)."""
    from hf_soups.testing import make_tiny_bert, perturb_checkpoint, sentiment_examples

    root = tmp_path_factory.mktemp("degenerate")
    base = make_tiny_bert(root / "base", seed=0, num_labels=2)
    good = [perturb_checkpoint(base, root / f"g{i}", seed=i, scale=0.05) for i in (1, 2)]
    huge = _with_head(good[0], root / "huge", 1e38, [0.0, 0.0])
    constant = _with_head(good[0], root / "constant", 0.0, [3.0, 0.0])
    data = sentiment_examples(40, seed=5)
    data["label"] = [0] * 36 + [1] * 4  # predicting class 0 everywhere scores 0.9: a constant model would win
    return {"good": good, "huge": huge, "constant": constant, "val": Dataset.from_dict(data)}


def test_logit_problem_flags_nan_inf_huge_and_collapsed_logits(monkeypatch):
    from hf_soups.evaluation.evaluator import logit_problem

    fine = torch.tensor([[0.1, 2.0], [1.5, -0.3]])
    assert logit_problem(fine) is None
    assert "non-finite" in logit_problem(torch.tensor([[float("nan"), 0.0], [1.0, 2.0]]))
    assert "non-finite" in logit_problem(torch.tensor([[float("-inf"), 0.0], [1.0, 2.0]]))
    assert "beyond the bound" in logit_problem(torch.tensor([[3e4, 0.0], [1.0, 2.0]]))
    assert "same logits for all 3" in logit_problem(torch.tensor([[1.0, 2.0]] * 3))
    assert logit_problem(torch.tensor([[1.0, 2.0]] * 3), inputs_vary=False) is None  # identical inputs are fine
    monkeypatch.setenv("HF_SOUPS_MAX_ABS_LOGIT", "1e5")
    assert logit_problem(torch.tensor([[3e4, 0.0], [1.0, 2.0]])) is None


def test_greedy_rejects_a_degenerate_trial_even_on_a_tie():
    from hf_soups.recipes.greedy import Trial, greedy_select

    def score_with(members, candidate):  # every trial ties; the one with 'c' collapses
        return Trial(0.9, "collapsed logits" if candidate == 2 else None)

    accepted, trace = greedy_select(["a", "b", "c"], [0.9, 0.8, 0.7], score_with)
    assert accepted == [0, 1]
    assert trace[2] == {"ingredient": "c", "score": 0.9, "accepted": False, "soup_size": 2,
                        "reason": "the soup with it gives collapsed logits"}


def test_greedy_never_seeds_with_a_degenerate_ingredient_and_refuses_when_all_are():
    from hf_soups.recipes.greedy import greedy_select

    accepted, trace = greedy_select(["a", "b"], [0.95, 0.5], lambda m, c: 0.5, problems=["non-finite logits", None])
    assert accepted == [1] and trace[0]["ingredient"] == "b"
    assert trace[1]["reason"] == "the ingredient alone gives non-finite logits" and not trace[1]["accepted"]
    with pytest.raises(EvaluationError, match="every ingredient"):
        greedy_select(["a"], [0.9], lambda m, c: 0.9, problems=["collapsed"])


@pytest.mark.parametrize("bad, why", [("huge", r"non-finite logits|beyond the bound"), ("constant", "same logits")])
def test_greedy_soup_rejects_an_ingredient_with_degenerate_logits_with_the_reason_in_trace_and_card(
        degenerate_family, tmp_path, bad, why):
    from hf_soups import soup_from_hub

    fam = degenerate_family
    refs = [*fam["good"], fam[bad]]
    soup = soup_from_hub(refs, method="greedy", eval_dataset=fam["val"], output_dir=tmp_path / "soup")
    weights = {i.name: i.weight for i in soup.ingredients}
    assert weights[str(fam[bad])] == 0.0 and weights[str(fam["good"][0])] > 0
    step = next(s for s in soup.trace if s["ingredient"] == str(fam[bad]))
    assert not step["accepted"] and __import__("re").search(why, step["reason"])
    card = str(soup.card)
    assert "rejected: the ingredient alone gives" in card and "## Warnings" in card
    assert f"candidate '{fam[bad]}' was rejected whatever its score" in card


def test_evaluation_flags_rows_with_degenerate_logits(degenerate_family, tmp_path):
    from hf_soups import soup_from_hub

    fam = degenerate_family
    soup = soup_from_hub([*fam["good"], fam["constant"]], method="uniform", output_dir=tmp_path / "soup")
    report = soup.evaluate({"val": fam["val"]}, bootstrap=100, progress=False)
    flagged = [w for w in report.warnings if f"'ingredient:{fam['constant']}' on 'val'" in w]
    assert flagged and "same logits for all 40 examples" in flagged[0]
    assert not any(f"'ingredient:{fam['good'][0]}'" in w for w in report.warnings)


def test_greedy_ensemble_baseline_skips_a_member_with_degenerate_logits():
    from hf_soups.evaluation.evaluator import logit_problem
    from hf_soups.recipes.greedy import greedy_ensemble

    labels = torch.tensor([0, 0, 0, 1])
    good = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.5], [0.0, 3.0]])  # 3 of 4 right
    constant = torch.tensor([[9.0, 0.0]] * 4)  # also 3 of 4 right, whatever the input

    def accuracy(lg):
        return float((lg.argmax(-1) == labels).float().mean())

    assert greedy_ensemble([good, constant], [0.75, 0.75], accuracy) == [0, 1]  # without the check: kept on a tie
    assert greedy_ensemble([good, constant], [0.75, 0.75], accuracy, problem=logit_problem) == [0]
    assert greedy_ensemble([constant, good], [0.75, 0.75], accuracy, problem=logit_problem) == [1]
