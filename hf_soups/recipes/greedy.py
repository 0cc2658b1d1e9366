"""Greedy soup (Wortsman et al., 2022, arXiv:2203.05482, Recipe 1).

Sort ingredients by held-out score, best first; add each to the soup only if the soup's held-out score does not
drop (`>=`, the paper's recipe; `strict=True` gives the reference repository's `>`). A running fp32 sum makes
each trial one fused update plus one evaluation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .registry import register_method

if TYPE_CHECKING:  # torch is imported by the code that runs a greedy soup, not by the registry (CLI --help)
    import torch

__all__ = ["greedy_select", "greedy_ensemble", "RunningSum"]


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
        accept (`Callable[[int], None]`, *optional*): called when a candidate joins the soup (e.g. to update a
            running sum).
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


class RunningSum:
    """The in-memory greedy state: an fp32 running sum, so each trial is one fused update plus one evaluation."""

    def __init__(self, load_state: Callable[[int], Mapping[str, torch.Tensor]],
                 score_mean: Callable[[Mapping[str, torch.Tensor], Mapping[str, torch.Tensor], int], float]) -> None:
        self.load_state, self.score_mean = load_state, score_mean
        self.total: dict[str, torch.Tensor] | None = None
        self._last: tuple[int, Mapping[str, torch.Tensor]] | None = None

    def score_with(self, members: list[int], candidate: int) -> float:
        state = self.load_state(candidate)
        self._last = (candidate, state)
        assert self.total is not None
        return self.score_mean(self.total, state, len(members) + 1)

    def accept(self, i: int) -> None:
        state = self._last[1] if self._last and self._last[0] == i else self.load_state(i)
        if self.total is None:
            self.total = {k: v.clone() for k, v in state.items()}
        else:
            for k, v in self.total.items():
                v.add_(state[k])


def greedy_ensemble(logits: Sequence[torch.Tensor], scores: Sequence[float],
                    score_logits: Callable[[torch.Tensor], float], strict: bool = False) -> list[int]:
    """The greedy ensemble baseline: the same recipe over averaged logits. Returns the chosen members."""
    order = sorted(range(len(logits)), key=lambda i: -scores[i])
    members = [order[0]]
    total = logits[order[0]].clone()
    best = scores[order[0]]
    for i in order[1:]:
        score = score_logits((total + logits[i]) / (len(members) + 1))
        if score > best or (not strict and score == best):
            total += logits[i]
            members.append(i)
            best = score
    return sorted(members)
