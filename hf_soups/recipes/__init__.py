"""Soup recipes: how a soup is planned. One method per file, each registered in [`METHODS`] (see
[`hf_soups.recipes.protocol`] for what a method declares, receives and returns)."""

from . import uniform, weighted, greedy, learned, model_stock, learned_by_layer  # noqa: F401, I001  (importing registers, in this order)
from .protocol import HeldOut, MethodContext, MethodResult, Needs
from .recipe import BatchNormCalibration, EvalSpec, Recipe
from .registry import METHODS, SoupMethod, get_method, method_names, register_method

__all__ = ["BatchNormCalibration", "EvalSpec", "Recipe", "METHODS", "SoupMethod", "get_method", "method_names",
           "register_method", "HeldOut", "MethodContext", "MethodResult", "Needs"]
