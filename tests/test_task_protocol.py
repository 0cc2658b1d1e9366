"""#23 item 2: a task is one file. A toy task defined here, and nowhere else, soups, evaluates with bootstrap
intervals, trains a learned soup with its own loss and appears in the card (pipeline tag and "How to use").

The toy: binary classification of a `problem_type` the house does not know ("balanced_binary"), read from the
columns `utterance`/`gold`, scored by balanced accuracy (the mean of the per-class recalls), resampled per utterance,
trained with class-balanced cross-entropy. Every number is checked against a computation made here with plain
transformers and numpy.
"""

from __future__ import annotations

import logging
import os
import random
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest
import torch
import transformers
from datasets import Dataset

from hf_soups import EvalSpec, soup_from_hub
from hf_soups.evaluation.metrics import Metric
from hf_soups.evaluation.tasks import TASKS, Columns, Prepared, register_task, task_for
from hf_soups.evaluation.tasks.text import SequenceTask
from hf_soups.testing import perturb_checkpoint, write_tiny_tokenizer
from hf_soups.testing.factories import _WORDS

_TAG = "toy-balanced-classification"


def _balanced_accuracy(predictions: Sequence[int], references: Sequence[int]) -> float:
    p, r = np.asarray(predictions), np.asarray(references)
    recalls = [float((p[r == c] == c).mean()) for c in np.unique(r)]
    return float(np.mean(recalls)) if recalls else 0.0


class BalancedBinary(SequenceTask):
    """The toy task: everything the protocol asks of a task, in one class."""

    name = "balanced_binary"
    title = "balanced binary classification"
    unit = "utterance"
    loss_name = "class-balanced cross-entropy"
    pipeline_tag = _TAG
    columns_help = "--text-column, --label-column (defaults: utterance, gold)"
    loss_calls = 0

    @classmethod
    def serves(cls, config: Mapping[str, Any]) -> bool:
        return super().serves(config) and config.get("problem_type") == "balanced_binary"

    def find_columns(self, columns: Sequence[str], asked: Columns) -> dict[str, Any]:
        return {"label": asked.label or "gold", "text": (asked.text or "utterance",)}

    def references(self, raw: Any, found: Mapping[str, Any], name: str) -> torch.Tensor:
        return torch.tensor([int(v) for v in raw[found["label"]]])

    def prepare(self, dataset: Any, raw: Any, reference_dir: str, found: Mapping[str, Any], references: Any, *,
                batch_size: int, max_length: int) -> Prepared:
        return super().prepare(dataset, raw, reference_dir, found, references, batch_size=batch_size,
                               max_length=max_length)

    def loss(self, output: torch.Tensor, idx: torch.Tensor, prepared: Prepared) -> torch.Tensor:
        type(self).loss_calls += 1
        targets = prepared.targets.to(output.device)
        counts = torch.bincount(targets, minlength=2).clamp(min=1).float()
        return torch.nn.functional.cross_entropy(output, targets[idx], weight=counts.sum() / counts)

    def metrics(self) -> dict[str, Metric]:
        return {"balanced_accuracy": Metric("balanced_accuracy", _balanced_accuracy, "balanced_accuracy")}

    @classmethod
    def usage(cls, config: Mapping[str, Any], model_path: str) -> list[str]:
        return ["from transformers import pipeline", "",
                f'pipe = pipeline("text-classification", model="{model_path}")  # toy: balanced binary']


@pytest.fixture
def toy_task():
    """The toy registered for one test (the registry is restored after it)."""
    before = list(TASKS)
    register_task(BalancedBinary)
    BalancedBinary.loss_calls = 0
    yield BalancedBinary
    TASKS[:] = before


@pytest.fixture(scope="module")
def toy_family(tmp_path_factory):
    """Two tiny `BertForSequenceClassification` of problem_type "balanced_binary", and 48 utterances labelled 3:1
    (balanced accuracy differs from accuracy)."""
    root = tmp_path_factory.mktemp("toy")
    cfg = transformers.BertConfig(vocab_size=len(_WORDS) + 8, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=64, max_position_embeddings=64,
                                  initializer_range=0.4, num_labels=2, problem_type="balanced_binary")
    torch.manual_seed(0)
    a = os.fspath(root / "a")
    transformers.BertForSequenceClassification(cfg).save_pretrained(a)
    write_tiny_tokenizer(a)
    b = os.fspath(perturb_checkpoint(a, root / "b", seed=1, scale=0.02))
    rng = random.Random(0)
    texts = [" ".join(rng.choice(_WORDS) for _ in range(5)) for _ in range(48)]
    gold = [1 if k % 4 == 0 else 0 for k in range(48)]
    return [a, b], Dataset.from_dict({"utterance": texts, "gold": gold})


def _predictions(directory: str, texts: list[str]) -> np.ndarray:
    """Argmax predictions of a checkpoint, with plain transformers (one padded batch)."""
    model = transformers.AutoModelForSequenceClassification.from_pretrained(directory).eval()
    tok = transformers.AutoTokenizer.from_pretrained(directory)
    with torch.no_grad():
        return model(**tok(texts, return_tensors="pt", padding=True, truncation=True)).logits.argmax(-1).numpy()


def test_toy_task_evaluates_a_soup_with_intervals_and_appears_in_the_card(toy_task, toy_family, tmp_path):
    family, data = toy_family
    config = transformers.AutoConfig.from_pretrained(family[0]).to_dict()
    assert isinstance(task_for(config), toy_task)  # dispatched by its problem_type
    assert task_for({**config, "problem_type": None}).name == "text"  # the house's task still serves the rest
    soup = soup_from_hub(family, output_dir=tmp_path / "soup")
    report = soup.evaluate({"val": data}, methods=["soup", "best_individual"], progress=False)

    gold = np.asarray(data["gold"])
    preds = _predictions(soup.output_dir, list(data["utterance"]))
    expected = _balanced_accuracy(preds, gold)
    assert expected != pytest.approx(float((preds == gold).mean()))  # the toy metric is not accuracy
    assert report.metric == "balanced_accuracy"
    assert report.results["val"]["uniform_soup"] == pytest.approx(expected)
    # the paired bootstrap resamples utterances: 1000 draws of 48 indices from default_rng(0), 95% percentiles
    rng = np.random.default_rng(0)
    draws = []
    for start in range(0, 1000, 64):
        for row in rng.integers(0, len(gold), size=(min(64, 1000 - start), len(gold))):
            draws.append(_balanced_accuracy(preds[row], gold[row]))
    low, high = np.percentile(draws, [2.5, 97.5])
    interval = report.intervals["val"]["uniform_soup"]
    assert (interval.value, interval.low, interval.high) == pytest.approx((expected, low, high))
    assert low < expected < high

    card = open(os.path.join(soup.output_dir, "README.md"), encoding="utf-8").read()
    assert f"pipeline_tag: {_TAG}" in card and f"type: {_TAG}" in card  # front matter and model-index task
    assert "type: balanced_accuracy" in card
    code = card[card.index("## How to use"):].split("```python\n", 1)[1].split("\n```", 1)[0]
    path = re.search(r'model="([^"]+)"', code).group(1)
    assert code.splitlines() == BalancedBinary.usage({}, path)  # the task's snippet, not the house's default
    assert os.path.basename(path) == os.path.basename(soup.output_dir)


def test_toy_task_warns_in_its_unit_and_trains_learned_soups_with_its_loss(toy_task, toy_family, tmp_path, caplog):
    family, data = toy_family
    with caplog.at_level(logging.WARNING, logger="hf_soups.evaluation.uncertainty"):
        soup = soup_from_hub(family, method="learned", eval_dataset=data, output_dir=tmp_path / "learned",
                             eval_spec=EvalSpec(learned_steps=6))
    assert toy_task.loss_calls == 6  # one call per optimisation step: the task's loss, not a built-in one
    assert soup.recipe.evaluation.metric == "balanced_accuracy"
    weights = [i.weight for i in soup.ingredients]
    assert sum(weights) == pytest.approx(1.0)
    # two near-identical ingredients on 48 utterances: the held-out set cannot separate them, said in utterances
    assert "the held-out set (48 utterances) is too small" in caplog.text
