"""How a metric is named and recorded: [`Metric`], a user callable's record ([`UserCallableMetric`]) and
[`metric_record`]. A leaf module (standard library only), shared by the recipes, which record metrics, and the
evaluation, which loads and runs them ([`hf_soups.evaluation.metrics.resolve_metric`])."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
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
        higher_is_better (`bool`, *optional*, defaults to `True`): the metric's direction (`False` for errors such
            as MSE): greedy keeps a candidate whose score does not get worse in this direction.
        unit_stats (`Callable`, *optional*): additive per-unit statistics `(predictions, references) -> (n, k)
            array` (e.g. an entity F1's correct/predicted/true counts per sentence), so that the bootstrap sums them
            per resample instead of recomputing the metric; with `from_stats`.
        from_stats (`Callable`, *optional*): the score of summed statistics, `(r, k) array -> (r,) array`.
        per_example (`Callable`, *optional*): when the metric is the mean of one value per example (accuracy, exact
            match, squared error), that value, `(predictions, references) -> (n,) array` (numpy or torch). Greedy
            then bounds the score a partly evaluated candidate can still reach and stops evaluating it once it
            cannot reach the bar (see `Evaluator.score_against`); `None` (F1, Pearson): always evaluated in full.
        per_example_range (`tuple[float, float]`, *optional*, defaults to `(0.0, 1.0)`): the smallest and largest
            value `per_example` can give (`math.inf` when unbounded, e.g. squared error's upper end).
    """

    name: str
    compute: Callable[[Sequence[int], Sequence[int]], float]
    source: str | None = None
    higher_is_better: bool = True
    unit_stats: Callable[[Any, Any], Any] | None = field(default=None, compare=False)
    from_stats: Callable[[Any], Any] | None = field(default=None, compare=False)
    per_example: Callable[[Any, Any], Any] | None = field(default=None, compare=False)
    per_example_range: tuple[float, float] = field(default=(0.0, 1.0), compare=False)

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
