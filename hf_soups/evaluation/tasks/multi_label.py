"""Multi-label classification (`problem_type="multi_label_classification"`): multi-hot or label-name lists,
sigmoid > threshold predictions, micro-F1 by default with exact match beside it, BCE loss."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from ..data import model_id2label
from ..metrics import Metric
from . import scores
from .base import Prepared, metric, num_labels_of, raise_label_problems, read_column, register_task
from .text import SequenceTask

__all__ = ["MultiLabel", "DEFAULT_THRESHOLD"]

#: The sigmoid threshold of a positive label (recorded in the recipe).
DEFAULT_THRESHOLD = 0.5


def _hot(value: Any) -> int | None:
    """0 or 1 for a multi-hot entry (bool, int, or a float exactly 0.0/1.0), else `None`."""
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return int(value)
    if isinstance(value, numbers.Real) and math.isfinite(float(value)) and float(value) in (0.0, 1.0):
        return int(value)
    return None


@register_task
class MultiLabel(SequenceTask):
    """Independent sigmoid labels; one sentence or a sentence pair."""

    name = "multi_label"
    title = "multi-label classification (problem_type 'multi_label_classification')"
    loss_name = "BCE"

    @classmethod
    def serves(cls, config: Mapping[str, Any]) -> bool:
        return super().serves(config) and config.get("problem_type") == "multi_label_classification"

    @property
    def cut(self) -> float:
        """The threshold: `threshold` as given, else [`DEFAULT_THRESHOLD`]."""
        return DEFAULT_THRESHOLD if self.threshold is None else float(self.threshold)

    def references(self, raw: Any, found: Mapping[str, Any], name: str) -> torch.Tensor:
        column = found["label"]
        id2label = model_id2label(self.config)
        n = num_labels_of(self.config)
        label2id = {str(v).lower(): k for k, v in id2label.items()}
        expected = (f"a multi-hot list of {n} zeros and ones, or a list of label names from "
                    f"{[id2label[i] for i in sorted(id2label)][:10]}")
        rows, invalid, unknown = [], [], []
        for row, value in enumerate(read_column(raw, column, name, expected)):
            hot = [0.0] * n
            if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
                for v in value:
                    if v.lower() in label2id:
                        hot[label2id[v.lower()]] = 1.0
                    else:
                        unknown.append((row, v))
            elif isinstance(value, (list, tuple)) and len(value) == n and all(_hot(v) is not None for v in value):
                hot = [float(_hot(v)) for v in value]  # type: ignore[arg-type]
            elif not (isinstance(value, (list, tuple)) and not value):  # [] is a row without labels
                invalid.append((row, value))
            rows.append(hot)
        raise_label_problems(invalid, unknown, column, expected, name, f"label2id {sorted(label2id)}",
                             "re-map the dataset's label names to the model's id2label.")
        return torch.tensor(rows, dtype=torch.float32).reshape(len(rows), n)

    def predictions(self, logits: torch.Tensor, prepared: Prepared) -> torch.Tensor:
        return (torch.sigmoid(logits) > self.cut).to(torch.int64)

    def loss(self, output: torch.Tensor, idx: torch.Tensor, prepared: Prepared) -> torch.Tensor:
        return torch.nn.functional.binary_cross_entropy_with_logits(output, prepared.targets[idx].to(output.device))

    def metrics(self) -> dict[str, Metric]:
        rows_equal = (lambda p, r: scores.mean_stats((np.asarray(p, dtype=bool) == np.asarray(r, dtype=bool))
                                                     .all(axis=-1)), scores.mean_from_stats)
        return {"micro_f1": metric("micro_f1", scores.micro_f1, stats=(scores.multi_hot_stats, scores.f1_from_stats)),
                "exact_match": metric("exact_match", scores.exact_match_rows, stats=rows_equal,
                                      per_example=scores.rows_equal)}

    def evaluate_inputs(self, predictions: Any, references: Any) -> dict[str, Any]:
        return {"predictions": [[int(v) for v in p] for p in predictions],
                "references": [[int(v) for v in r] for r in references]}
