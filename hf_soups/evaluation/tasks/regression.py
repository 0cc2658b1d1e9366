"""Regression (`*ForSequenceClassification` with `num_labels == 1` and `problem_type` `"regression"` or unset, as
transformers decides): float labels, Pearson's r by default with Spearman's rho and MSE beside it, MSE loss."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from ..metrics import Metric
from . import scores
from .base import Prepared, bad_rows, metric, num_labels_of, read_column, register_task
from .text import SequenceTask

__all__ = ["Regression"]

_EXPECTED = "a finite number (int or float) per row"


@register_task
class Regression(SequenceTask):
    """One regression output (STS-B style); one sentence or a sentence pair."""

    name = "regression"
    title = "regression (num_labels == 1)"
    loss_name = "MSE"

    @classmethod
    def serves(cls, config: Mapping[str, Any]) -> bool:
        problem = config.get("problem_type")
        return super().serves(config) and num_labels_of(config) == 1 and problem in (None, "regression")

    def references(self, raw: Any, found: Mapping[str, Any], name: str) -> torch.Tensor:
        column = found["label"]
        values = read_column(raw, column, name, _EXPECTED)
        invalid = [(row, v) for row, v in enumerate(values)
                   if isinstance(v, bool) or type(v).__name__ == "bool_" or not isinstance(v, numbers.Real)
                   or not math.isfinite(float(v))]
        if invalid:
            raise bad_rows(invalid, column, _EXPECTED, name)
        return torch.tensor([float(v) for v in values], dtype=torch.float32)

    def predictions(self, logits: torch.Tensor, prepared: Prepared) -> torch.Tensor:
        return logits[:, 0]

    def loss(self, output: torch.Tensor, idx: torch.Tensor, prepared: Prepared) -> torch.Tensor:
        return torch.nn.functional.mse_loss(output[:, 0], prepared.targets[idx].to(output.device))

    def metrics(self) -> dict[str, Metric]:
        squared = (lambda p, r: scores.mean_stats((np.asarray(p, dtype=np.float64) - np.asarray(r)) ** 2),
                   scores.mean_from_stats)
        return {"pearsonr": metric("pearsonr", scores.pearsonr, stats=(scores.moment_stats, scores.pearson_from_stats)),
                "spearmanr": metric("spearmanr", scores.spearmanr),
                "mse": metric("mse", scores.mse, higher_is_better=False, stats=squared,
                              per_example=scores.squared_errors, per_example_range=(0.0, math.inf))}

    def evaluate_inputs(self, predictions: Any, references: Any) -> dict[str, Any]:
        return {"predictions": [float(p) for p in predictions], "references": [float(r) for r in references]}
