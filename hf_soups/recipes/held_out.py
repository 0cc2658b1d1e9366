"""Choosing weights from held-out scores (greedy and learned soups): the glue between recipes and evaluation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from huggingface_hub.utils import tqdm

from .. import constants
from ..checkpoint.reader import CheckpointReader
from ..evaluation.candidates import ModelHolder, read_float_state
from ..evaluation.evaluator import Evaluator
from ..merge.plan import MergePlan
from ..refs import Ingredient
from .greedy import greedy_select
from .learned import learn_weights

__all__ = ["Chosen", "choose_weights"]


@dataclass
class Chosen:
    """What a held-out recipe decided."""

    plan: MergePlan
    trace: list[dict[str, Any]]
    scores: dict[str, float]
    evaluator: Evaluator
    logits: list[torch.Tensor] = field(default_factory=list)


def choose_weights(
    method: str,
    plan: MergePlan,
    readers: Sequence[CheckpointReader],
    ingredients: Sequence[Ingredient],
    config: dict[str, Any],
    eval_dataset: Any,
    *,
    metric: Any = "accuracy",
    strict: bool = False,
    progress: bool = True,
    batch_size: int = 64,
    text_column: str | None = None,
    label_column: str | None = None,
    image_column: str | None = None,
    trust_remote_code: bool = False,
    learned_steps: int = 30,
    seed: int = 0,
    device: str | None = None,
) -> Chosen:
    """Score every ingredient on `eval_dataset`, then run the greedy or learned recipe.

    Raises:
        [`LabelMismatchError`]: the dataset labels do not match the model's label map.
        [`EvaluationError`]: the dataset or metric cannot be used.
    """
    names = [i.name for i in ingredients]
    reference_dir = ingredients[0].local_dir
    assert reference_dir is not None
    evaluator = Evaluator(eval_dataset, reference_dir, config, metric=metric, text_column=text_column,
                          label_column=label_column, image_column=image_column, batch_size=batch_size,
                          name=names[0])
    holder = ModelHolder(reference_dir, config, trust_remote_code, device=device)
    total = len(readers) * (2 if method == "greedy" else 1)
    bar = tqdm(total=total, desc=f"{method} soup: evaluating", disable=not progress or constants.progress_disabled())
    scores, logits = [], []
    for i, reader in enumerate(readers):
        score, lg = evaluator.score(holder.load(read_float_state(plan, reader, i)))
        scores.append(score)
        logits.append(lg)
        bar.update()
    score_map = dict(zip(names, scores))
    if method == "greedy":
        accepted, trace = greedy_select(
            names, scores, lambda i: read_float_state(plan, readers[i], i),
            lambda running, cand, n: evaluator.score(holder.load_mean(running, cand, n))[0],
            strict=strict, progress=bar.update,
        )
        weights = [1.0 if i in accepted else 0.0 for i in range(len(readers))]
    else:
        states = [read_float_state(plan, r, i) for i, r in enumerate(readers)]
        weights, trace = learn_weights(
            holder.model, states, evaluator.batches, evaluator.references,
            lambda ws: evaluator.score(holder.load_combination(states, ws))[0], steps=learned_steps, seed=seed,
        )
    bar.close()
    return Chosen(plan.with_weights(weights), trace, score_map, evaluator, logits)
