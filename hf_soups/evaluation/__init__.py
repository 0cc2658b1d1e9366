"""Evaluation with `datasets` + `evaluate`: the only package that imports them."""

from .data import check_labels, load_eval_dataset
from .device import resolve_eval_device
from .evaluator import Evaluator, evaluate_checkpoint, task_of
from .metrics import Metric, resolve_metric
from .report import EvaluationReport, ResultRow, SoupReport, evaluate_soup
from .uncertainty import Bootstrap, Interval, paired_bootstrap

__all__ = ["check_labels", "load_eval_dataset", "resolve_eval_device", "Evaluator", "evaluate_checkpoint", "task_of",
           "Metric", "resolve_metric", "ResultRow", "EvaluationReport", "SoupReport", "evaluate_soup", "Bootstrap",
           "Interval", "paired_bootstrap"]
