"""Metrics: any `evaluate` name, an `EvaluationModule`, a local metric script, or the built-in accuracy.

`evaluate.load("accuracy")` fetches its script from the Hub. Accuracy is therefore computed natively (same
definition: the fraction of exact matches), so offline runs work; every other name goes through `evaluate.load`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..errors import EvaluationError
from ..metric_spec import Metric, UserCallableMetric, callable_name, metric_record

__all__ = ["Metric", "UserCallableMetric", "callable_name", "metric_record", "resolve_metric"]


def _native_accuracy(predictions: Sequence[int], references: Sequence[int]) -> float:
    p, r = np.asarray(predictions), np.asarray(references)
    return float((p == r).mean()) if len(r) else 0.0


#: `evaluate` metrics whose lower values are better.
LOWER_IS_BETTER = frozenset({"mse", "mae", "rmse", "wer", "cer", "ter", "perplexity", "eval_loss", "loss"})


def _label_ids(predictions: Sequence[int], references: Sequence[int]) -> dict[str, Any]:
    return {"predictions": list(map(int, predictions)), "references": list(map(int, references))}


def _from_module(module: Any, source: str | None = None,
                 inputs: Callable[[Any, Any], dict[str, Any]] = _label_ids) -> Metric:
    name = getattr(module, "name", None) or "metric"

    def compute(predictions: Sequence[int], references: Sequence[int]) -> float:
        result = module.compute(**inputs(predictions, references))
        if isinstance(result, dict):
            if name in result:
                return float(result[name])
            values = [v for v in result.values() if isinstance(v, (int, float))]
            if not values:
                raise EvaluationError(f"metric '{name}' returned no number: {result}.",
                                      fix="pass a metric whose compute() returns a number.")
            return float(values[0])
        return float(result)

    return Metric(name, compute, source or name, name not in LOWER_IS_BETTER)


def resolve_metric(metric: Any = "accuracy", task: Any = None) -> Metric:
    """Turn a metric argument into a [`Metric`].

    Args:
        metric (`str`, `evaluate.EvaluationModule`, `Metric` or callable):
            `"accuracy"` (computed natively), any other `evaluate.load` name (fetched from the Hub), a local metric
            script directory or file, an `EvaluationModule` instance, or a callable `(predictions, references)`.
        task ([`Task`], *optional*): the task scored; its native metrics (e.g. `"pearsonr"`, `"seqeval"`) are
            computed without `evaluate.load`, `"accuracy"` means its default metric where it has no accuracy, and
            `evaluate` modules get its predictions in the form they take.

    Raises:
        [`EvaluationError`]: the metric cannot be loaded.
    """
    if isinstance(metric, Metric):
        return metric
    if isinstance(metric, UserCallableMetric):
        raise EvaluationError(
            f"the metric was the user callable '{metric.name}', which a recipe records by name only and cannot "
            "replay.",
            fix="pass the callable again: metric=<the function> (soup.evaluate(..., metric=f), "
                "soup_from_hub(..., eval_spec=EvalSpec(metric=f))), or use a metric name evaluate.load can load.")
    try:
        import evaluate
    except ImportError:  # pragma: no cover - evaluate is a dependency
        evaluate = None
    inputs = task.evaluate_inputs if task is not None else _label_ids
    if evaluate is not None and isinstance(metric, evaluate.EvaluationModule):
        return _from_module(metric, inputs=inputs)
    if isinstance(metric, str):
        native = task.metrics() if task is not None else {"accuracy": Metric("accuracy", _native_accuracy, "accuracy")}
        if metric == "accuracy" and not os.path.exists(metric):  # the library default: the task's default metric
            return next(iter(native.values()))
        if metric in native and not os.path.exists(metric):
            return native[metric]
        try:
            return _from_module(evaluate.load(metric), metric, inputs)
        except Exception as e:
            raise EvaluationError(
                f"cannot load metric '{metric}': {type(e).__name__}: {str(e).splitlines()[0][:200]}",
                fix="pass an evaluate.EvaluationModule instance, a local metric script directory, or 'accuracy'.",
            ) from None
    if callable(metric):
        return Metric(callable_name(metric), metric)
    raise EvaluationError(f"unsupported metric {metric!r}.", fix="pass a metric name or an EvaluationModule.")
