"""The task protocol: what a held-out evaluation needs to know about one kind of model head.

A task is one file in `hf_soups/evaluation/tasks/` holding a [`Task`] subclass registered with [`register_task`]. It
decides which configs it serves, the columns it reads and how their values are validated, the preprocessing into
`(row indices, model inputs)` batches, how model outputs become per-unit predictions, its metrics (the default one
and those reported beside it, each with its direction), the loss of learned soups, the unit the bootstrap resamples
and the card's pipeline tag. [`task_for`] picks the task of a config; the [`Evaluator`] only talks to the protocol.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ...errors import EvaluationError, LabelMismatchError
from ..data import _shown, column_values, untransformed
from ..metrics import Metric

__all__ = ["Columns", "Prepared", "Task", "register_task", "task_for", "TASKS", "supported_architectures",
           "check_eval_data", "head_for", "usage_code"]


@dataclass(frozen=True)
class Columns:
    """The columns a user asked for (`None`: the task's defaults).

    Attributes:
        text (`str` or `tuple[str, ...]`, *optional*): the text column, or two for sentence pairs and QA
            (`("question", "context")`); the token column of token classification.
        label (`str`, *optional*): the label column (QA: the answers column).
        image (`str`, *optional*): the image column.
    """

    text: str | tuple[str, ...] | None = None
    label: str | None = None
    image: str | None = None

    @staticmethod
    def of(text: Any = None, label: str | None = None, image: str | None = None) -> Columns:
        """`Columns` from the user's `text_column` (a string, or a list/tuple of one or two)."""
        if isinstance(text, (list, tuple)):
            text = text[0] if len(text) == 1 else tuple(text)
        return Columns(text, label, image)


@dataclass
class Prepared:
    """A task's preprocessed evaluation set.

    Attributes:
        batches (`Sequence`): `(row indices, model inputs)` batches; the rows index the output tensor.
        rows (`int`): rows of the output tensor (examples; QA: features of the long-context stride).
        shape (`tuple[int, ...]`): each row's output shape (`(num_labels,)`; tokens: `(max_tokens, num_labels)`).
        targets (*any*): per-row training targets of the loss (learned soups).
        extra (*any*): what [`Task.predictions`] needs besides the outputs (word ids, offsets, contexts).
        reorder (`Callable[[Sequence[int]], Sequence]`, *optional*): the same rows batched in another order: given
            one priority per row, batches of the rows sorted by priority (lowest first; ties as in `batches`), or
            `None` when they cannot be rebuilt. Set by tasks whose rows are examples (greedy's early decisions
            evaluate the examples most likely to fail first).
    """

    batches: Sequence[tuple[torch.Tensor, dict[str, torch.Tensor]]]
    rows: int
    shape: tuple[int, ...]
    targets: Any = None
    extra: Any = None
    reorder: Callable[[Sequence[int]], Sequence[tuple[torch.Tensor, dict[str, torch.Tensor]]]] | None = None


class Task:
    """One kind of model head evaluated on held-out data. Subclasses set the class attributes and override the hooks.

    Attributes:
        name (`str`): the short name (`"text"`, `"regression"`, `"token"`, ...), as [`task_of`] returns it.
        title (`str`): what errors and docs call it.
        architectures (`tuple[str, ...]`): `config.architectures` suffixes it serves.
        pipeline_tag (`str`): the Hub's pipeline tag for the card.
        unit (`str`): what one reference is, and what the bootstrap resamples (`"example"`, `"sentence"`, ...).
        loss_name (`str`): the loss of learned soups, for docs.
        auto_class (`str`): the transformers Auto class of the head, for the card's "How to use".
        pipeline_class (`str`): the transformers pipeline class serving `pipeline_tag` (the snippet names the
            pipeline only where the installed transformers has it).
        evaluates (`bool`): `False` for a head the card knows but held-out evaluation does not (causal LM, ...).
        processor_per_model (`bool`): each model preprocesses with its own processor (images), so models whose
            processors differ get their own evaluator.
    """

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    architectures: ClassVar[tuple[str, ...]] = ()
    pipeline_tag: ClassVar[str] = ""
    unit: ClassVar[str] = "example"
    loss_name: ClassVar[str] = "cross-entropy"
    columns_help: ClassVar[str] = ""
    auto_class: ClassVar[str] = ""
    pipeline_class: ClassVar[str] = ""
    evaluates: ClassVar[bool] = True
    processor_per_model: ClassVar[bool] = False

    def __init__(self, config: Mapping[str, Any], *, threshold: float | None = None) -> None:
        self.config = config
        self.threshold = threshold

    @classmethod
    def serves(cls, config: Mapping[str, Any]) -> bool:
        """Whether this task evaluates a model of `config` (by architecture suffix; subclasses add `problem_type`)."""
        return any(isinstance(a, str) and a.endswith(cls.architectures) for a in config.get("architectures") or [])

    # -- data ---------------------------------------------------------------------------------------------------
    def find_columns(self, columns: Sequence[str], asked: Columns) -> dict[str, Any]:
        """The columns this task reads, `{"label": ..., "text": ...}`.

        Raises:
            [`EvaluationError`]: a column is missing or the choice is ambiguous.
        """
        raise NotImplementedError

    def check_columns(self, columns: Sequence[str], asked: Columns) -> dict[str, Any]:
        """The columns as checked before any weight is read ([`check_eval_data`]); [`find_columns`] by default."""
        return self.find_columns(columns, asked)

    def references(self, raw: Any, found: Mapping[str, Any], name: str) -> Any:
        """The validated references, one per unit (a tensor or a numpy array).

        Raises:
            [`EvaluationError`] / [`LabelMismatchError`]: a value is not a label of this task (row, column, value and
                the expected form are named).
        """
        raise NotImplementedError

    def prepare(self, dataset: Any, raw: Any, reference_dir: str, found: Mapping[str, Any], references: Any, *,
                batch_size: int, max_length: int) -> Prepared:
        """Preprocess the evaluation set into [`Prepared`] batches."""
        raise NotImplementedError

    # -- outputs ------------------------------------------------------------------------------------------------
    def output(self, model_output: Any) -> torch.Tensor:
        """The tensor of one batch's model output that is cached and averaged (logits by default)."""
        return model_output.logits.float()

    def predictions(self, logits: torch.Tensor, prepared: Prepared) -> Any:
        """Per-unit predictions, indexable by a numpy index array (the bootstrap resamples units)."""
        return logits.argmax(-1)

    def loss(self, output: torch.Tensor, idx: torch.Tensor, prepared: Prepared) -> torch.Tensor:
        """The learned soup's loss on one batch: `output` of the rows `idx` (on the model's device)."""
        targets = prepared.targets[idx].to(output.device)
        return torch.nn.functional.cross_entropy(output, targets)

    # -- metrics ------------------------------------------------------------------------------------------------
    def metrics(self) -> dict[str, Metric]:
        """The task's native metrics by name, the default first; `"accuracy"` (the library default) maps to the
        first when the task has no accuracy of its own."""
        raise NotImplementedError

    def evaluate_inputs(self, predictions: Any, references: Any) -> dict[str, Any]:
        """Keyword arguments of an `evaluate` module's `compute` for these predictions (label ids by default)."""
        return {"predictions": [int(p) for p in predictions], "references": [int(r) for r in references]}

    @property
    def default_metric(self) -> str:
        return next(iter(self.metrics()))

    # -- the card -----------------------------------------------------------------------------------------------
    @classmethod
    def usage(cls, config: Mapping[str, Any], model_path: str) -> list[str]:
        """The Python lines of the card's "How to use" for a model of `config` loaded from `model_path`: the class
        named in `config.architectures` (the Auto class with `trust_remote_code` for custom code) and the pipeline
        of `pipeline_tag` where the installed transformers has it. See [`usage_code`]."""
        return usage_code(config, model_path, cls)


#: Registered tasks, in the order [`task_for`] tries them (problem_type-specific ones before the generic head).
TASKS: list[type[Task]] = []


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: make a [`Task`] known to [`task_for`]; tasks registered earlier are tried first."""
    TASKS.append(cls)
    return cls


def supported_architectures() -> str:
    """The heads and problem types held-out evaluation supports, for error messages."""
    return "; ".join(f"{t.title} (*{'/*'.join(t.architectures)})" for t in TASKS if t.evaluates)


def head_for(config: Mapping[str, Any]) -> type[Task] | None:
    """The registered [`Task`] class describing the head of `config` for the card (pipeline tag, "How to use"),
    including heads held-out evaluation does not score: the first architecture with a known suffix decides, and among
    the tasks of that suffix the one serving `config` (e.g. its `problem_type`) wins, else the first registered.
    `None` for an unknown head. This registry is the one architecture -> task table of the package."""
    for arch in config.get("architectures") or []:
        if not isinstance(arch, str):
            continue
        matching = [cls for cls in TASKS if cls.architectures and arch.endswith(cls.architectures)]
        if matching:
            return next((cls for cls in matching if cls.serves(config)), matching[0])
    return None


@functools.lru_cache(maxsize=None)
def has_transformers_class(name: str) -> bool:
    """Whether the installed transformers exports `name`, without importing it (transformers 5 dropped some
    pipelines, e.g. `question-answering`, that the Hub still uses as pipeline tags)."""
    try:
        import transformers
    except ImportError:  # pragma: no cover - transformers is a dependency
        return False
    exported = getattr(transformers, "_class_to_module", None)  # the lazy module's table: no import of pipelines
    return name in exported if isinstance(exported, dict) else name in dir(transformers)


def usage_code(config: Mapping[str, Any], model_path: str, head: type[Task] | None) -> list[str]:
    """The card's "How to use" Python lines for a model of `config` with the head `head` (`None`: unknown).

    Args:
        config (`Mapping`): the soup's `config.json` (a config's text never becomes code: only an identifier is
            named).
        model_path (`str`): the repo id (or local directory) the snippet loads.
        head (`type[Task]`, *optional*): the head from [`head_for`].

    Returns:
        `list[str]`: the lines, without the fence.
    """
    arch = next(iter(config.get("architectures") or []), None)
    if not (isinstance(arch, str) and arch.isidentifier()):
        arch = None
    auto_map = config.get("auto_map") or {}
    task = head.pipeline_tag if head and has_transformers_class(head.pipeline_class) else None
    path = json.dumps(str(model_path))  # a Python string literal on one line, whatever the path holds
    lines: list[str] = []
    if arch and not auto_map:
        lines += [f"from transformers import {arch}" + (", pipeline" if task else ""), "",
                  f"model = {arch}.from_pretrained({path})"]
    elif head and not task:  # custom code and no pipeline for this head: its Auto class resolves it
        lines += [f"from transformers import {head.auto_class}", "",
                  f"model = {head.auto_class}.from_pretrained({path}, trust_remote_code=True)"]
    else:  # custom code: the Auto class resolves it (and needs trust_remote_code)
        lines += ["from transformers import AutoModel" + (", pipeline" if task else ""), "",
                  f"model = AutoModel.from_pretrained({path}, trust_remote_code=True)"]
    if task:
        lines.append(f'pipe = pipeline("{task}", model={path}' + (", trust_remote_code=True" if auto_map else "")
                     + ")")
    return lines


def task_for(config: Mapping[str, Any], *, threshold: float | None = None) -> Task:
    """The [`Task`] evaluating a model of `config`.

    Raises:
        [`EvaluationError`]: no registered task serves the config (the supported ones are named).
    """
    for cls in TASKS:
        if cls.evaluates and cls.serves(config):
            return cls(config, threshold=threshold)
    raise EvaluationError(f"cannot evaluate architectures {config.get('architectures')} with problem_type "
                          f"{config.get('problem_type')!r}: held-out evaluation supports {supported_architectures()}.",
                          fix="use method='uniform' or 'weighted' (no evaluation).")


def num_labels_of(config: Mapping[str, Any]) -> int:
    """`len(id2label)`, else `num_labels`, else 2 (transformers' default)."""
    id2label = config.get("id2label")
    return len(id2label) if isinstance(id2label, Mapping) and id2label else int(config.get("num_labels", 2))


def metric(name: str, compute: Callable[[Any, Any], float], higher_is_better: bool = True,
           stats: tuple[Callable[[Any, Any], Any], Callable[[Any], Any]] | None = None,
           per_example: Callable[[Any, Any], Any] | None = None,
           per_example_range: tuple[float, float] = (0.0, 1.0)) -> Metric:
    """A native [`Metric`] named `name` (recorded and replayed by that name); `stats` are its additive per-unit
    statistics and their score, for a vectorised bootstrap; `per_example` (with its range) when the metric is the
    mean of one value per example, for greedy's early decisions (see [`Metric`])."""
    unit_stats, from_stats = stats if stats is not None else (None, None)
    return Metric(name, compute, name, higher_is_better, unit_stats, from_stats, per_example, per_example_range)


def read_column(raw: Any, column: str, name: str, expected: str) -> list[Any]:
    """The values of `column`, as stored.

    Raises:
        [`EvaluationError`]: the column cannot be read (e.g. Arrow refuses it).
    """
    import pyarrow

    try:
        return column_values(raw, column)
    except (TypeError, ValueError, pyarrow.ArrowException) as e:
        first = (str(e).splitlines() or [""])[0][:200]
        raise EvaluationError(f"the column '{column}' cannot be read ({type(e).__name__}: {first}).",
                              ingredient=name, param="label_column", fix=f"labels must be {expected}.") from None


def bad_rows(invalid: Sequence[tuple[int, Any]], column: str, expected: str, name: str,
             param: str = "label_column") -> EvaluationError:
    """The error for rows whose values are not of the expected form: the first row, its column and value, the count
    of the others, and the form expected."""
    row, value = invalid[0]
    more = f" ({len(invalid) - 1} more rows are invalid too)" if len(invalid) > 1 else ""
    return EvaluationError(f"row {row} of column '{column}' holds {_shown(value)} ({type(value).__name__}){more}; "
                           f"expected {expected}.", ingredient=name, param=param,
                           fix="clean that column (drop or fix the rows) before evaluating.")


def raise_label_problems(invalid: Sequence[tuple[int, Any]], unknown: Sequence[tuple[int, Any]], column: str,
                         expected: str, name: str, known: str, fix: str) -> None:
    """Raise for the rows a task's label check collected: [`bad_rows`] for values not of the expected form first,
    then a [`LabelMismatchError`] for the first label name the model does not know (`known` describes the model's
    names, e.g. "label2id [...]"). Returns when both lists are empty."""
    if invalid:
        raise bad_rows(invalid, column, expected, name)
    if unknown:
        row, v = unknown[0]
        raise LabelMismatchError(f"row {row} of column '{column}' names the label {v!r}, which is not in the "
                                 f"model's {known}.", ingredient=name, fix=fix)


def settle_spec(spec: Any, config: Mapping[str, Any]) -> Any:
    """`spec` ([`EvalSpec`]) with what the task decides filled in, so the recipe and the card record it: the task's
    default metric for the library default `"accuracy"` when the task has no accuracy (e.g. `"pearsonr"` for
    regression), the multi-label threshold (0.5 unless given), and a list of text columns as a tuple.

    Raises:
        [`EvaluationError`]: no task serves the config.
    """
    import dataclasses

    task = task_for(config, threshold=spec.threshold)
    changes: dict[str, Any] = {}
    if isinstance(spec.metric, str) and spec.metric == "accuracy" and task.default_metric != "accuracy":
        changes["metric"] = task.default_metric
    if getattr(task, "cut", None) is not None and spec.threshold is None:
        changes["threshold"] = task.cut
    if isinstance(spec.text_column, list):
        changes["text_column"] = tuple(spec.text_column) if len(spec.text_column) != 1 else spec.text_column[0]
    return dataclasses.replace(spec, **changes) if changes else spec


def check_eval_data(dataset: Any, config: Mapping[str, Any], *, text_column: Any = None,
                    label_column: str | None = None, image_column: str | None = None,
                    name: str = "the model") -> dict[str, Any]:
    """Check evaluation data against a model config before any weight is read: the task's columns and every row of
    its labels (see `hf_soups.evaluation.tasks`).

    Args:
        dataset (`datasets.Dataset`): from [`hf_soups.evaluation.data.as_eval_dataset`].
        config (`Mapping`): the (first) ingredient's `config.json`.
        text_column (`str` or a list/tuple of two, *optional*): the text column(s) asked for (a sentence pair, or
            QA's question and context).
        label_column, image_column (`str`, *optional*): the columns asked for.
        name (`str`): the ingredient named in errors.

    Returns:
        `dict[str, Any]`: the columns found (`{"label": ..., "text": (...)}` or `{"label": ..., "image": ...}`).

    Raises:
        [`EvaluationError`]: no task serves the model, a column is missing, or a label is not of the task's form.
        [`LabelMismatchError`]: the labels do not match the model's `id2label`.
    """
    task = task_for(config)
    dataset = untransformed(dataset)  # labels and columns are read from the raw columns, not through a transform
    asked = Columns.of(text_column, label_column, image_column)
    found = task.check_columns(list(dataset.column_names), asked)
    task.references(dataset, task.find_columns(list(dataset.column_names), asked), name)
    return found
