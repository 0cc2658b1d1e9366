"""Uncertainty of held-out scores: seeded paired bootstrap confidence intervals, and the small-set warning.

Every method of an evaluation set is scored on the same resamples of its examples (a *paired* bootstrap), so the
interval of a difference between two methods accounts for their correlation: a +0.9-point soup gain on 1,000
examples is shown with the interval it deserves. Intervals are percentile intervals (Efron & Tibshirani, 1993).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .metrics import Metric, _native_accuracy

__all__ = ["Bootstrap", "Interval", "paired_bootstrap", "separation_warning", "DEFAULT_RESAMPLES",
           "DEFAULT_CONFIDENCE"]

logger = logging.getLogger(__name__)

#: Bootstrap resamples per evaluation set.
DEFAULT_RESAMPLES = 1000
#: Two-sided confidence level of the intervals.
DEFAULT_CONFIDENCE = 0.95
_CHUNK = 64  # resamples drawn at a time (bounds memory to 64 x n indices)


@dataclass(frozen=True)
class Interval:
    """A point estimate with its bootstrap confidence interval."""

    value: float
    low: float
    high: float

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def __str__(self) -> str:
        return f"{self.value:.4f} [{self.low:.4f}, {self.high:.4f}]"


@dataclass(frozen=True)
class Bootstrap:
    """The paired bootstrap settings: `resamples` draws of `n` indices with replacement from
    `numpy.random.default_rng(seed)`, percentile intervals at `confidence`."""

    resamples: int = DEFAULT_RESAMPLES
    confidence: float = DEFAULT_CONFIDENCE
    seed: int = 0

    def indices(self, n: int) -> Sequence[np.ndarray]:
        """The resampled index matrices, `(chunk, n)` each, in draw order (the same for every method)."""
        rng = np.random.default_rng(self.seed)
        out, left = [], self.resamples
        while left > 0:
            k = min(_CHUNK, left)
            out.append(rng.integers(0, n, size=(k, n)))
            left -= k
        return out


def _resampled_scores(predictions: np.ndarray, references: np.ndarray, metric: Metric,
                      chunks: Sequence[np.ndarray]) -> np.ndarray:
    if metric.compute is _native_accuracy:  # a mean of per-example correctness: vectorised
        correct = (predictions == references).astype(np.float64)
        return np.concatenate([correct[idx].mean(axis=1) for idx in chunks])
    if metric.unit_stats is not None and metric.from_stats is not None:  # additive per-unit statistics: vectorised
        stats = np.asarray(metric.unit_stats(predictions, references), dtype=np.float64)
        return np.concatenate([metric.from_stats(stats[idx].sum(axis=1)) for idx in chunks])
    return np.array([metric(predictions[row], references[row]) for idx in chunks for row in idx])


def paired_bootstrap(
    predictions: Mapping[str, Sequence[int] | np.ndarray],
    references: Sequence[int] | np.ndarray,
    metric: Metric,
    *,
    baseline: str | None = None,
    bootstrap: Bootstrap | None = None,
) -> tuple[dict[str, Interval], dict[str, Interval]]:
    """Confidence intervals of each method's score, and of its difference to `baseline`, on one evaluation set.

    Args:
        predictions (`Mapping[str, array]`): each method's predictions, one per unit of the task ([`Task.unit`]:
            an example, a sentence, a question), in dataset order; the units are what the bootstrap resamples.
        references (`array`): the references, one per unit ([`Evaluator.references`]).
        metric ([`Metric`]): the metric; accuracy is resampled vectorised, any other metric is recomputed per
            resample.
        baseline (`str`, *optional*): the method differences are taken to (e.g. `"best_individual"`).
        bootstrap ([`Bootstrap`], *optional*): resamples, confidence and seed.

    Returns:
        `tuple[dict[str, Interval], dict[str, Interval]]`: `{method: score interval}` and
        `{method: interval of score - baseline score}` (empty without a baseline).
    """
    bootstrap = bootstrap or Bootstrap()
    refs = np.asarray(references)
    if not len(refs) or bootstrap.resamples <= 0:
        return {}, {}
    chunks = bootstrap.indices(len(refs))
    tail = 100 * (1 - bootstrap.confidence) / 2
    draws: dict[str, np.ndarray] = {}
    scores: dict[str, Interval] = {}
    for method, preds in predictions.items():
        p = np.asarray(preds)
        draws[method] = _resampled_scores(p, refs, metric, chunks)
        low, high = np.percentile(draws[method], [tail, 100 - tail])
        scores[method] = Interval(metric(p, refs), float(low), float(high))
    differences: dict[str, Interval] = {}
    if baseline is not None and baseline in draws:
        for method in predictions:
            delta = draws[method] - draws[baseline]
            low, high = np.percentile(delta, [tail, 100 - tail])
            differences[method] = Interval(scores[method].value - scores[baseline].value, float(low), float(high))
    return scores, differences


def separation_warning(what: str, n: int, scores: Mapping[str, float], best: Interval | None,
                       confidence: float = DEFAULT_CONFIDENCE, unit: str = "example") -> str | None:
    """A warning when the held-out set is too small to separate the candidates: the confidence interval's
    half-width of the best candidate's score is larger than the spread of all candidates' scores.

    Args:
        what (`str`): the set, as named in the message (e.g. `"the held-out set"`, `"evaluation set 'test'"`).
        n (`int`): its number of units (the references the bootstrap resamples).
        scores (`Mapping[str, float]`): each candidate's score on it.
        best ([`Interval`]): the best candidate's score interval.
        confidence (`float`): the intervals' confidence level.
        unit (`str`, *optional*, defaults to `"example"`): what one reference is, as the task names it
            ([`Task.unit`]: `"sentence"` for token classification, `"question"` for QA).

    Returns:
        `str` or `None`: the warning (also logged), or `None` when the set separates the candidates.
    """
    if best is None or len(scores) < 2:
        return None
    spread = max(scores.values()) - min(scores.values())
    if best.half_width <= spread:
        return None
    message = (f"{what} ({n} {unit}s) is too small to separate the candidates: the "
               f"{confidence:.0%} confidence interval of a score is ±{best.half_width:.4f}, wider than the spread of "
               f"the candidates' scores ({spread:.4f}); rankings and greedy decisions on it are mostly noise. "
               "Fix: use a larger held-out set.")
    logger.warning("%s", message)
    return message
