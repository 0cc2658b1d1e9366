"""Weighted soup: a convex combination of the ingredients with user-given weights."""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import SoupError
from .registry import register_method

__all__ = ["user_weights"]


@register_method("weighted", paper="https://arxiv.org/abs/2203.05482", user_weights=True,
                 description="Weighted soup: a convex combination with user-given weights.")
def user_weights(n: int, weights: Sequence[float] | None = None) -> list[float]:
    """The user's `weights`, normalised to sum to 1.

    Raises:
        [`SoupError`]: no weights, not one per ingredient, negative, not finite, or all zero.
    """
    if weights is None:
        raise SoupError("method='weighted' needs weights.", fix="pass weights=[...] with one weight per ingredient.")
    if len(weights) != n:
        raise SoupError(f"got {len(weights)} weights for {n} ingredients.", fix="pass one weight per ingredient.")
    from ..merge.plan import normalize_weights  # (imports torch: not at registration, which --help does)

    return normalize_weights(weights)
