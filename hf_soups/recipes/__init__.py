"""Soup recipes: how ingredient weights are chosen. One method per file, each registered in [`METHODS`]."""

from . import uniform, weighted, greedy, learned  # noqa: F401, I001  (importing registers, in this order)
from .recipe import BatchNormCalibration, EvalSpec, Recipe
from .registry import METHODS, SoupMethod, get_method, method_names, register_method

__all__ = ["BatchNormCalibration", "EvalSpec", "Recipe", "METHODS", "SoupMethod", "get_method", "method_names",
           "register_method"]
