"""Text classification (`*ForSequenceClassification`, single label): one sentence or a sentence pair."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..data import LABEL_COLUMNS, check_labels, find_column, model_id2label
from ..metrics import Metric, accuracy_metric
from .base import Columns, Prepared, Task, num_labels_of, register_task
from .pairs import find_text_columns, texts

__all__ = ["SequenceTask", "TextClassification", "sorted_batches", "reorder_batches"]


def sorted_batches(encoded: Mapping[str, Any], tokenizer: Any, batch_size: int,
                   extra: Mapping[str, Sequence[Any]] | None = None, priority: Sequence[int] | None = None
                   ) -> list[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """Rows sorted by length (stable), cut into batches padded dynamically by `tokenizer.pad`; with `priority` (one
    integer per row), sorted by priority first (lowest first), then by length."""
    lengths = torch.tensor([len(ids) for ids in encoded["input_ids"]])
    if priority is not None:  # lengths stay below 2**31: one int64 sort key orders by (priority, length)
        lengths = torch.tensor(list(priority), dtype=torch.int64) * 2**31 + lengths
    order = torch.argsort(lengths, stable=True)
    keys = list(encoded.keys())
    batches = []
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        features = [{k: encoded[k][i] for k in keys} for i in idx.tolist()]
        batches.append((idx, dict(tokenizer.pad(features, return_tensors="pt"))))
    return batches


def reorder_batches(batches: Sequence[tuple[torch.Tensor, Mapping[str, torch.Tensor]]], tokenizer: Any,
                    batch_size: int, priority: Sequence[int]
                    ) -> list[tuple[torch.Tensor, dict[str, torch.Tensor]]] | None:
    """The rows of [`sorted_batches`]' `batches` batched again by (`priority`, length): each row is unpadded by its
    attention mask (the tokenizer's own lists, exactly) and padded again by `tokenizer.pad`. `None` when the batches
    carry no attention mask covering every input."""
    rows: dict[int, dict[str, list[int]]] = {}
    for idx, inputs in batches:
        mask = inputs.get("attention_mask")
        if mask is None or any(tuple(v.shape[:2]) != tuple(mask.shape) for v in inputs.values()):
            return None
        keep = mask.bool()
        for j, row in enumerate(idx.tolist()):
            rows[row] = {k: v[j][keep[j]].tolist() for k, v in inputs.items()}
    if sorted(rows) != list(range(len(priority))):
        return None
    encoded = {k: [rows[r][k] for r in range(len(rows))] for k in rows[0]}
    return sorted_batches(encoded, tokenizer, batch_size, priority=priority)


class SequenceTask(Task):
    """A `*ForSequenceClassification` head on one sentence or a sentence pair (`tokenizer(first, second)`, as
    `run_glue.py`); subclasses decide the labels, predictions, metrics and loss."""

    architectures = ("ForSequenceClassification",)
    pipeline_tag = "text-classification"
    auto_class = "AutoModelForSequenceClassification"
    pipeline_class = "TextClassificationPipeline"
    columns_help = "--text-column (twice for a sentence pair), --label-column"

    def find_columns(self, columns: Sequence[str], asked: Columns) -> dict[str, Any]:
        label = find_column(columns, asked.label, LABEL_COLUMNS, "label")
        return {"label": label, "text": find_text_columns(columns, asked.text)}

    def prepare(self, dataset: Any, raw: Any, reference_dir: str, found: Mapping[str, Any], references: Any, *,
                batch_size: int, max_length: int) -> Prepared:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(reference_dir)
        columns = found["text"]
        if len(columns) == 2:
            encoded = tokenizer(texts(raw, columns[0]), texts(raw, columns[1]), truncation=True, max_length=max_length)
        else:
            encoded = tokenizer(texts(raw, columns[0]), truncation=True, max_length=max_length)
        batches = sorted_batches(encoded, tokenizer, batch_size)
        return Prepared(batches, len(raw), (num_labels_of(self.config),),
                        targets=references, reorder=functools.partial(reorder_batches, batches, tokenizer, batch_size))


@register_task
class TextClassification(SequenceTask):
    """Single-label text classification: argmax predictions, accuracy, cross-entropy."""

    name = "text"
    title = "text classification"

    @classmethod
    def serves(cls, config: Mapping[str, Any]) -> bool:
        return super().serves(config) and config.get("problem_type") in (None, "single_label_classification") \
            and num_labels_of(config) > 1

    def references(self, raw: Any, found: Mapping[str, Any], name: str) -> torch.Tensor:
        return torch.tensor(check_labels(raw, found["label"], model_id2label(self.config), name))

    def metrics(self) -> dict[str, Metric]:
        return {"accuracy": accuracy_metric()}
