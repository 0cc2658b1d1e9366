"""Native implementations of the tasks' default metrics, so offline runs need no `evaluate.load` (which fetches
metric scripts from the Hub). Each follows the reference implementation named in its docstring; the tests compare
them with `scipy` and `seqeval`."""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["pearsonr", "spearmanr", "mse", "micro_f1", "exact_match_rows", "seqeval_f1", "token_accuracy",
           "squad_exact_match", "squad_f1", "get_entities", "is_bio"]


def pearsonr(predictions: Any, references: Any) -> float:
    """Pearson's r (`scipy.stats.pearsonr`); 0.0 when either side is constant (no linear relation is measurable)."""
    p, r = np.asarray(predictions, dtype=np.float64), np.asarray(references, dtype=np.float64)
    if len(p) < 2:
        return 0.0
    p, r = p - p.mean(), r - r.mean()
    denom = float(np.sqrt((p * p).sum() * (r * r).sum()))
    return float(np.clip((p * r).sum() / denom, -1.0, 1.0)) if denom > 0 else 0.0


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks of ties (`scipy.stats.rankdata(method="average")`)."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.arange(1, len(x) + 1)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return sums[inverse] / counts[inverse]


def spearmanr(predictions: Any, references: Any) -> float:
    """Spearman's rho (`scipy.stats.spearmanr`): Pearson's r of the average ranks."""
    p, r = np.asarray(predictions, dtype=np.float64), np.asarray(references, dtype=np.float64)
    return pearsonr(_ranks(p), _ranks(r)) if len(p) else 0.0


def mse(predictions: Any, references: Any) -> float:
    """Mean squared error (lower is better)."""
    p, r = np.asarray(predictions, dtype=np.float64), np.asarray(references, dtype=np.float64)
    return float(((p - r) ** 2).mean()) if len(p) else 0.0


def micro_f1(predictions: Any, references: Any) -> float:
    """Micro-averaged F1 of multi-hot rows (`sklearn.metrics.f1_score(average="micro")`); 0.0 without positives."""
    p, r = np.asarray(predictions, dtype=bool), np.asarray(references, dtype=bool)
    tp = float((p & r).sum())
    denom = float(p.sum() + r.sum())
    return 2 * tp / denom if denom else 0.0


def exact_match_rows(predictions: Any, references: Any) -> float:
    """The fraction of rows whose every label is right (subset accuracy)."""
    p, r = np.asarray(predictions, dtype=bool), np.asarray(references, dtype=bool)
    return float((p == r).all(axis=-1).mean()) if len(r) else 0.0


def rows_equal(predictions: Any, references: Any) -> np.ndarray:
    """1.0 per row whose every label is right ([`exact_match_rows`] is their mean)."""
    p, r = np.asarray(predictions, dtype=bool), np.asarray(references, dtype=bool)
    return (p == r).all(axis=-1).astype(np.float64)


def squared_errors(predictions: Any, references: Any) -> np.ndarray:
    """The squared error of each example ([`mse`] is their mean)."""
    p, r = np.asarray(predictions, dtype=np.float64), np.asarray(references, dtype=np.float64)
    return (p - r) ** 2


_TAG = re.compile(r"^(O|[BIES]-.+)$")


def is_bio(labels: Sequence[str]) -> bool:
    """Whether label names are a BIO/IOB2/IOBES scheme (`O`, `B-X`, `I-X`, ...) with at least one `B-` label."""
    return bool(labels) and all(_TAG.match(str(n)) for n in labels) and any(str(n).startswith("B-") for n in labels)


def _end_of_chunk(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    return (prev_tag in ("E", "S") or (prev_tag in ("B", "I") and tag in ("B", "S", "O"))
            or (prev_tag not in ("O", ".") and prev_type != type_))


def _start_of_chunk(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    return (tag in ("B", "S") or (prev_tag in ("E", "S", "O") and tag in ("E", "I"))
            or (tag not in ("O", ".") and prev_type != type_))


def get_entities(sequences: Sequence[Sequence[str]]) -> set[tuple[str, int, int]]:
    """Entity chunks `(type, start, end)` of tag sequences, as `seqeval.metrics.sequence_labeling.get_entities`
    (the default, conlleval-compatible mode: an `I-` after `O` starts a chunk)."""
    seq = [tag for sentence in sequences for tag in [*sentence, "O"]]
    chunks, prev_tag, prev_type, begin = set(), "O", "", 0
    for i, chunk in enumerate([*seq, "O"]):
        tag, type_ = chunk[0], chunk[1:].split("-", maxsplit=1)[-1] or "_"
        if _end_of_chunk(prev_tag, tag, prev_type, type_):
            chunks.add((prev_type, begin, i - 1))
        if _start_of_chunk(prev_tag, tag, prev_type, type_):
            begin = i
        prev_tag, prev_type = tag, type_
    return chunks


def seqeval_f1(predictions: Sequence[Sequence[str]], references: Sequence[Sequence[str]]) -> float:
    """Entity-level micro F1 (`seqeval.metrics.f1_score`, `evaluate`'s `seqeval` `overall_f1`)."""
    pred, true = get_entities(list(predictions)), get_entities(list(references))
    correct = len(pred & true)
    if not pred or not true or not correct:
        return 0.0
    precision, recall = correct / len(pred), correct / len(true)
    return 2 * precision * recall / (precision + recall)


def token_accuracy(predictions: Sequence[Sequence[Any]], references: Sequence[Sequence[Any]]) -> float:
    """The fraction of words whose label is right, over all sentences."""
    total = sum(len(r) for r in references)
    right = sum(int(a == b) for p, r in zip(predictions, references) for a, b in zip(p, r))
    return right / total if total else 0.0


def _normalize_answer(text: str) -> str:
    """SQuAD v1.1's `normalize_answer`: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in str(text).lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _f1(prediction: str, truth: str) -> float:
    pred, gold = _normalize_answer(prediction).split(), _normalize_answer(truth).split()
    common = collections.Counter(pred) & collections.Counter(gold)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def squad_exact_match(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """SQuAD exact match (fraction, not percent): the normalized answer equals one of the gold answers."""
    scores = squad_each(predictions, references, exact=True)
    return float(scores.mean()) if len(scores) else 0.0


def squad_f1(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """SQuAD token F1 (fraction, not percent), the maximum over the gold answers, averaged over questions."""
    scores = squad_each(predictions, references, exact=False)
    return float(scores.mean()) if len(scores) else 0.0


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros_like(num, dtype=np.float64), where=den > 0)


def f1_stats(correct_pred_true: Sequence[Sequence[float]]) -> np.ndarray:
    """Per-unit `(correct, predicted, true)` counts as an array (for [`f1_from_stats`])."""
    return np.asarray(correct_pred_true, dtype=np.float64).reshape(-1, 3)


def f1_from_stats(summed: np.ndarray) -> np.ndarray:
    """Micro F1 `2c / (p + t)` of summed `(correct, predicted, true)` counts, 0 without a correct one."""
    return _ratio(2 * summed[:, 0], summed[:, 1] + summed[:, 2])


def entity_stats(predictions: Sequence[Sequence[str]], references: Sequence[Sequence[str]]) -> np.ndarray:
    """Per sentence: `(correct, predicted, true)` entity counts (entities never span sentences)."""
    rows = []
    for p, r in zip(predictions, references):
        pred, true = get_entities([list(p)]), get_entities([list(r)])
        rows.append((len(pred & true), len(pred), len(true)))
    return f1_stats(rows)


def multi_hot_stats(predictions: Any, references: Any) -> np.ndarray:
    """Per row: `(true positives, predicted positives, true positives + false negatives)`."""
    p, r = np.asarray(predictions, dtype=bool), np.asarray(references, dtype=bool)
    return np.stack([(p & r).sum(-1), p.sum(-1), r.sum(-1)], axis=-1).astype(np.float64)


def mean_stats(values: np.ndarray) -> np.ndarray:
    """`(value, 1)` per unit: the mean of any per-unit score (with [`mean_from_stats`])."""
    values = np.asarray(values, dtype=np.float64)
    return np.stack([values, np.ones_like(values)], axis=-1)


def mean_from_stats(summed: np.ndarray) -> np.ndarray:
    return _ratio(summed[:, 0], summed[:, 1])


def moment_stats(predictions: Any, references: Any) -> np.ndarray:
    """`(x, y, x^2, y^2, xy, 1)` per example: Pearson's r of a resample from its sums."""
    x, y = np.asarray(predictions, dtype=np.float64), np.asarray(references, dtype=np.float64)
    return np.stack([x, y, x * x, y * y, x * y, np.ones_like(x)], axis=-1)


def pearson_from_stats(s: np.ndarray) -> np.ndarray:
    n = s[:, 5]
    cov = s[:, 4] - s[:, 0] * s[:, 1] / n
    var = np.clip(s[:, 2] - s[:, 0] ** 2 / n, 0, None) * np.clip(s[:, 3] - s[:, 1] ** 2 / n, 0, None)
    return np.clip(_ratio(cov, np.sqrt(var)), -1.0, 1.0)


def squad_each(predictions: Sequence[str], references: Sequence[Sequence[str]], exact: bool) -> np.ndarray:
    """Per question: exact match or F1 against the best gold answer."""
    if exact:
        return np.array([max((float(_normalize_answer(p) == _normalize_answer(g)) for g in golds), default=0.0)
                         for p, golds in zip(predictions, references)])
    return np.array([max((_f1(p, g) for g in golds), default=0.0) for p, golds in zip(predictions, references)])


def word_stats(predictions: Sequence[Sequence[Any]], references: Sequence[Sequence[Any]]) -> np.ndarray:
    """Per sentence: `(right words, words)`."""
    return np.array([(sum(int(a == b) for a, b in zip(p, r)), len(r)) for p, r in zip(predictions, references)],
                    dtype=np.float64).reshape(-1, 2)
