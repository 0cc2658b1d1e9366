"""Greedy soup (Wortsman et al., 2022, arXiv:2203.05482, Recipe 1).

Sort ingredients by held-out score, best first; add each to the soup only if the soup's held-out score does not
drop (`>=`, the paper's recipe; `strict=True` gives the reference repository's `>`); for a lower-is-better metric
(MSE), "best" is the lowest and "does not drop" means "does not rise". The selection is pure: the
caller scores each trial soup (in memory or offloaded, always through the merge kernel).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import EvaluationError
from .protocol import MethodContext, MethodResult, Needs, Trial
from .registry import register_method

if TYPE_CHECKING:  # torch is imported by the code that runs a greedy soup, not by the registry (CLI --help)
    import torch

__all__ = ["greedy_soup", "greedy_select", "greedy_ensemble", "degenerate_steps", "Trial"]


@register_method("greedy", paper="https://arxiv.org/abs/2203.05482", needs=Needs(held_out=True), progress_steps=1,
                 description="Greedy soup: add ingredients best-first while the held-out score does not drop "
                             "(arXiv:2203.05482).")
def greedy_soup(ctx: MethodContext) -> MethodResult:
    """The greedy recipe on the held-out evaluation: [`greedy_select`] with each trial soup scored as the engine
    would compute it (`EvalSpec.strict` for strict improvements).

    Raises:
        [`EvaluationError`]: every ingredient's outputs are degenerate.
    """
    held_out = ctx.held_out
    if held_out is None:
        raise EvaluationError("method='greedy' needs held-out data.", fix="pass eval_dataset=...")

    def onehot(members: Sequence[int]) -> list[float]:
        return [1.0 if i in members else 0.0 for i in range(ctx.k)]

    def score_with(members: list[int], candidate: int, bar: float) -> Trial:
        return held_out.score(ctx.plan.with_weights(onehot([*members, candidate])), bar=bar)

    accepted, trace = greedy_select(ctx.names, held_out.scores, score_with, strict=held_out.spec.strict,
                                    progress=ctx.progress, problems=held_out.problems,
                                    higher_is_better=held_out.higher_is_better, bounded=True,
                                    seed_score=held_out.bar_score)
    return MethodResult(ctx.plan.with_weights(onehot(accepted)), trace, warnings=degenerate_steps(trace))


def greedy_select(
    names: Sequence[str],
    scores: Sequence[float],
    score_with: Callable[..., float | Trial],
    *,
    accept: Callable[[int], None] | None = None,
    strict: bool = False,
    progress: Callable[[], None] | None = None,
    problems: Sequence[str | None] | None = None,
    higher_is_better: bool = True,
    bounded: bool = False,
    seed_score: Callable[[int], float] | None = None,
) -> tuple[list[int], list[dict[str, Any]]]:
    """Run the greedy recipe.

    A candidate is accepted when the trial soup's score does not drop and the trial is not degenerate: a
    [`Trial`] with a `problem` (e.g. NaN or collapsed logits, whose accuracy can tie by chance) is rejected, and the
    reason is recorded in its trace entry. An ingredient whose own outputs are degenerate (`problems[i]`) never
    seeds the soup and is rejected without a trial.

    Args:
        names (`Sequence[str]`): ingredient names, for the trace.
        scores (`Sequence[float]`): individual held-out scores.
        score_with (`Callable[[list[int], int], float | Trial]`): the held-out score (or [`Trial`]) of the uniform
            soup of the accepted ingredients plus one candidate; with `bounded`, called with the bar (the current
            best score) as a third argument, and it may return a [`Trial`] `stopped_early` once the soup cannot
            reach the bar (rejected, exactly as its full score would have been).
        accept (`Callable[[int], None]`, *optional*): called when a candidate joins the soup (e.g. to keep a
            candidate).
        strict (`bool`, *optional*, defaults to `False`): accept only strict improvements.
        progress (`Callable[[], None]`, *optional*): called once per ingredient.
        problems (`Sequence[str | None]`, *optional*): why each ingredient's own outputs are degenerate (`None` when
            they are not).
        higher_is_better (`bool`, *optional*, defaults to `True`): the metric's direction; with `False` (e.g. MSE)
            ingredients are ranked lowest first and "does not drop" means "does not rise".
        bounded (`bool`, *optional*, defaults to `False`): pass the bar to `score_with` (early decisions).
        seed_score (`Callable[[int], float]`, *optional*): the first bar, the seed ingredient's score as `score_with`
            scores trials (its ranking score `scores[i]` otherwise).

    Returns:
        `tuple[list[int], list[dict]]`: accepted ingredient indices, and the trace (one entry per candidate with
        `ingredient`, `score`, `accepted`, `soup_size`, and `reason` when it was rejected as degenerate; for a
        scored trial that reports them, `examples` evaluated, and either `stopped_early` (its `score` is then the
        best score it could still have reached, which already fails the bar) or `evaluated_in_full` saying why the
        metric allows no early decision).

    Raises:
        [`EvaluationError`]: every ingredient's outputs are degenerate.
    """
    problems = list(problems) if problems is not None else [None] * len(names)
    # stable: ties keep input order; degenerate ingredients go last and never seed the soup
    sign = 1.0 if higher_is_better else -1.0
    order = sorted(range(len(names)), key=lambda i: (problems[i] is not None, -sign * scores[i]))
    best = order[0]
    if problems[best] is not None:
        raise EvaluationError("every ingredient's outputs on the held-out set are degenerate: "
                              + "; ".join(f"'{names[i]}': {problems[i]}" for i in order) + ".",
                              fix="check the ingredients (their classifier weights) and the held-out set.")
    accepted = [best]
    best_score = seed_score(best) if seed_score is not None and len(order) > 1 else scores[best]
    trace = [{"ingredient": names[best], "score": best_score, "accepted": True, "soup_size": 1}]
    if accept:
        accept(best)
    if progress:
        progress()
    for i in order[1:]:
        if problems[i] is not None:
            trial = Trial(scores[i])
            score: float = scores[i]
            problem: str | None = f"the ingredient alone gives {problems[i]}"
        else:
            result = score_with(list(accepted), i, best_score) if bounded else score_with(list(accepted), i)
            trial = result if isinstance(result, Trial) else Trial(result)
            score, problem = trial.score, trial.problem
            problem = f"the soup with it gives {problem}" if problem is not None else None
        ok = problem is None and not trial.stopped_early and (
            sign * score > sign * best_score if strict else sign * score >= sign * best_score)
        if ok:
            accepted.append(i)
            best_score = score
            if accept:
                accept(i)
        entry: dict[str, Any] = {"ingredient": names[i], "score": score,
                                 "accepted": ok, "soup_size": len(accepted)}
        if problem is not None:
            entry["reason"] = problem
        if trial.examples is not None:
            entry["examples"] = trial.examples
        if trial.stopped_early:
            entry["stopped_early"] = True
        elif trial.full_reason is not None:
            entry["evaluated_in_full"] = trial.full_reason
        trace.append(entry)
        if progress:
            progress()
    return sorted(accepted), trace


def degenerate_steps(trace: Sequence[dict[str, Any]]) -> list[str]:
    """One warning per greedy step rejected as degenerate (for the model card's warnings)."""
    return [f"greedy: candidate '{step['ingredient']}' was rejected whatever its score ({step['score']:.4f}): "
            f"{step['reason']}." for step in trace if step.get("reason")]


def greedy_ensemble(logits: Sequence[torch.Tensor], scores: Sequence[float],
                    score_logits: Callable[[torch.Tensor], float], strict: bool = False,
                    problem: Callable[[torch.Tensor], str | None] | None = None,
                    higher_is_better: bool = True) -> list[int]:
    """The greedy ensemble baseline: [`greedy_select`] over averaged logits instead of averaged weights.

    The logits of each trial ensemble are averaged by the merge kernel ([`weighted_sum`]), in ingredient order.

    Args:
        logits (`Sequence[torch.Tensor]`): each ingredient's logits on the selection set.
        scores (`Sequence[float]`): each ingredient's score.
        score_logits (`Callable[[torch.Tensor], float]`): the metric of averaged logits.
        strict (`bool`, *optional*, defaults to `False`): accept only strict improvements.
        problem (`Callable[[torch.Tensor], str | None]`, *optional*): why logits are degenerate (e.g.
            `Evaluator.problem`); degenerate members and trial ensembles are rejected as in [`greedy_select`].
        higher_is_better (`bool`, *optional*, defaults to `True`): the metric's direction.

    Returns:
        `list[int]`: the chosen members, sorted.
    """

    from ..merge.ops import weighted_sum

    def score_with(members: list[int], candidate: int) -> Trial:
        chosen = sorted([*members, candidate])
        mean = weighted_sum((logits[i] for i in chosen), [1.0] * len(chosen))
        return Trial(score_logits(mean), problem(mean) if problem is not None else None)

    problems = [problem(lg) for lg in logits] if problem is not None else None
    if problems is not None and all(p is not None for p in problems):
        problems = None  # a baseline row: every member is degenerate (each row is flagged), keep the plain recipe
    accepted, _ = greedy_select([str(i) for i in range(len(logits))], scores, score_with, strict=strict,
                                problems=problems, higher_is_better=higher_is_better)
    return accepted
