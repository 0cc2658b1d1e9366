"""hf_soups: model soups for the Hugging Face ecosystem.

Average the weights of models fine-tuned from one pretrained checkpoint (Wortsman et al., ICML 2022,
arXiv:2203.05482): uniform, weighted, greedy and learned soups, pulled from and pushed to the Hub.
"""

from . import errors as _errors
from .constants import VERSION as __version__
from .api import check_compatibility, soup_from_hub
from .compat import CompatibilityReport, Problem
from .errors import *  # noqa: F403  (the whole error tree is public)
from .merge.options import MergeOptions
from .recipes import EvalSpec, Recipe
from .refs import Ingredient, IngredientRef
from .soup import Soup

__all__ = [
    "__version__",
    "soup_from_hub",
    "check_compatibility",
    "Soup",
    "Ingredient",
    "IngredientRef",
    "Recipe",
    "EvalSpec",
    "MergeOptions",
    "CompatibilityReport",
    "Problem",
    *_errors.__all__,
]
