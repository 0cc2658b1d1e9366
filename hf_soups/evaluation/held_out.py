"""The held-out evaluation a method with `Needs(held_out=True)` receives ([`HeldOut`] of the method protocol).

This glue lives in `evaluation/` because it loads models and scores them; it calls the registered method function
of `recipes/` (which never imports `evaluation/`) and names no method: what it prepares follows the method's
[`Needs`].
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from huggingface_hub.utils import tqdm

from .. import constants
from ..checkpoint.companions import copy_companion_files, lead_index
from ..checkpoint.reader import CheckpointReader
from ..errors import EvaluationError
from ..merge.plan import MergePlan
from ..recipes import EvalSpec, MethodContext, SoupMethod
from ..recipes.greedy import Trial
from ..recipes.protocol import as_result
from ..refs import Ingredient
from .candidates import ModelHolder, read_float_state
from .device import CPU_BATCH_SIZE, fits_on, resolve_eval_device
from .evaluator import Evaluator, evaluators_by_processor
from .uncertainty import paired_bootstrap, separation_warning

__all__ = ["Chosen", "HeldOutEvaluation", "choose_weights", "release_model"]


def release_model(model: Any) -> None:
    """Remove accelerate's dispatch hooks from a dispatched/offloaded `model` (they hold its offloaded weights and
    references back to the model), so that dropping the last reference frees it without waiting for the garbage
    collector."""
    if getattr(model, "hf_device_map", None) is None:
        return
    try:
        from accelerate.hooks import remove_hook_from_submodules
    except ImportError:  # pragma: no cover - accelerate is a dependency
        return
    remove_hook_from_submodules(model)


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

    @contextlib.contextmanager
    def load_plan(self, plan: MergePlan) -> Iterator[Any]:
        """Write the soup `plan` describes to a temporary checkpoint and load it through accelerate's offload; the
        model is released when the block ends (accelerate's hooks removed, `del`, `gc.collect()`), so memory does
        not grow with the number of candidates."""
        import gc
        import shutil

        from ..merge.engine import merge_to_directory
        from ..modeling import load_model

        gc.collect()  # whatever still referenced the previous candidate (its caller's frame) is gone by now
        target = os.path.join(self.workdir, "candidate")
        shutil.rmtree(target, ignore_errors=True)
        os.makedirs(target)
        merge_to_directory(plan, self.readers, target, progress=False)
        copy_companion_files(self.ingredients[0].local_dir or "", target, ingredient=self.ingredients[0].name,
                             names=("config.json",))
        model = load_model(target, trust_remote_code=self.trust_remote_code, device_map="auto",
                           max_memory=self.max_memory, offload_folder=self.offload_folder, dtype=torch.float32)
        try:
            yield model
        finally:
            release_model(model)
            del model
            gc.collect()

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
    parameters: dict[str, Any] = field(default_factory=dict)
    inputs: list[str] = field(default_factory=list)


def _learned_states(plan: MergePlan, readers: Sequence[CheckpointReader], holder: ModelHolder) -> list[dict[str, Any]]:
    """Every ingredient's floating tensors, on the evaluation device when they all fit there (the combination of
    each optimisation step is then built on the device); else on the CPU, moved tensor by tensor per step."""
    nbytes = len(readers) * sum(p.numel() * 4 for p in holder.model.parameters())
    device = holder.device if fits_on(holder.device, nbytes) else torch.device("cpu")
    return [holder.model_names(read_float_state(plan, r, i, device=device)) for i, r in enumerate(readers)]


_MIN_CANDIDATES_TO_ORDER = 3  # candidates (ingredients after the seed) before greedy orders the examples


class HeldOutEvaluation:
    """[`HeldOut`] of the method protocol: each ingredient scored once, then any plan scored on demand (in memory
    through the model skeleton, or on disk through accelerate's offload with `max_memory`); with `gradients`, the
    ingredients' fp32 states, the batches and the task's loss for an optimiser."""

    def __init__(self, *, names: Sequence[str], plan: MergePlan, readers: Sequence[CheckpointReader],
                 evaluators: Sequence[Evaluator], spec: EvalSpec, seed: int) -> None:
        self.names, self.plan, self.readers, self.spec, self.seed = list(names), plan, readers, spec, seed
        self.evaluators = evaluators
        self.evaluator = evaluators[0]  # until the scores are known; then the best individual's
        self.scores: list[float] = []
        self.problems: list[str | None] = []
        self.higher_is_better = self.evaluator.metric.higher_is_better
        self.holder: ModelHolder | None = None
        self.offload: OffloadedCandidates | None = None
        self._states: list[dict[str, Any]] | None = None
        self._ranked: list[float] = []
        self.own_predictions: list[Any] = []  # each ingredient's predictions on the set (set once they are scored)
        self._ordered = False

    def _order_candidates(self) -> None:
        """Once, before the first bounded score: the candidates' evaluator runs the examples the ingredients missed
        first ([`Evaluator.order_candidates`]), so a candidate that cannot reach the bar is stopped sooner. Only with
        at least 3 candidates: the bar is then re-scored on the new batches ([`bar_score`], one more pass), which
        fewer stopped candidates would not repay."""
        if self._ordered:
            return
        self._ordered = True
        by = self.evaluator
        if by.metric.per_example is None or len(self.own_predictions) != len(self.evaluators) \
                or sum(problem is None for problem in self.problems) < _MIN_CANDIDATES_TO_ORDER + 1:
            return
        by.order_candidates([by.metric.per_example(p, e.references) for p, e, problem
                             in zip(self.own_predictions, self.evaluators, self.problems) if problem is None])

    def bar_score(self, index: int) -> float:
        """Ingredient `index`'s score on the batches bounded candidates run on (the bar's scale): its ranking score
        when they are the evaluator's own batches, else one full pass on the candidate batches."""
        self._order_candidates()
        by = self.evaluator
        if by.candidate_batches is None:
            return self.scores[index]
        with self._model(self.ingredient_plan(index)) as model:
            return by.score_logits(by._run(model, batches=by.candidate_batches)[0])

    def ingredient_plan(self, index: int) -> MergePlan:
        """The plan of ingredient `index` alone (weight 1, the others 0)."""
        return self.plan.with_weights([float(j == index) for j in range(len(self.names))])

    def score(self, plan: MergePlan, bar: float | None = None) -> Trial:
        by = self.evaluator
        if bar is None:
            value, logits = self._score_plan(plan, by)
            return Trial(value, by.problem(logits), examples=len(by))
        self._order_candidates()
        with self._model(plan) as model:
            value, logits, examples, reach = by.score_against(model, bar, strict=self.spec.strict)
        if value is None or logits is None:
            return Trial(float(reach if reach is not None else bar), examples=examples, stopped_early=True)
        full = None if by.decides_early else (f"{by.metric.name} is not a mean of per-example values: every "
                                              "candidate is evaluated on every example")
        return Trial(value, by.problem(logits), examples=examples, full_reason=full)

    @contextlib.contextmanager
    def _model(self, plan: MergePlan) -> Iterator[Any]:
        """The soup `plan` describes as a model: computed into the skeleton, or loaded through the offload."""
        if self.offload is not None:
            with self.offload.load_plan(plan) as model:
                yield model
            return
        if self.holder is None:
            raise EvaluationError("no model to score candidates with.", fix="report this bug.")
        yield self.holder.load_plan(plan, self.readers)

    def _score_plan(self, plan: MergePlan, by: Evaluator) -> tuple[float, torch.Tensor]:
        with self._model(plan) as model:
            return by.score(model)

    @property
    def model(self) -> Any:
        return self._holder().model

    @property
    def batches(self) -> Any:
        return self.evaluator.batches

    @property
    def references(self) -> torch.Tensor:
        return self.evaluator.references

    @property
    def loss(self) -> Any:
        return self.evaluator.loss

    def states(self) -> list[dict[str, Any]]:
        if self._states is None:
            self._states = _learned_states(self.plan, self.readers, self._holder())
        return self._states

    def score_states(self, weights: Sequence[float]) -> float:
        by = self.evaluators[lead_index(weights, self._ranked)] if self._ranked else self.evaluator
        return by.score(self._holder().load_combination(self.states(), weights))[0]

    def learn(self, plan: MergePlan, readers: Sequence[CheckpointReader], groups: str) -> Any:
        """Mixing weights per ingredient and parameter group (`"layer"` or `"model"`), optimised on the held-out
        batches with the task's loss, the ingredients streamed from their files (`evaluation.learned_stream`)."""
        from .learned_stream import StreamedSoup, learn_layer_weights

        if self.holder is None:
            self._holder()
        soup = StreamedSoup(plan, readers, self.holder, groups)
        evaluator = self.evaluator
        return learn_layer_weights(soup, self.batches, self.loss, lambda model: evaluator.score(model)[0],
                                   steps=self.spec.learned_steps, seed=self.seed,
                                   higher_is_better=self.higher_is_better)

    def fisher_merge(self, plan: MergePlan, readers: Sequence[CheckpointReader], **kwargs: Any) -> Any:
        """The Fisher-weighted merge of `readers` on the held-out batches (`evaluation.fisher.fisher_merge`, with this
        evaluation's model skeleton and task): a context manager giving the merged tensors."""
        from .fisher import fisher_merge

        return fisher_merge(plan, readers, self._holder(), self.batches, self.evaluator.task_impl, **kwargs)

    def _holder(self) -> ModelHolder:
        if self.holder is None:
            raise EvaluationError("max_memory (offloaded evaluation) supports methods that only score candidate "
                                  "soups; this one needs the model in memory.",
                                  fix="drop EvalSpec(max_memory=...), or use method='greedy'.")
        return self.holder


def choose_weights(
    entry: SoupMethod,
    ctx: MethodContext,
    ingredients: Sequence[Ingredient],
    config: dict[str, Any],
    eval_dataset: Any,
    spec: EvalSpec,
    *,
    trust_remote_code: bool = False,
    progress: bool = True,
    device: str | torch.device | None = None,
) -> Chosen:
    """Score every ingredient on `eval_dataset`, then run the registered method `entry` with `ctx.held_out` set.

    Evaluations run on `device` (else `spec.device`, else [`resolve_eval_device`]'s rule: accelerate's
    `PartialState().device` under `accelerate launch` or with an accelerator, else the CPU). The model skeleton
    and each candidate (computed into it by the merge kernel) live on that device; a method's ingredient states
    (`Needs(gradients=True)`) too when they fit.

    With `max_memory` (accelerate's `{device: size}`), nothing is held in memory beyond what accelerate places
    there: each candidate soup is streamed to a temporary checkpoint on disk by the merge engine and loaded with
    `from_pretrained(device_map="auto", max_memory=..., offload_folder=...)`; a method needing gradients is refused.

    Raises:
        [`LabelMismatchError`]: the dataset labels do not match the model's label map.
        [`EvaluationError`]: the dataset, metric, device or dtype cannot be used.
    """
    from .tasks import settle_spec

    spec = settle_spec(spec, config)  # the task's default metric and threshold, recorded in the recipe
    method, plan, readers = entry.name, ctx.plan, ctx.readers
    names = [i.name for i in ingredients]
    reference_dir = ingredients[0].local_dir
    if reference_dir is None:
        raise EvaluationError("the first ingredient's files are not on disk; it cannot be evaluated.",
                              ingredient=names[0], fix="report this bug.")
    if spec.max_memory is not None and entry.needs.gradients:
        raise EvaluationError(f"max_memory (offloaded evaluation) does not support method={method!r}: it needs "
                              "gradients through the model in memory.",
                              fix="drop EvalSpec(max_memory=...), or use a method that only scores candidates "
                                  "(method='greedy').")
    eval_device = resolve_eval_device(device if device is not None else spec.device)
    # a method taking gradients optimises on these batches: its default batch size does not depend on the device
    batch_size = spec.batch_size if spec.batch_size is not None or not entry.needs.gradients else CPU_BATCH_SIZE
    # each ingredient is scored through its own image processor, candidate soups through their lead ingredient's
    evaluators = evaluators_by_processor(eval_dataset, [i.local_dir or reference_dir for i in ingredients], config,
                                         names=names, metric=spec.metric, text_column=spec.text_column,
                                         label_column=spec.label_column, image_column=spec.image_column,
                                         batch_size=batch_size, device=eval_device, dtype=spec.dtype,
                                         max_samples=spec.max_samples, threshold=spec.threshold)
    k = len(names)
    held = HeldOutEvaluation(names=names, plan=plan, readers=readers, evaluators=evaluators, spec=spec,
                             seed=ctx.seed)
    bar = tqdm(total=k * (1 + entry.progress_steps), desc=f"{method} soup: evaluating",
               disable=not progress or constants.progress_disabled())
    own_logits: list[torch.Tensor] = []
    predictions: dict[str, torch.Tensor] = {}

    def individual(i: int, result: tuple[float, torch.Tensor]) -> None:
        held.scores.append(result[0])
        own_logits.append(result[1])
        predictions[names[i]] = evaluators[i].predictions(result[1])
        bar.update()

    with contextlib.ExitStack() as stack:
        stack.callback(bar.close)
        if spec.max_memory is not None:  # big-model path: candidates live on disk, accelerate offloads evaluation
            held.offload = stack.enter_context(OffloadedCandidates(plan, readers, ingredients, held.evaluator,
                                                                   spec.max_memory, spec.offload_folder,
                                                                   trust_remote_code))
        else:
            # the model skeleton lives on the evaluation device; each candidate is computed into it by the merge
            # kernel, tensor by tensor, so it is bit for bit the soup the engine would write for these weights
            held.holder = ModelHolder(reference_dir, config, trust_remote_code, device=eval_device)
        for i in range(k):  # streamed from the files: the states (K fp32 models) load only if a method asks
            individual(i, held._score_plan(held.ingredient_plan(i), evaluators[i]))
        score_map = dict(zip(names, held.scores))
        metric = held.evaluator.metric
        held._ranked = [metric.key(s) for s in held.scores]  # larger is better, whatever the metric's direction
        held.evaluator = evaluators[lead_index([1.0] * k, held._ranked)]
        best = max(names, key=lambda n: metric.key(score_map[n]))
        intervals, _ = paired_bootstrap({best: predictions[best]}, held.evaluator.references, held.evaluator.metric)
        warning = separation_warning("the held-out set", len(held.evaluator), score_map, intervals.get(best),
                                     unit=held.evaluator.task_impl.unit)
        warnings = [warning] if warning else []
        # judged after every ingredient was scored: a collapse counts once some model's logits varied
        held.problems = [evaluators[i].problem(own_logits[i]) for i in range(k)]
        held.own_predictions = [predictions[n] for n in names]
        result = as_result(entry.fn(dataclasses.replace(ctx, held_out=held, progress=bar.update)), method)
    return Chosen(result.plan, result.trace, {**score_map, **result.scores}, held.evaluator,
                  warnings + result.warnings, spec, result.parameters, result.inputs)
