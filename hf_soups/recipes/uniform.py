"""Uniform soup (Wortsman et al., 2022, arXiv:2203.05482): the plain mean of every ingredient."""

from __future__ import annotations

from collections.abc import Sequence

from .registry import register_method

__all__ = ["uniform_weights"]


@register_method("uniform", paper="https://arxiv.org/abs/2203.05482",
                 description="Uniform soup: the mean of all ingredients (Wortsman et al., 2022, arXiv:2203.05482).")
def uniform_weights(n: int, weights: Sequence[float] | None = None) -> list[float]:
    """One weight `1/n` per ingredient (`weights` must be `None`)."""
    from ..merge.plan import normalize_weights  # (imports torch: not at registration, which --help does)

    return normalize_weights([1.0] * n)
