"""How a metric is named and recorded: [`Metric`], a user callable's record ([`UserCallableMetric`]) and
[`metric_record`]. A leaf module (standard library only), shared by the recipes, which record metrics, and the
evaluation, which loads and runs them ([`hf_soups.evaluation.metrics.resolve_metric`])."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Metric", "UserCallableMetric", "callable_name", "metric_record"]


@dataclass(frozen=True)
class Metric:
    """A named scoring function `(predictions, references) -> float`.

    Attributes:
        name (`str`): what tables and cards call it.
        compute (`Callable`): the scoring function.
        source (`str`, *optional*): the metric name or path that re-loads it ([`resolve_metric`]); `None` for a
            user callable, which a recipe cannot replay.
    """

    name: str
    compute: Callable[[Sequence[int], Sequence[int]], float]
    source: str | None = None

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
