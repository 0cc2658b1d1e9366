"""Scoring checkpoints on a held-out dataset: preprocess once, sort by length, batched inference, cached logits."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch

from ..errors import EvaluationError
from . import logit_cache
from .data import as_eval_dataset, untransformed
from .device import autocast, default_batch_size, input_device, resolve_eval_device, resolve_eval_dtype
from .metrics import Metric, resolve_metric
from .tasks import Columns, task_for

__all__ = ["Evaluator", "task_of", "evaluate_checkpoint", "evaluators_by_processor", "logit_problem"]

_DEVICE_CACHE_BYTES = 1 << 30  # held-out inputs up to 1 GiB stay on the evaluation device across candidates


def task_of(config: Mapping[str, Any]) -> str:
    """The short name of the task evaluating a model of `config` (see `hf_soups.evaluation.tasks`): `"text"`
    (single-label `*ForSequenceClassification`, one sentence or a pair), `"regression"` (`num_labels == 1`,
    `problem_type` regression or unset), `"multi_label"`, `"image"`, `"token"` or `"qa"`.

    Raises:
        [`EvaluationError`]: no task serves the config (the supported ones are named).
    """
    return task_for(config).name


def logit_problem(logits: torch.Tensor, *, inputs_vary: bool = True) -> str | None:
    """Why `logits` (examples x labels) are degenerate, or `None`: NaN or inf values, a magnitude beyond
    `HF_SOUPS_MAX_ABS_LOGIT` (trained classifiers stay within tens), or the same logits for every example (the
    output no longer depends on the input) when `inputs_vary` (some model gave different logits on these inputs).

    Such logits can still tie the best accuracy by chance (argmax of NaN or of a constant row picks one class), so
    greedy rejects a candidate that produces them and evaluation flags the row.
    """
    from .. import constants

    if not logits.numel():
        return None
    finite = torch.isfinite(logits)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        return f"non-finite logits ({bad} of {logits.numel()} values are NaN or inf)"
    bound = constants.max_abs_logit()
    peak = float(logits.abs().max())
    if peak > bound:
        return f"logits up to {peak:.3g} in magnitude, beyond the bound {bound:.3g} (HF_SOUPS_MAX_ABS_LOGIT)"
    if inputs_vary and logits.shape[0] > 1 and _collapsed(logits):
        return f"the same logits for all {logits.shape[0]} examples (collapsed: the output ignores the input)"
    return None


def _collapsed(logits: torch.Tensor) -> bool:
    """Whether every row of `logits` equals the first, up to float32 rounding of their scale."""
    spread = float((logits - logits[0]).abs().max())
    return spread <= 1e-6 * (1.0 + float(logits.abs().max()))


class Evaluator:
    """Scores models on one dataset. Text is tokenized once and sorted by length for dynamic padding; images are
    preprocessed one batch at a time (see `hf_soups.evaluation.images`), so memory stays bounded.

    Args:
        dataset (*any form [`as_eval_dataset`] reads*):
            The evaluation data; for images see `hf_soups.evaluation.images` (image columns, preprocessed
            `pixel_values`, transforms).
        reference_dir (`str`):
            A checkpoint directory holding the tokenizer or image processor of the model scored.
        config (`Mapping`):
            The model config (`architectures`, `id2label`).
        metric (`str`, `EvaluationModule` or callable, *optional*, defaults to `"accuracy"`):
            See [`resolve_metric`].
        text_column, label_column, image_column (`str`, *optional*):
            Column names; defaults: `text`/`sentence` (or a GLUE sentence pair), `label`, `image`/`img`. The task
            decides (see `hf_soups.evaluation.tasks` and docs/TASKS.md): `text_column` may be two columns (a sentence
            pair; QA's question and context); token classification reads `tokens` and `ner_tags`, QA `answers`.
        batch_size (`int`, *optional*):
            Inference batch size; defaults to 64 on the CPU and 256 on an accelerator. A given value always wins.
        device (`str` or `torch.device`, *optional*):
            Where the forward passes run; defaults to [`resolve_eval_device`]'s rule (accelerate's
            `PartialState().device` under `accelerate launch` or with an accelerator, else the CPU). Models are moved
            there (unless dispatched by accelerate), inputs follow, logits come back to the CPU for the metric.
        dtype (`str`, *optional*):
            `"bfloat16"` or `"float16"` runs the forward passes under `torch.autocast`; the default is exact fp32.
        max_length (`int`, *optional*, defaults to `256`):
            Token truncation length.
        name (`str`, *optional*):
            The model named in label-mismatch errors.
        max_samples (`int`, *optional*):
            Evaluate only the first `max_samples` examples (required for an `IterableDataset`).
        threshold (`float`, *optional*):
            Multi-label models: the sigmoid threshold of a positive label (0.5 by default).

    Attributes:
        task (`str`): the task's short name ([`task_of`]).
        references (`torch.Tensor` or `numpy.ndarray`): the references in dataset order, one per unit the bootstrap
            resamples (label ids; floats; multi-hot rows; per-word label ids; gold answer texts).
        device (`torch.device`): where the forward passes run.
        forward_seconds (`float`): time spent in model forward passes, input transfers and the logits' copy back to
            the CPU (for overhead measurements).
        evaluations (`int`): the number of models scored so far.

    Raises:
        [`LabelMismatchError`]: the dataset labels do not match the model's label map.
        [`EvaluationError`]: columns or the task cannot be found.
    """

    def __init__(self, dataset: Any, reference_dir: str, config: Mapping[str, Any], *, metric: Any = "accuracy",
                 text_column: str | None = None, label_column: str | None = None, image_column: str | None = None,
                 batch_size: int | None = None, max_length: int = 256, name: str | None = None,
                 device: str | torch.device | None = None, dtype: str | torch.dtype | None = None,
                 max_samples: int | None = None, threshold: float | None = None) -> None:
        self.task_impl = task_for(config, threshold=threshold)
        self.task = self.task_impl.name
        dataset = as_eval_dataset(dataset, max_samples=max_samples)
        self.metric: Metric = resolve_metric(metric, self.task_impl)
        self.device = resolve_eval_device(device)
        self.dtype = resolve_eval_dtype(dtype)
        self.batch_size = default_batch_size(self.device, batch_size)
        self.evaluations = 0
        self.cache_hits = 0  # models whose logits came from the on-disk cache (see `logit_cache`)
        self.max_length, self.max_samples = max_length, max_samples
        self._dataset_key: str | None | bool = False  # computed on first use
        self.inputs_vary = False  # set once a model gives different logits on different examples of this set
        self._device_batches: list[tuple[torch.Tensor, dict[str, torch.Tensor]]] | None = None
        self._device_batch_device: torch.device | None = None
        self._device_batches_of: Sequence[Any] | None = None  # the batches kept on the device (held: not an id)
        self.candidate_batches: Sequence[tuple[torch.Tensor, dict[str, torch.Tensor]]] | None = None
        raw = untransformed(dataset)  # labels and columns as stored, not through a transform
        self.columns = self.task_impl.find_columns(list(raw.column_names),
                                                   Columns.of(text_column, label_column, image_column))
        self.references = self.task_impl.references(raw, self.columns, name or reference_dir)
        self.forward_seconds = 0.0
        self.prepared = self.task_impl.prepare(dataset, raw, reference_dir, self.columns, self.references,
                                               batch_size=self.batch_size, max_length=max_length)
        self.batches: Sequence[tuple[torch.Tensor, dict[str, torch.Tensor]]] = self.prepared.batches

    def __len__(self) -> int:
        return len(self.references)

    def place(self, model: Any) -> Any:
        """Move `model` to the evaluation device (a model dispatched by accelerate stays where it was placed)."""
        if getattr(model, "hf_device_map", None):
            return model
        current = input_device(model)
        if current != self.device and current.type != "meta":
            model.to(self.device)
        return model

    def _inputs(self, device: torch.device, batches: Sequence[tuple[torch.Tensor, dict[str, torch.Tensor]]] | None = None
                ) -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
        """This process's batches (`batches`, default [`batches`]) with inputs on `device`, one at a time (image
        batches are preprocessed as they are read); on an accelerator one list of them is kept there across
        candidates while it totals at most 1 GiB."""
        from .distributed import my_share

        batches = self.batches if batches is None else batches
        if device.type != "cpu" and self._device_batches is not None and self._device_batch_device == device \
                and self._device_batches_of is batches:
            yield from self._device_batches
            return
        kept: list[tuple[torch.Tensor, dict[str, torch.Tensor]]] | None = []
        nbytes = 0
        for b in my_share(range(len(batches))):
            idx, inputs = batches[b]
            if device.type != "cpu":
                nbytes += sum(v.numel() * v.element_size() for v in inputs.values())
                inputs = {k: v.to(device, non_blocking=True) for k, v in inputs.items()}
                kept = kept + [(idx, inputs)] if kept is not None and nbytes <= _DEVICE_CACHE_BYTES else None
            yield idx, inputs
            del inputs  # the next batch is prepared without this one alive
        if kept is not None and device.type != "cpu":
            self._device_batches, self._device_batch_device, self._device_batches_of = kept, device, batches

    def logits(self, model: Any) -> torch.Tensor:
        """Logits of `model` on every example, in dataset order (float32, on the CPU).

        The model runs on [`Evaluator.device`] under `torch.inference_mode()` (and autocast when a reduced `dtype`
        was asked for); the logits are copied back to the CPU once per evaluation. Under `accelerate launch`, each
        process computes its share of the batches on its own device and the logits are summed across processes
        (each example is computed by exactly one), so every process returns the full logits.

        Logits of a model in memory are kept in the on-disk cache of `hf_soups.evaluation.logit_cache`, keyed by the
        model's tensors and this evaluation set: a model already scored here (an ingredient; the greedy soup when
        greedy scored its candidates on these batches) is not run again, in this process or the next.
        """
        key = self._cache_key(model)
        cached = self._cached(key)
        if cached is not None:
            return cached
        logits = self._run(model)[0]
        if key is not None:
            logit_cache.put(key, logits)
        return logits

    def _cache_key(self, model: Any) -> str | None:
        from .distributed import is_distributed

        if logit_cache.cache_dir() is None or is_distributed():
            return None
        if self._dataset_key is False:
            self._dataset_key = logit_cache.dataset_key(self)
        if self._dataset_key is None:
            return None
        digest = logit_cache.model_digest(model)
        return None if digest is None else f"{digest}:{self._dataset_key}"

    def _cached(self, key: str | None) -> torch.Tensor | None:
        logits = logit_cache.get(key) if key is not None else None
        if logits is None or tuple(logits.shape) != (self.prepared.rows, *self.prepared.shape):
            return None
        self.cache_hits += 1
        if not self.inputs_vary and len(logits) > 1 and bool(torch.isfinite(logits).all()) \
                and not _collapsed(logits):
            self.inputs_vary = True
        return logits

    def _run(self, model: Any, stop: Callable[[torch.Tensor, torch.Tensor], bool] | None = None,
             every: int = 1, batches: Sequence[tuple[torch.Tensor, dict[str, torch.Tensor]]] | None = None
             ) -> tuple[torch.Tensor, int, bool]:
        """The forward passes of [`logits`] (over `batches`, default [`batches`]); with `stop`, called every `every`
        batches with the logits so far and the rows they fill, the passes end as soon as it returns `True`. Returns
        `(logits, rows computed, stopped)` (a stopped run's logits are zero on the rows not computed)."""
        from .distributed import sum_across

        model = self.place(model)
        model.eval()
        device = input_device(model)
        start = time.perf_counter()
        indices: list[torch.Tensor] = []
        outputs: list[torch.Tensor] = []
        done: list[torch.Tensor] = []
        shape = self.prepared.shape
        out = torch.zeros(self.prepared.rows, *shape)
        stopped = False
        with torch.inference_mode(), autocast(device, self.dtype):
            for b, (idx, inputs) in enumerate(self._inputs(device, batches)):
                output = self.task_impl.output(model(**inputs))
                if output.dim() > 2 and output.shape[1] < shape[0]:  # per-token outputs: padded to the widest batch
                    output = torch.nn.functional.pad(output, (0, 0, 0, shape[0] - output.shape[1]))
                outputs.append(output)
                indices.append(idx)
                del inputs  # (image batches: preprocessed per batch, so only one is alive at a time)
                if stop is not None and (b + 1) % every == 0:
                    _fill(out, indices, outputs)
                    done += indices
                    indices, outputs = [], []
                    if stop(out, torch.cat(done)):
                        stopped = True
                        break
        _fill(out, indices, outputs)
        done += indices
        self.forward_seconds += time.perf_counter() - start
        self.evaluations += 1
        computed = sum(len(i) for i in done)
        if stopped:
            return out, computed, True
        out = sum_across(out)
        if not self.inputs_vary and len(out) > 1 and bool(torch.isfinite(out).all()) and not _collapsed(out):
            self.inputs_vary = True
        return out, computed, False

    @property
    def decides_early(self) -> bool:
        """Whether [`score_against`] can stop a candidate early: the metric is a mean of per-example values (see
        `Metric.per_example`), each output row is one example, and one process computes them all."""
        from .distributed import is_distributed

        return (self.metric.per_example is not None and self.prepared.rows == len(self.references)
                and not is_distributed())

    def order_candidates(self, values: Sequence[Any]) -> bool:
        """Evaluate candidates ([`score_against`]) on the examples most likely to fail first: `values` holds each
        ingredient's per-example metric values (rows in dataset order). Examples split into three tiers by their
        mean distance from the metric's best value (their badness): the missed ones (badness above 0) at or above
        the 75th percentile of badness over the whole set (the hardest quarter of the set when a quarter or more was
        missed; every missed example otherwise), the other missed ones, then those every ingredient got right; each
        tier is batched by length (rebuilt from the padded batches by `Prepared.reorder`).

        A candidate that will be rejected usually misses what its ingredients missed, so its shortfall shows within
        the first tiers and [`score_against`] stops there; the decision is the one a full evaluation on these
        batches gives, whatever the order. Only tasks whose rows are examples can be reordered (`Prepared.reorder`).

        Returns:
            `bool`: whether candidates now run on [`candidate_batches`].
        """
        import numpy as np

        if not self.decides_early or self.prepared.reorder is None or not values:
            return False
        lo, hi = self.metric.per_example_range
        best = hi if self.metric.higher_is_better else lo
        mean = np.mean(np.stack([np.asarray(v, dtype=np.float64).reshape(-1) for v in values]), axis=0)
        badness = np.abs(best - mean)
        if len(badness) != self.prepared.rows or not np.isfinite(badness).all() or not (badness > 0).any():
            return False
        missed = badness > 0
        tiers = np.where(missed & (badness >= np.quantile(badness, 0.75)), 0, np.where(missed, 1, 2))
        batches = self.prepared.reorder([int(t) for t in tiers])
        if batches is None:
            return False
        self.candidate_batches = batches
        return True

    def score_against(self, model: Any, bar: float, *, strict: bool = False
                      ) -> tuple[float | None, torch.Tensor | None, int, float | None]:
        """Score `model` against `bar`, stopping as soon as its score is certain to fail it.

        For a metric that is a mean of per-example values in `[lo, hi]` ([`decides_early`]), the batches
        ([`candidate_batches`] once [`order_candidates`] set them: the examples most likely to fail first; else the
        length-sorted ones) run in up to 50 chunks; after each, the best score the model can still reach (every
        remaining example at `hi`, or `lo` for a lower-is-better metric) is compared with `bar`. When it is worse than `bar`
        (by more than a rounding margin, so a score that would tie is always evaluated in full), the model cannot
        pass (`score >= bar`, or `>` with `strict`) and the evaluation stops. Otherwise (and for every other metric)
        the score is exactly [`score`]'s.

        Returns:
            `tuple`: `(score, logits, examples evaluated, None)` when evaluated in full; `(None, None, examples
            evaluated, best reachable score)` when stopped early. The candidate is not looked up in the logits
            cache and is hashed ([`logit_cache.model_digest`]) only when it passes the bar: its logits are then
            kept (the last one is the soup, which `Soup.evaluate` finds), unless it ran on [`candidate_batches`]
            (their logits may differ from the evaluator's own batches' in the last bits, so nothing reads them
            back); a rejected candidate is never needed again.
        """
        import math

        import numpy as np

        metric = self.metric
        lo, hi = metric.per_example_range
        reach_end = hi if metric.higher_is_better else lo
        total = len(self.references)
        sign = 1.0 if metric.higher_is_better else -1.0

        batches = self.candidate_batches

        def kept(score: float, logits: torch.Tensor) -> tuple[float, torch.Tensor, int, None]:
            passes = sign * score > sign * bar if strict else sign * score >= sign * bar
            # the model still holds this candidate's weights
            key = self._cache_key(model) if passes and batches is None else None
            if key is not None:
                logit_cache.put(key, logits)
            return score, logits, total, None

        if not self.decides_early or not math.isfinite(reach_end) or not math.isfinite(bar) or total == 0:
            logits = self._run(model, batches=batches)[0]
            return kept(self.score_logits(logits), logits)
        margin = 1e-9 * max(1.0, abs(bar))
        reached: list[float] = []

        def stop(out: torch.Tensor, rows: torch.Tensor) -> bool:
            if len(rows) >= total:  # every example is in: the exact score decides
                return False
            predictions = self.predictions(out)
            take = rows if isinstance(predictions, torch.Tensor) else rows.numpy()
            refs = self.references[rows] if isinstance(self.references, torch.Tensor) else self.references[rows.numpy()]
            values = np.asarray(metric.per_example(predictions[take], refs), dtype=np.float64)
            reach = (float(values.sum()) + (total - len(rows)) * reach_end) / total
            reached[:] = [reach]
            return reach < bar - margin if metric.higher_is_better else reach > bar + margin

        every = max(1, math.ceil(len(batches if batches is not None else self.batches) / 50))
        logits, computed, stopped = self._run(model, stop, every, batches)
        if stopped:
            return None, None, computed, reached[0]
        return kept(self.score_logits(logits), logits)

    def problem(self, logits: torch.Tensor) -> str | None:
        """Why `logits` from this evaluator are degenerate, or `None` (see [`logit_problem`]); collapse counts only
        once some model gave different logits on these examples (a set of identical inputs is not flagged)."""
        return logit_problem(logits, inputs_vary=self.inputs_vary)

    def score_logits(self, logits: torch.Tensor, metric: Metric | None = None) -> float:
        """The metric (this evaluator's, or `metric`) of the task's predictions against the references."""
        metric = metric or self.metric
        if metric.per_example is not None:  # a native mean of per-example values reads the tensors as they are
            return metric(self.predictions(logits), self.references)
        return metric(_plain(self.predictions(logits)), _plain(self.references))

    def scores(self, logits: torch.Tensor) -> dict[str, float]:
        """Every native metric of the task (the default one and those reported beside it) of `logits`."""
        return {name: self.score_logits(logits, m) for name, m in self.task_impl.metrics().items()}

    def predictions(self, logits: torch.Tensor) -> Any:
        """The task's per-unit predictions of `logits` (label ids by argmax for classification; floats for
        regression; multi-hot rows; per-word label ids; answer strings), in dataset order."""
        return self.task_impl.predictions(logits, self.prepared)

    def loss(self, output: Any, idx: torch.Tensor) -> torch.Tensor:
        """The task's training loss (learned soups) of a model output on the batch of rows `idx`."""
        return self.task_impl.loss(self.task_impl.output(output), idx, self.prepared)

    def score(self, model: Any) -> tuple[float, torch.Tensor]:
        """`(metric, logits)` of `model`."""
        logits = self.logits(model)
        return self.score_logits(logits), logits


def _fill(out: torch.Tensor, indices: list[torch.Tensor], outputs: list[torch.Tensor]) -> None:
    """Copy the batches' `outputs` into the rows `indices` of `out` (on the CPU), with one transfer."""
    if outputs:
        out[torch.cat(indices)] = torch.cat([o.to(outputs[0].device) for o in outputs]).cpu()


def _plain(values: Any) -> Any:
    """A tensor as (nested) Python lists, as metrics always received them; numpy arrays as they are."""
    return values.tolist() if isinstance(values, torch.Tensor) else values


def evaluate_checkpoint(directory: str, dataset: Any, *, metric: Any = "accuracy", max_memory: dict | None = None,
                        offload_folder: str | None = None, device_map: Any = None, trust_remote_code: bool = False,
                        **evaluator_kwargs: Any) -> float:
    """Score one checkpoint directory on `dataset`, loading it with accelerate's big-model path when asked.

    With `max_memory` (e.g. `{0: "20GiB", "cpu": "64GiB"}`) or a `device_map`, the model is loaded with
    `from_pretrained(device_map=..., max_memory=..., offload_folder=...)`: what does not fit is offloaded to CPU and
    disk, and the score is the same as an in-memory evaluation. Otherwise the model runs on the evaluation device
    (`device=` in `evaluator_kwargs`, else [`resolve_eval_device`]'s rule).

    Returns:
        `float`: the metric.
    """
    import os

    from ..checkpoint.meta import read_config
    from ..modeling import load_model

    config = read_config(os.path.join(directory, "config.json"), directory)
    kwargs: dict[str, Any] = {}
    if max_memory is not None or device_map is not None:
        kwargs = {"device_map": device_map or "auto", "max_memory": max_memory, "offload_folder": offload_folder}
    model = load_model(directory, config, trust_remote_code, dtype=torch.float32, **kwargs)
    return Evaluator(dataset, directory, config, metric=metric, **evaluator_kwargs).score(model)[0]


def _processor_identity(directory: str) -> str | None:
    """The image processor settings of a checkpoint directory, canonically serialised (`None` without any)."""
    import json

    from ..checkpoint.meta import read_processor_config

    config = read_processor_config(os.path.join(directory, "preprocessor_config.json"), directory)
    return None if config is None else json.dumps(config, sort_keys=True)


def evaluators_by_processor(dataset: Any, directories: Sequence[str], config: Mapping[str, Any], *,
                            names: Sequence[str] | None = None, max_samples: int | None = None,
                            **kwargs: Any) -> list[Evaluator]:
    """One [`Evaluator`] per model directory, each preprocessing images with that model's own image processor;
    directories whose image processor settings are identical (and every text model: the verdict has checked their
    tokenizers) share one evaluator.

    Args:
        dataset (*any form [`as_eval_dataset`] reads*): the evaluation data (read once for every evaluator).
        directories (`Sequence[str]`): the checkpoint directories of the models to score.
        config (`Mapping`): the (first) model's config.
        names (`Sequence[str]`, *optional*): the models named in label-mismatch errors, aligned with `directories`.
        max_samples (`int`, *optional*): evaluate only the first `max_samples` examples.
        **kwargs: the other [`Evaluator`] arguments.

    Returns:
        `list[Evaluator]`: aligned with `directories`.
    """
    dataset = as_eval_dataset(dataset, max_samples=max_samples)  # an IterableDataset is read once, for every model
    per_model = task_for(config).processor_per_model
    shared: dict[str | None, Evaluator] = {}
    out = []
    for k, directory in enumerate(directories):
        key = _processor_identity(directory) if per_model else None
        if key not in shared:
            shared[key] = Evaluator(dataset, directory, config, name=names[k] if names else None, **kwargs)
        out.append(shared[key])
    return out
