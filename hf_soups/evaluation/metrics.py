"""Metrics: any `evaluate` name, an `EvaluationModule`, a local metric script, or the built-in accuracy.

`evaluate.load("accuracy")` fetches its script from the Hub. Accuracy is therefore computed natively (same
definition: the fraction of exact matches), so offline runs work; every other name goes through `evaluate.load`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import EvaluationError

__all__ = ["Metric", "UserCallableMetric", "callable_name", "metric_record", "resolve_metric"]


@dataclass(frozen=True)
class Metric:
    """A named scoring function `(predictions, references) -> float`.

    Attributes:
        name (`str`): what tables and cards call it.
        compute (`Callable`): the scoring function.
        source (`str`, *optional*): the metric name or path that re-loads it ([`resolve_metric`]); `None` for a
            user callable, which a recipe cannot replay.
        higher_is_better (`bool`, *optional*, defaults to `True`): the metric's direction (`False` for errors such
            as MSE): greedy keeps a candidate whose score does not get worse in this direction.
        unit_stats (`Callable`, *optional*): additive per-unit statistics `(predictions, references) -> (n, k)
            array` (e.g. an entity F1's correct/predicted/true counts per sentence), so that the bootstrap sums them
            per resample instead of recomputing the metric; with `from_stats`.
        from_stats (`Callable`, *optional*): the score of summed statistics, `(r, k) array -> (r,) array`.
    """

    name: str
    compute: Callable[[Sequence[int], Sequence[int]], float]
    source: str | None = None
    higher_is_better: bool = True
    unit_stats: Callable[[Any, Any], Any] | None = field(default=None, compare=False)
    from_stats: Callable[[Any], Any] | None = field(default=None, compare=False)

    def better(self, a: float, b: float) -> bool:
        """Whether score `a` is strictly better than `b` in this metric's direction."""
        return a > b if self.higher_is_better else a < b

    def key(self, score: float) -> float:
        """A sort key that is larger for better scores (`max(..., key=metric.key)` picks the best)."""
        return score if self.higher_is_better else -score

    def __call__(self, predictions: Sequence[int], references: Sequence[int]) -> float:
        return float(self.compute(predictions, references))


@dataclass(frozen=True)
class UserCallableMetric:
    """A recipe's record of a metric that was a user callable: its name only, since code cannot be recorded.

    [`resolve_metric`] refuses it with an [`EvaluationError`] asking for the callable again.

    Attributes:
        name (`str`): the callable's qualified name (`module.function`, `functools.partial(module.function)`).
    """

    name: str


def callable_name(fn: Any) -> str:
    """A user callable's qualified name: `module.qualname` of a function or lambda, of a callable object's class,
    and `functools.partial(...)` around the wrapped function's."""
    if isinstance(fn, functools.partial):
        return f"functools.partial({callable_name(fn.func)})"
    qualname = getattr(fn, "__qualname__", None)
    if not isinstance(qualname, str):  # a callable object: its class names it
        qualname = type(fn).__qualname__
    module = getattr(fn, "__module__", None)
    return f"{module}.{qualname}" if isinstance(module, str) and module not in ("builtins", "__main__") else qualname


def metric_record(metric: Any) -> tuple[str | None, str]:
    """What a recipe can record of a metric: the name that re-loads it (`None` for a user callable), and the name
    cards and tables show.

    Args:
        metric (`str`, `evaluate.EvaluationModule`, [`Metric`], [`UserCallableMetric`] or callable): as
            [`resolve_metric`] takes it.

    Returns:
        `tuple[str | None, str]`: `(replayable name or None, display name)`.
    """
    if isinstance(metric, str):
        return metric, metric
    if isinstance(metric, UserCallableMetric):
        return None, metric.name
    if isinstance(metric, Metric):
        return metric.source, metric.name
    name = getattr(metric, "name", None)
    if isinstance(name, str) and name and callable(getattr(metric, "compute", None)):  # an EvaluationModule
        return name, name
    return None, callable_name(metric)


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
                "soup_from_hub(..., metric=f)), or use a metric name evaluate.load can load.")
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
