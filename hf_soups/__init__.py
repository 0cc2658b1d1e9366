"""hf_soups: model soups for the Hugging Face ecosystem.

Average the weights of models fine-tuned from one pretrained checkpoint (Wortsman et al., ICML 2022,
arXiv:2203.05482): uniform, weighted, greedy and learned soups, pulled from and pushed to the Hub.

Importing the package is cheap: the error tree is loaded at once, everything else (and torch with it) on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import errors as _errors
from .constants import VERSION as __version__
from .errors import *  # noqa: F403  (the whole error tree is public)

# public name -> the module that defines it, imported on first access (PEP 562)
_LAZY = {
    "soup_from_hub": ".api",
    "check_compatibility": ".api",
    "load_recipe": ".api",
    "replay_recipe": ".api",
    "find_ingredients": ".hub.discovery",
    "CandidateSet": ".hub.discovery",
    "run_checkpoints": ".runs",
    "RunCheckpoints": ".runs",
    "SoupCallback": ".callback",
    "Soup": ".soup",
    "Ingredient": ".refs",
    "IngredientRef": ".refs",
    "Recipe": ".recipes",
    "EvalSpec": ".recipes",
    "EvalSet": ".evaluation.data",
    "MergeOptions": ".merge.options",
    "HubAccess": ".hub.access",
    "CompatibilityReport": ".compat",
    "Problem": ".compat",
    "diagnose": ".diagnosis",
    "Diagnosis": ".diagnosis",
}

if TYPE_CHECKING:
    from .api import check_compatibility, load_recipe, replay_recipe, soup_from_hub
    from .compat import CompatibilityReport, Problem
    from .evaluation.data import EvalSet
    from .callback import SoupCallback
    from .hub.discovery import CandidateSet, find_ingredients
    from .runs import RunCheckpoints, run_checkpoints
    from .hub.access import HubAccess
    from .merge.options import MergeOptions
    from .recipes import EvalSpec, Recipe
    from .refs import Ingredient, IngredientRef
    from .soup import Soup
    from .diagnosis import Diagnosis, diagnose

__all__ = [
    "__version__",
    "soup_from_hub",
    "check_compatibility",
    "load_recipe",
    "replay_recipe",
    "find_ingredients",
    "CandidateSet",
    "run_checkpoints",
    "RunCheckpoints",
    "SoupCallback",
    "Soup",
    "Ingredient",
    "IngredientRef",
    "Recipe",
    "EvalSpec",
    "EvalSet",
    "MergeOptions",
    "HubAccess",
    "CompatibilityReport",
    "Problem",
    "diagnose",
    "Diagnosis",
    *_errors.__all__,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'hf_soups' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
