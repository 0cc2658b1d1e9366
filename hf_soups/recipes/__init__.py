"""Soup recipes: how ingredient weights are chosen. One method per file, registered explicitly."""

from .recipe import EvalSpec, Recipe

METHODS: dict[str, str] = {
    "uniform": "Uniform soup: the mean of all ingredients (Wortsman et al., 2022, arXiv:2203.05482).",
    "weighted": "Weighted soup: a convex combination with user-given weights.",
    "greedy": "Greedy soup: add ingredients best-first while the held-out score does not drop (arXiv:2203.05482).",
    "learned": "Learned soup: mixing weights optimised on held-out data (arXiv:2203.05482, appendix).",
}

__all__ = ["EvalSpec", "Recipe", "METHODS"]
