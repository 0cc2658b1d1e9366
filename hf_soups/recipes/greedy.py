"""Greedy soup (Wortsman et al., 2022, arXiv:2203.05482, Recipe 1).

Sort ingredients by held-out score, best first; add each to the soup only if the soup's held-out score does not
drop (`>=`, the paper's recipe; `strict=True` gives the reference repository's `>`). The selection is pure: the
caller scores each trial soup (in memory or offloaded, always through the merge kernel).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .registry import register_method

if TYPE_CHECKING:  # torch is imported by the code that runs a greedy soup, not by the registry (CLI --help)
    import torch

__all__ = ["greedy_select", "greedy_ensemble"]


@register_method("greedy", paper="https://arxiv.org/abs/2203.05482", needs_eval=True,
                 description="Greedy soup: add ingredients best-first while the held-out score does not drop "
                             "(arXiv:2203.05482).")
def greedy_select(
    names: Sequence[str],
    scores: Sequence[float],
    score_with: Callable[[list[int], int], float],
    *,
    accept: Callable[[int], None] | None = None,
    strict: bool = False,
    progress: Callable[[], None] | None = None,
) -> tuple[list[int], list[dict[str, Any]]]:
    """Run the greedy recipe.

    Args:
        names (`Sequence[str]`): ingredient names, for the trace.
        scores (`Sequence[float]`): individual held-out scores.
        score_with (`Callable[[list[int], int], float]`): the held-out score of the uniform soup of the accepted
            ingredients plus one candidate.
        accept (`Callable[[int], None]`, *optional*): called when a candidate joins the soup (e.g. to keep a
            candidate).
        strict (`bool`, *optional*, defaults to `False`): accept only strict improvements.

    Returns:
        `tuple[list[int], list[dict]]`: accepted ingredient indices, and the trace (one entry per candidate with
        `ingredient`, `score`, `accepted`, `soup_size`).
    """
    order = sorted(range(len(names)), key=lambda i: -scores[i])  # stable: ties keep input order
    best = order[0]
    accepted = [best]
    best_score = scores[best]
    trace = [{"ingredient": names[best], "score": best_score, "accepted": True, "soup_size": 1}]
    if accept:
        accept(best)
    if progress:
        progress()
    for i in order[1:]:
        score = score_with(list(accepted), i)
        ok = score > best_score if strict else score >= best_score
        if ok:
            accepted.append(i)
            best_score = score
            if accept:
                accept(i)
        trace.append({"ingredient": names[i], "score": score, "accepted": ok, "soup_size": len(accepted)})
        if progress:
            progress()
    return sorted(accepted), trace


def greedy_ensemble(logits: Sequence[torch.Tensor], scores: Sequence[float],
                    score_logits: Callable[[torch.Tensor], float], strict: bool = False) -> list[int]:
    """The greedy ensemble baseline: [`greedy_select`] over averaged logits instead of averaged weights.

    The logits of each trial ensemble are averaged by the merge kernel ([`weighted_sum`]), in ingredient order.

    Returns:
        `list[int]`: the chosen members, sorted.
    """

    from ..merge.ops import weighted_sum

    def score_with(members: list[int], candidate: int) -> float:
        chosen = sorted([*members, candidate])
        return score_logits(weighted_sum((logits[i] for i in chosen), [1.0] * len(chosen)))

    accepted, _ = greedy_select([str(i) for i in range(len(logits))], scores, score_with, strict=strict)
    return accepted
