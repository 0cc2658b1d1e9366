"""Greedy soup (Wortsman et al., 2022, arXiv:2203.05482, Recipe 1).

Sort ingredients by held-out score, best first; add each to the soup only if the soup's held-out score does not
drop (`>=`, the paper's recipe; `strict=True` gives the reference repository's `>`). A running fp32 sum makes
each trial one fused update plus one evaluation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

__all__ = ["greedy_select", "greedy_ensemble"]


def greedy_select(
    names: Sequence[str],
    scores: Sequence[float],
    load_state: Callable[[int], Mapping[str, torch.Tensor]],
    score_mean: Callable[[Mapping[str, torch.Tensor], Mapping[str, torch.Tensor] | None, int], float],
    *,
    strict: bool = False,
    progress: Callable[[], None] | None = None,
) -> tuple[list[int], list[dict[str, Any]]]:
    """Run the greedy recipe.

    Args:
        names (`Sequence[str]`): ingredient names, for the trace.
        scores (`Sequence[float]`): individual held-out scores.
        load_state (`Callable[[int], Mapping[str, Tensor]]`): fp32 floating tensors of ingredient `i`.
        score_mean (`Callable`): `score_mean(running_sum, candidate_or_None, count)` scores the model
            `(running_sum + candidate) / count`.
        strict (`bool`, *optional*, defaults to `False`): accept only strict improvements.

    Returns:
        `tuple[list[int], list[dict]]`: accepted ingredient indices, and the trace (one entry per candidate with
        `ingredient`, `score`, `accepted`, `soup_size`).
    """
    order = sorted(range(len(names)), key=lambda i: -scores[i])  # stable: ties keep input order
    best = order[0]
    running = {k: v.clone() for k, v in load_state(best).items()}
    accepted = [best]
    best_score = scores[best]
    trace = [{"ingredient": names[best], "score": best_score, "accepted": True, "soup_size": 1}]
    if progress:
        progress()
    for i in order[1:]:
        candidate = load_state(i)
        score = score_mean(running, candidate, len(accepted) + 1)
        ok = score > best_score if strict else score >= best_score
        if ok:
            for k, v in running.items():
                v.add_(candidate[k])
            accepted.append(i)
            best_score = score
        trace.append({"ingredient": names[i], "score": score, "accepted": ok, "soup_size": len(accepted)})
        if progress:
            progress()
    return sorted(accepted), trace


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
