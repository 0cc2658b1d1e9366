"""Evaluation with `datasets` + `evaluate`: the only package that imports them."""

from .data import check_labels, load_eval_dataset
from .evaluator import Evaluator, evaluate_checkpoint, task_of
from .metrics import Metric, resolve_metric
from .report import SoupReport, evaluate_soup

__all__ = ["check_labels", "load_eval_dataset", "Evaluator", "evaluate_checkpoint", "task_of", "Metric", "resolve_metric", "SoupReport",
           "evaluate_soup"]
