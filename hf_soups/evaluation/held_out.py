"""Choosing weights from held-out scores (greedy and learned soups): evaluation drives the recipes' pure selection.

This glue lives in `evaluation/` because it loads models and scores them; it calls the registered method functions
of `recipes/` (which never import `evaluation/`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from huggingface_hub.utils import tqdm

from .. import constants
from ..checkpoint.companions import copy_companion_files, lead_index
from ..checkpoint.reader import CheckpointReader
from ..errors import EvaluationError
from ..merge.plan import MergePlan
from ..recipes import EvalSpec, get_method
from ..recipes.greedy import Trial, degenerate_steps
from ..refs import Ingredient
from .candidates import ModelHolder, read_float_state
from .device import CPU_BATCH_SIZE, fits_on, resolve_eval_device
from .evaluator import Evaluator, evaluators_by_processor
from .uncertainty import paired_bootstrap, separation_warning

__all__ = ["Chosen", "choose_weights"]


class OffloadedCandidates:
    """Greedy candidates for models larger than memory: streamed to disk, evaluated through accelerate's offload."""

    def __init__(self, plan: MergePlan, readers: Sequence[CheckpointReader], ingredients: Sequence[Ingredient],
                 evaluator: Evaluator, max_memory: dict[Any, Any], offload_folder: str | None,
                 trust_remote_code: bool) -> None:
        import tempfile

        self.plan, self.readers, self.ingredients, self.evaluator = plan, readers, ingredients, evaluator
        self.max_memory, self.trust_remote_code = max_memory, trust_remote_code
        self.workdir = tempfile.mkdtemp(prefix="hf-soups-greedy-")
        self.offload_folder = offload_folder or os.path.join(self.workdir, "offload")

    def _evaluate_dir(self, directory: str) -> tuple[float, torch.Tensor]:
        from ..modeling import load_model

        model = load_model(directory, trust_remote_code=self.trust_remote_code, device_map="auto",
                           max_memory=self.max_memory, offload_folder=self.offload_folder, dtype=torch.float32)
        try:
            return self.evaluator.score(model)
        finally:
            del model

    def score_ingredient(self, i: int) -> tuple[float, torch.Tensor]:
        return self._score_members({i})

    def score_with(self, members: list[int], candidate: int) -> Trial:
        score, logits = self._score_members(set(members) | {candidate})
        return Trial(score, self.evaluator.problem(logits))

    def _score_members(self, chosen: set[int]) -> tuple[float, torch.Tensor]:
        import shutil

        from ..merge.engine import merge_to_directory

        weights = [1.0 if i in chosen else 0.0 for i in range(len(self.readers))]
        target = os.path.join(self.workdir, "candidate")
        shutil.rmtree(target, ignore_errors=True)
        os.makedirs(target)
        merge_to_directory(self.plan.with_weights(weights), self.readers, target, progress=False)
        copy_companion_files(self.ingredients[0].local_dir or "", target, ingredient=self.ingredients[0].name,
                             names=("config.json",))
        return self._evaluate_dir(target)

    def __enter__(self) -> OffloadedCandidates:
        return self

    def __exit__(self, *exc: object) -> None:
        import shutil

        shutil.rmtree(self.workdir, ignore_errors=True)


@dataclass
class Chosen:
    """What a held-out recipe decided: the plan with the chosen weights, the trace, each ingredient's score, the
    evaluator that produced them, and warnings about the held-out set (e.g. too small to separate the candidates)."""

    plan: MergePlan
    trace: list[dict[str, Any]]
    scores: dict[str, float]
    evaluator: Evaluator
    warnings: list[str] = field(default_factory=list)
    spec: EvalSpec | None = None


def _learned_states(plan: MergePlan, readers: Sequence[CheckpointReader], holder: ModelHolder) -> list[dict[str, Any]]:
    """Every ingredient's floating tensors, on the evaluation device when they all fit there (the combination of
    each optimisation step is then built on the device); else on the CPU, moved tensor by tensor per step."""
    nbytes = len(readers) * sum(p.numel() * 4 for p in holder.model.parameters())
    device = holder.device if fits_on(holder.device, nbytes) else torch.device("cpu")
    return [holder.model_names(read_float_state(plan, r, i, device=device)) for i, r in enumerate(readers)]


def choose_weights(
    method: str,
    plan: MergePlan,
    readers: Sequence[CheckpointReader],
    ingredients: Sequence[Ingredient],
    config: dict[str, Any],
    eval_dataset: Any,
    spec: EvalSpec,
    *,
    trust_remote_code: bool = False,
    progress: bool = True,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> Chosen:
    """Score every ingredient on `eval_dataset`, then run the greedy or learned recipe.

    Evaluations run on `device` (else `spec.device`, else [`resolve_eval_device`]'s rule: accelerate's
    `PartialState().device` under `accelerate launch` or with an accelerator, else the CPU). The model skeleton
    and each candidate (computed into it by the merge kernel) live on that device; the learned soup's ingredients
    too when they fit.

    With `max_memory` (accelerate's `{device: size}`), nothing is held in memory beyond what accelerate places
    there: each candidate soup is streamed to a temporary checkpoint on disk by the merge engine and loaded with
    `from_pretrained(device_map="auto", max_memory=..., offload_folder=...)`.

    Raises:
        [`LabelMismatchError`]: the dataset labels do not match the model's label map.
        [`EvaluationError`]: the dataset, metric, device or dtype cannot be used.
    """
    from .tasks import settle_spec

    spec = settle_spec(spec, config)  # the task's default metric and threshold, recorded in the recipe
    names = [i.name for i in ingredients]
    reference_dir = ingredients[0].local_dir
    if reference_dir is None:
        raise EvaluationError("the first ingredient's files are not on disk; it cannot be evaluated.",
                              ingredient=names[0], fix="report this bug.")
    select = get_method(method).fn
    eval_device = resolve_eval_device(device if device is not None else spec.device)
    # a learned soup optimises on these batches: its default batch size does not depend on the device
    batch_size = spec.batch_size if spec.batch_size is not None or method != "learned" else CPU_BATCH_SIZE
    # each ingredient is scored through its own image processor, candidate soups through their lead ingredient's
    evaluators = evaluators_by_processor(eval_dataset, [i.local_dir or reference_dir for i in ingredients], config,
                                         names=names, metric=spec.metric, text_column=spec.text_column,
                                         label_column=spec.label_column, image_column=spec.image_column,
                                         batch_size=batch_size, device=eval_device, dtype=spec.dtype,
                                         max_samples=spec.max_samples, threshold=spec.threshold)
    evaluator = evaluators[0]  # until the scores are known; then the best individual's (a greedy soup's first member)
    total = len(readers) * (2 if method == "greedy" else 1)
    bar = tqdm(total=total, desc=f"{method} soup: evaluating", disable=not progress or constants.progress_disabled())
    scores: list[float] = []
    own_logits: list[torch.Tensor] = []
    predictions: dict[str, torch.Tensor] = {}

    def onehot(members: Sequence[int]) -> list[float]:
        return [1.0 if i in members else 0.0 for i in range(len(readers))]

    def individual(i: int, result: tuple[float, torch.Tensor]) -> None:
        scores.append(result[0])
        own_logits.append(result[1])
        predictions[names[i]] = evaluators[i].predictions(result[1])
        bar.update()

    with contextlib.ExitStack() as stack:
        stack.callback(bar.close)
        if spec.max_memory is not None:  # big-model path: candidates live on disk, accelerate offloads evaluation
            if method != "greedy":
                raise EvaluationError("max_memory (offloaded evaluation) supports method='greedy' only.",
                                      fix="drop EvalSpec(max_memory=...), or use method='greedy'.")
            offload = stack.enter_context(OffloadedCandidates(plan, readers, ingredients, evaluator, spec.max_memory,
                                                              spec.offload_folder, trust_remote_code))
            for i in range(len(readers)):
                offload.evaluator = evaluators[i]
                individual(i, offload.score_ingredient(i))
            score_with = offload.score_with
        else:
            # the model skeleton lives on the evaluation device; each candidate is computed into it by the merge
            # kernel, tensor by tensor, so it is bit for bit the soup the engine would write for these weights
            holder = ModelHolder(reference_dir, config, trust_remote_code, device=eval_device)

            def score(weights: Sequence[float], by: Evaluator) -> tuple[float, torch.Tensor]:
                return by.score(holder.load_plan(plan.with_weights(weights), readers))

            if method == "greedy":
                for i in range(len(readers)):
                    individual(i, score(onehot([i]), evaluators[i]))

                def score_with(members: list[int], candidate: int) -> Trial:
                    value, logits = score(onehot([*members, candidate]), evaluator)
                    return Trial(value, evaluator.problem(logits))
            else:
                states = _learned_states(plan, readers, holder)
                for i in range(len(readers)):
                    individual(i, evaluators[i].score(holder.load(states[i])))
        score_map = dict(zip(names, scores))
        metric = evaluator.metric
        ranked = [metric.key(s) for s in scores]  # larger is better, whatever the metric's direction
        evaluator = evaluators[lead_index([1.0] * len(scores), ranked)]
        if spec.max_memory is not None:
            offload.evaluator = evaluator
        best = max(names, key=lambda n: metric.key(score_map[n]))
        intervals, _ = paired_bootstrap({best: predictions[best]}, evaluator.references, evaluator.metric)
        warning = separation_warning("the held-out set", len(evaluator), score_map, intervals.get(best),
                                     unit=evaluator.task_impl.unit)
        warnings = [warning] if warning else []
        if method == "greedy":
            # judged after every ingredient was scored: a collapse counts once some model's logits varied
            problems = [evaluators[i].problem(own_logits[i]) for i in range(len(readers))]
            accepted, trace = select(names, scores, score_with, strict=spec.strict, progress=bar.update,
                                     problems=problems, higher_is_better=metric.higher_is_better)
            weights = onehot(accepted)
            warnings += degenerate_steps(trace)
        else:
            weights, trace = select(
                holder.model, states, evaluator.batches, evaluator.references,
                lambda ws: evaluators[lead_index(ws, ranked)].score(holder.load_combination(states, ws))[0],
                steps=spec.learned_steps, seed=seed, loss=evaluator.loss, higher_is_better=metric.higher_is_better,
            )
    return Chosen(plan.with_weights(weights), trace, score_map, evaluator, warnings, spec)
