"""Weighted soup: a convex combination of the ingredients with user-given weights."""

from __future__ import annotations

from ..errors import SoupError
from .protocol import MethodContext, MethodResult, Needs
from .registry import register_method

__all__ = ["weighted_soup"]


@register_method("weighted", paper="https://arxiv.org/abs/2203.05482", needs=Needs(user_weights=True),
                 description="Weighted soup: a convex combination with user-given weights.")
def weighted_soup(ctx: MethodContext) -> MethodResult:
    """The user's weights, normalised to sum to 1.

    Raises:
        [`SoupError`]: no weights, not one per ingredient, negative, not finite, or all zero.
    """
    if ctx.weights is None:
        raise SoupError("method='weighted' needs weights.", fix="pass weights=[...] with one weight per ingredient.")
    if len(ctx.weights) != ctx.k:
        raise SoupError(f"got {len(ctx.weights)} weights for {ctx.k} ingredients.",
                        fix="pass one weight per ingredient.")
    return MethodResult(ctx.plan.with_weights(ctx.weights))
