"""`Soup.evaluate`: every method on every evaluation set, cheap because individual logits are cached."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..checkpoint.reader import open_checkpoint
from ..merge.plan import build_plan
from ..recipes.greedy import greedy_ensemble
from .candidates import ModelHolder, checkpoint_float_state, read_float_state
from .evaluator import Evaluator

__all__ = ["SoupReport", "evaluate_soup"]


@dataclass
class SoupReport:
    """Scores of every method on every evaluation set.

    Attributes:
        results (`dict[str, dict[str, float]]`): `{set: {method: score}}`.
        metric (`str`): the metric name.
        ingredient_scores (`dict[str, dict[str, float]]`): `{set: {ingredient: score}}`.
        members (`dict[str, list[str]]`): the ingredients chosen by each selection method.
    """

    results: dict[str, dict[str, float]]
    metric: str
    ingredient_scores: dict[str, dict[str, float]] = field(default_factory=dict)
    members: dict[str, list[str]] = field(default_factory=dict)

    @property
    def methods(self) -> list[str]:
        seen: list[str] = []
        for scores in self.results.values():
            seen += [m for m in scores if m not in seen]
        return seen

    def to_markdown(self) -> str:
        sets = list(self.results)
        lines = [f"| method | {' | '.join(sets)} |", "|---|" + "---|" * len(sets)]
        for m in self.methods:
            cells = [f"{self.results[s][m]:.4f}" if m in self.results[s] else "–" for s in sets]
            lines.append(f"| {m} | {' | '.join(cells)} |")
        return "\n".join(lines)

    def __str__(self) -> str:
        return f"{self.metric}\n{self.to_markdown()}"

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "results": self.results, "ingredient_scores": self.ingredient_scores,
                "members": self.members}


def evaluate_soup(
    soup: Any,
    datasets: Mapping[str, Any],
    *,
    held_out: str | None = None,
    base: str | os.PathLike[str] | None = None,
    alphas: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
    metric: Any = None,
    batch_size: int = 64,
    text_column: str | None = None,
    label_column: str | None = None,
    image_column: str | None = None,
    extra_soups: Mapping[str, str | os.PathLike[str]] | None = None,
) -> SoupReport:
    """Evaluate the soup and its baselines on each dataset.

    Methods: each ingredient, `best_individual` (best on the held-out set), `uniform_soup`, the soup itself (named by
    its method, e.g. `greedy_soup`), `ensemble` (mean logits of all ingredients), `greedy_ensemble` (members chosen on
    the held-out set), and `wise_ft@alpha` (`(1 - alpha) * base + alpha * soup`) when `base` is given.

    Args:
        soup ([`Soup`]): the soup; its ingredients must be on disk (not streamed).
        datasets (`Mapping[str, datasets.Dataset]`): evaluation sets by name, e.g. `{"test": ds, "ood_tweets": ds2}`.
        held_out (`str`, *optional*): the set used to pick the best individual and the greedy ensemble; defaults to
            the held-out scores of a greedy/learned soup, else the first set.
        base (`str`, *optional*): the pretrained (or zero-shot) checkpoint for WiSE-FT.
        alphas (`Sequence[float]`, *optional*): the WiSE-FT grid.
        metric (*optional*): defaults to the soup's metric.
        extra_soups (`Mapping[str, str]`, *optional*): more soup directories to score, by method name (e.g.
            `{"learned_soup": "path"}`).

    Returns:
        [`SoupReport`], also stored on `soup.results` for the model card.
    """
    metric = metric or soup.metric
    ingredients = soup.ingredients
    names = [i.name for i in ingredients]
    config = soup.config
    reference_dir = ingredients[0].local_dir or soup.output_dir
    from ..checkpoint.reader import SAFETENSORS_INDEX, SAFETENSORS_SINGLE
    from ..errors import EvaluationError

    for ing in ingredients:
        if not ing.local_dir or not any(os.path.exists(os.path.join(ing.local_dir, f))
                                        for f in (SAFETENSORS_SINGLE, SAFETENSORS_INDEX)):
            raise EvaluationError("its weights are not on disk (the soup was streamed), and evaluating the baselines "
                                  "needs every ingredient.", ingredient=ing.name,
                                  fix="make the soup with stream=False to evaluate it against its ingredients.")
    with contextlib.ExitStack() as stack:
        readers = [stack.enter_context(open_checkpoint(i.local_dir, ingredient=i.name)) for i in ingredients]
        soup_reader = stack.enter_context(open_checkpoint(soup.output_dir, ingredient="soup"))
        plan = build_plan([r.tensors for r in readers], [1.0] * len(readers), names=names)
        holder = ModelHolder(reference_dir, config, soup.trust_remote_code)
        soup_state = checkpoint_float_state(soup_reader)
        evaluators = {name: Evaluator(ds, reference_dir, config, metric=metric, text_column=text_column,
                                      label_column=label_column, image_column=image_column, batch_size=batch_size,
                                      name=names[0]) for name, ds in datasets.items()}
        logits: dict[str, list[torch.Tensor]] = {s: [] for s in evaluators}
        ingredient_scores: dict[str, dict[str, float]] = {s: {} for s in evaluators}
        running: dict[str, torch.Tensor] | None = None
        for i, reader in enumerate(readers):
            state = read_float_state(plan, reader, i)
            if running is None:
                running = {k: v.clone() for k, v in state.items()}
            else:
                for k, v in running.items():
                    v.add_(state[k])
            model = holder.load(state)
            for s, ev in evaluators.items():
                score, lg = ev.score(model)
                logits[s].append(lg)
                ingredient_scores[s][names[i]] = score
        if soup.scores and held_out is None:
            selection = [soup.scores[n] for n in names]
        else:
            key = held_out or next(iter(evaluators))
            selection = [ingredient_scores[key][n] for n in names]
        best = max(range(len(names)), key=lambda i: selection[i])
        sel_set = held_out or next(iter(evaluators))
        members = greedy_ensemble(logits[sel_set], [ingredient_scores[sel_set][n] for n in names],
                                  evaluators[sel_set].score_logits)
        assert running is not None
        uniform_model = holder.load_mean(running, None, len(readers))
        results: dict[str, dict[str, float]] = {s: {} for s in evaluators}
        for s, ev in evaluators.items():
            results[s]["best_individual"] = ingredient_scores[s][names[best]]
            results[s]["uniform_soup"] = ev.score(uniform_model)[0]
        soup_model = holder.load(soup_state)
        label = f"{soup.method}_soup"
        for s, ev in evaluators.items():
            if label != "uniform_soup":
                results[s][label] = ev.score(soup_model)[0]
            results[s]["ensemble"] = ev.score_logits(torch.stack(logits[s]).mean(0))
            results[s]["greedy_ensemble"] = ev.score_logits(torch.stack([logits[s][m] for m in members]).mean(0))
        for label_extra, path in (extra_soups or {}).items():
            extra_reader = stack.enter_context(open_checkpoint(path, ingredient=label_extra))
            model = holder.load(checkpoint_float_state(extra_reader))
            for s, ev in evaluators.items():
                results[s][label_extra] = ev.score(model)[0]
        if base is not None:
            base_reader = stack.enter_context(open_checkpoint(base, ingredient=str(base)))
            base_state = checkpoint_float_state(base_reader)
            for alpha in alphas:
                model = holder.load_combination([base_state, soup_state], [1 - alpha, alpha])
                for s, ev in evaluators.items():
                    results[s][f"wise_ft@{alpha:g}"] = ev.score(model)[0]
        for s in evaluators:
            for n in names:
                results[s][f"ingredient:{n}"] = ingredient_scores[s][n]
    report = SoupReport(results, evaluators[next(iter(evaluators))].metric.name, ingredient_scores,
                        {"greedy_ensemble": [names[m] for m in members],
                         f"{soup.method}_soup": [i.name for i in ingredients if (i.weight or 0) > 0]})
    soup.results = {s: {m: v for m, v in r.items() if not m.startswith("ingredient:")} for s, r in results.items()}
    return report
