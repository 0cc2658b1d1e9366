"""The method protocol: what a soup method declares, receives and returns.

A method is one file in `hf_soups/recipes/` holding one function, registered once with [`register_method`]. It
declares what it needs ([`Needs`]); `soup_from_hub` gathers exactly that into a [`MethodContext`], calls the
function, and soups, records and replays the [`MethodResult`] it returns. Nothing else in hf_soups names a method:
the engine, the held-out evaluation, the baselines, the card and the CLI read the registry.

- `Needs.user_weights`: the user gives `weights=` (`ctx.weights`, one per ingredient, normalised).
- `Needs.held_out`: held-out data (`eval_dataset=`): `ctx.held_out` scores each ingredient and any plan
  ([`HeldOut`]: `.scores`, `.problems`, `.score(plan)`, the metric's direction, the `EvalSpec`).
- `Needs.gradients` (implies `held_out`): the model skeleton, the ingredients' fp32 states, the batches and the task's
  loss (`ctx.held_out.model`, `.states()`, `.batches`, `.loss`, `.score_states(weights)`).
- `Needs.base`: the base (pretrained) checkpoint as an extra input: `ctx.base` (a reader) and `ctx.plan.base`;
  per-tensor weights then carry one more weight, the base's, last (it may be negative).
- `Needs.statistics`: a streaming pass of per-tensor norms and pairwise dot products of the ingredients and the
  base (`ctx.statistics`, from `hf_soups.merge.stats`).

A method returns a [`MethodResult`] (or just a [`MergePlan`]): the plan (plan-wide weights, per-tensor weights
`plan.with_tensor_weights({name: [w_0, ..., w_K-1(, w_base)]})`, copies `plan.with_sources({name: i})`), and what
the recipe and card record: the trace, scores, warnings and the method's parameters. The recipe keeps the plan's
per-tensor part, so `replay_recipe` re-creates the soup bit for bit without re-running the method.

The smallest complete method (one file, e.g. `hf_soups/recipes/head_from_first.py`, imported once)::

    from hf_soups.recipes import MethodContext, MethodResult, Needs, register_method

    @register_method("head_from_first", paper="https://arxiv.org/abs/2203.05482", needs=Needs(),
                     description="The first ingredient's classifier, the mean of all ingredients elsewhere.")
    def head_from_first(ctx: MethodContext) -> MethodResult:
        head = [tp.name for tp in ctx.plan.tensors if tp.name.startswith("classifier.")]
        plan = ctx.plan.with_sources({name: 0 for name in head})  # elsewhere: ctx.plan's weights, 1/K each
        return MethodResult(plan, parameters={"head": head, "source": ctx.names[0]})

    # soup, evaluate, record and replay with no other edit:
    #   soup = soup_from_hub(refs, method="head_from_first", output_dir="soup")
    #   soup.evaluate(eval_dataset); replay_recipe(soup.recipe, "again")

A data-driven method declares `needs=Needs(held_out=True)` and calls `ctx.held_out.score(plan)` for each
candidate plan it considers (a [`Trial`] with the score and, when the outputs are degenerate, why); `ctx.progress()`
advances the progress bar (declare the steps with `progress_steps=` per ingredient at registration).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # torch is imported where a soup is made, not by the registry (CLI --help)
    import torch

    from ..checkpoint.reader import CheckpointReader
    from ..merge.plan import MergePlan

__all__ = ["Trial", "Needs", "HeldOut", "MethodContext", "MethodResult", "as_result", "statistics_pass"]


@dataclass(frozen=True)
class Trial:
    """The outcome of scoring one trial soup: its held-out score and, when its outputs are degenerate (non-finite,
    absurdly large, or the same for every example), why; such a trial is rejected whatever its score.

    Attributes:
        score (`float`): the held-out score; when `stopped_early`, the best score the soup could still have reached
            (a bound that fails the bar, not the score).
        problem (`str`, *optional*): why the outputs are degenerate.
        examples (`int`, *optional*): the examples evaluated (`None`: not reported).
        stopped_early (`bool`): the evaluation stopped once the soup could no longer reach the bar it was given.
        full_reason (`str`, *optional*): why a soup given a bar was evaluated in full whatever its score (the
            metric is not a mean of per-example values, e.g. F1 or Pearson's r).
    """

    score: float
    problem: str | None = None
    examples: int | None = None
    stopped_early: bool = False
    full_reason: str | None = None


@dataclass(frozen=True)
class Needs:
    """What a method needs; `soup_from_hub` provides exactly that in the [`MethodContext`] (and refuses a call that
    cannot, before any weight is downloaded).

    Attributes:
        user_weights (`bool`): the user gives one weight per ingredient (`weights=`).
        held_out (`bool`): held-out data, to score ingredients and candidate plans (`ctx.held_out`).
        base (`bool`): the base checkpoint as an extra plan input (`ctx.base`).
        statistics (`bool`): the streaming per-tensor norms and pairwise dot products (`ctx.statistics`).
        gradients (`bool`): the model skeleton, the ingredients' states, batches and the task's loss (implies
            `held_out`).
    """

    user_weights: bool = False
    held_out: bool = False
    base: bool = False
    statistics: bool = False
    gradients: bool = False

    def __post_init__(self) -> None:
        if self.gradients and not self.held_out:
            object.__setattr__(self, "held_out", True)


class HeldOut(Protocol):
    """The held-out evaluation a method with `Needs(held_out=True)` receives (implemented by
    `hf_soups.evaluation.held_out`). Every candidate is computed by the merge kernel, bit for bit the soup the engine
    would write for that plan."""

    names: Sequence[str]
    scores: Sequence[float]  # each ingredient's own score, in input order
    problems: Sequence[str | None]  # why each ingredient's own outputs are degenerate (None: they are not)
    higher_is_better: bool
    spec: Any  # the `EvalSpec` (typed loosely: recipe.py validates methods through this registry)
    seed: int

    def score(self, plan: MergePlan, bar: float | None = None) -> Trial:
        """The held-out score of the soup `plan` describes (and why its outputs are degenerate, if they are). With
        `bar`, the evaluation may stop as soon as the soup is certain to fail it (`spec.strict`'s comparison in the
        metric's direction): the trial is then `stopped_early` (see `Evaluator.score_against`)."""

    def bar_score(self, index: int) -> float:
        """Ingredient `index`'s held-out score exactly as bounded trials (`score(plan, bar=...)`) are scored: the
        scale a bar is set on (`scores[index]`, unless candidates run on their own batching, which can move a score in
        its last bits)."""

    # with Needs(gradients=True) only:
    model: Any
    batches: Sequence[tuple[torch.Tensor, Mapping[str, torch.Tensor]]]
    references: torch.Tensor
    loss: Callable[[Any, torch.Tensor], torch.Tensor]

    def states(self) -> list[dict[str, torch.Tensor]]:
        """Each ingredient's floating tensors, fp32, keyed by the model's names."""

    def score_states(self, weights: Sequence[float]) -> float:
        """The held-out score of `sum_k w_k * states()[k]`."""

    def fisher_merge(self, plan: MergePlan, readers: Sequence[CheckpointReader], **kwargs: Any) -> Any:
        """The Fisher-weighted merge of `readers` on the held-out batches (diagonal expected Fisher of each, one at a
        time into running numerator and denominator buffers): a context manager giving the merged tensors
        (`.tensor(name)`, `.uniform`, `.examples`, `.zero`)."""

    def learn(self, plan: MergePlan, readers: Sequence[CheckpointReader], groups: str) -> Any:
        """Softmax mixing weights per ingredient and parameter group (`"layer"`: embeddings, each block, the head;
        `"model"`: one per ingredient), optimised with the task's loss on the held-out batches while the ingredients
        stream from their files (memory flat in K). Returns the learned weights: `.tensor_groups`, `.of(name)` (one
        weight per ingredient), `.trace`, `.to_dict()` (what the recipe records)."""


@dataclass
class MethodContext:
    """What a method receives.

    Attributes:
        names (`tuple[str, ...]`): the ingredients' names, in input order.
        plan ([`MergePlan`]): every output tensor, plan-wide weights `1/K` each, label alignment, dtype and rules
            settled; with the base as input `K` when the method needs it. Return it changed (`with_weights`,
            `with_tensor_weights`, `with_sources`).
        readers (`Sequence[CheckpointReader]`): one per plan input (the ingredients, then the base).
        weights (`tuple[float, ...]`, *optional*): the user's weights, normalised (`Needs.user_weights`).
        base (`CheckpointReader`, *optional*): the base checkpoint (`Needs.base`).
        held_out ([`HeldOut`], *optional*): the held-out evaluation (`Needs.held_out`).
        statistics (*optional*): the streaming statistics pass (`Needs.statistics`).
        seed (`int`): the random seed a method must use (recorded in the recipe).
        progress (`Callable[[], None]`): advance the progress bar by one step.
        workdir (`str`, *optional*): a private temporary directory, removed once the soup is written, where a method
            may write checkpoints of precomputed tensors (see `MethodResult.inputs`).
    """

    names: tuple[str, ...]
    plan: MergePlan
    readers: Sequence[CheckpointReader]
    weights: tuple[float, ...] | None = None
    base: CheckpointReader | None = None
    held_out: HeldOut | None = None
    statistics: Any = None
    seed: int = 0
    progress: Callable[[], None] = field(default=lambda: None)
    workdir: str | None = None

    @property
    def k(self) -> int:
        """The number of ingredients (the base not counted)."""
        return len(self.names)

    def read(self, index: int, name: str) -> torch.Tensor:
        """Input `index`'s tensor `name` (an ingredient, or the base at index `k`), its classifier rows aligned to
        the first ingredient's labels as the plan says, in its stored dtype."""
        tensor = self.readers[index].read(name)
        perm = self.plan.row_order(self.plan.tensor(name), index)
        return tensor[list(perm)] if perm is not None else tensor


@dataclass
class MethodResult:
    """What a method returns.

    Attributes:
        plan ([`MergePlan`]): what the engine computes.
        trace (`list[dict]`): the steps taken (greedy: one entry per candidate), shown in the card.
        scores (`dict[str, float]`): each ingredient's held-out score, when the method scored them.
        warnings (`list[str]`): shown in the card and logged.
        parameters (`dict[str, Any]`): the method's own parameters (JSON-safe: numbers, strings, lists, mappings),
            recorded in the recipe and the card.
        inputs (`list[str]`): checkpoint directories the method wrote under `ctx.workdir` (e.g. a `model.safetensors`
            of tensors it computed element by element), read by the engine as the plan's private inputs
            `ctx.plan.num_inputs + j` (the plan says `.with_private_inputs(len(inputs))` and copies from them with
            `with_sources`). Such a soup depends on more than the recorded weights: replay re-runs the method on
            the recorded held-out data (the recipe's `parameters["replay"] == "rerun"`).
    """

    plan: MergePlan
    trace: list[dict[str, Any]] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)
    inputs: list[str] = field(default_factory=list)


def as_result(value: Any, method: str) -> MethodResult:
    """A method's return value as a [`MethodResult`] (a bare [`MergePlan`] is accepted).

    Raises:
        [`RecipeError`]: the method returned something else.
    """
    from ..errors import RecipeError
    from ..merge.plan import MergePlan

    if isinstance(value, MergePlan):
        return MethodResult(value)
    if isinstance(value, MethodResult) and isinstance(value.plan, MergePlan):
        if len(value.inputs) != value.plan.private:
            raise RecipeError(f"method {method!r} returned {len(value.inputs)} private inputs for a plan with "
                              f"{value.plan.private}.", fix="return plan.with_private_inputs(len(inputs)).")
        try:  # recorded in the recipe's YAML: JSON-like values only (tuples become lists)
            parameters = json.loads(json.dumps(value.parameters, allow_nan=False))
        except (TypeError, ValueError) as e:
            raise RecipeError(f"method {method!r} returned parameters the recipe cannot record: {e}.",
                              fix="return numbers, strings, lists and mappings with string keys.") from None
        return dataclasses.replace(value, parameters=parameters)
    raise RecipeError(f"method {method!r} returned {type(value).__name__}, not a MethodResult or MergePlan.",
                      fix="return MethodResult(plan, ...) from the registered function.")


def statistics_pass(plan: MergePlan, readers: Sequence[CheckpointReader]) -> Any:
    """The streaming statistics a method with `Needs(statistics=True)` receives as `ctx.statistics`: one pass over
    the chunks of every input (`hf_soups.merge.stats.tensor_statistics(plan, readers)`: per tensor, the norms and
    pairwise dot products of the ingredients and the base).

    Raises:
        [`SoupError`]: this version has no statistics pass yet.
    """
    try:
        from ..merge.stats import tensor_statistics  # type: ignore[import-not-found]
    except ImportError:
        from ..errors import SoupError

        raise SoupError("this version of hf_soups has no streaming statistics pass (hf_soups.merge.stats).",
                        fix="upgrade hf_soups, or register the method without Needs(statistics=True).") from None
    return tensor_statistics(plan, readers)
