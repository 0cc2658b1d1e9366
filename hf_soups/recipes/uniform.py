"""Uniform soup (Wortsman et al., 2022, arXiv:2203.05482): the plain mean of every ingredient."""

from __future__ import annotations

from .protocol import MethodContext, MethodResult, Needs
from .registry import register_method

__all__ = ["uniform_soup"]


@register_method("uniform", paper="https://arxiv.org/abs/2203.05482", needs=Needs(),
                 description="Uniform soup: the mean of all ingredients (Wortsman et al., 2022, arXiv:2203.05482).")
def uniform_soup(ctx: MethodContext) -> MethodResult:
    """One weight `1/K` per ingredient."""
    return MethodResult(ctx.plan.with_weights([1.0] * ctx.k))
