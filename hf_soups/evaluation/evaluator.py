"""Scoring checkpoints on a held-out dataset: preprocess once, sort by length, batched inference, cached logits."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch

from ..errors import EvaluationError
from .data import (LABEL_COLUMNS, TEXT_COLUMNS, as_eval_dataset, check_labels, find_column, model_id2label,
                   untransformed)
from .device import autocast, default_batch_size, input_device, resolve_eval_device, resolve_eval_dtype
from .images import image_batches
from .metrics import Metric, resolve_metric

__all__ = ["Evaluator", "task_of", "evaluate_checkpoint", "evaluators_by_processor", "logit_problem"]

_DEVICE_CACHE_BYTES = 1 << 30  # held-out inputs up to 1 GiB stay on the evaluation device across candidates


def task_of(config: Mapping[str, Any]) -> str:
    """`"text"` for `*ForSequenceClassification`, `"image"` for `*ForImageClassification`.

    Only single-label classification is evaluated: a config whose `problem_type` is `"regression"` or
    `"multi_label_classification"`, or with one label (transformers treats `num_labels == 1` as regression), is
    refused rather than scored as if it were single-label.

    Raises:
        [`EvaluationError`]: another architecture, or a regression or multi-label model.
    """
    problem = config.get("problem_type")
    id2label = config.get("id2label")
    num_labels = len(id2label) if isinstance(id2label, Mapping) and id2label else config.get("num_labels", 2)
    if problem in ("regression", "multi_label_classification") or num_labels == 1:
        what = f"problem_type '{problem}'" if problem in ("regression", "multi_label_classification") else \
            "one label (num_labels == 1, which transformers treats as regression)"
        raise EvaluationError(f"cannot evaluate a model with {what}: held-out evaluation supports single-label "
                              "classification only (problem_type 'single_label_classification' or unset, with "
                              "num_labels >= 2) for now.",
                              fix="use method='uniform' or 'weighted' (no evaluation), or a single-label classifier.")
    for arch in config.get("architectures") or []:
        if arch.endswith("ForSequenceClassification"):
            return "text"
        if arch.endswith("ForImageClassification"):
            return "image"
    raise EvaluationError(f"cannot evaluate architectures {config.get('architectures')}: only *ForSequenceClassification "
                          "and *ForImageClassification are supported.", fix="use method='uniform' or 'weighted'.")


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
            Column names; defaults: `text`/`sentence`, `label`, `image`/`img`.
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

    Attributes:
        references (`torch.Tensor`): label ids in dataset order.
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
                 max_samples: int | None = None) -> None:
        self.task = task_of(config)
        dataset = as_eval_dataset(dataset, max_samples=max_samples)
        self.metric: Metric = resolve_metric(metric)
        self.device = resolve_eval_device(device)
        self.dtype = resolve_eval_dtype(dtype)
        self.batch_size = default_batch_size(self.device, batch_size)
        self.evaluations = 0
        self.inputs_vary = False  # set once a model gives different logits on different examples of this set
        self._device_batches: list[tuple[torch.Tensor, dict[str, torch.Tensor]]] | None = None
        self._device_batch_device: torch.device | None = None
        raw = untransformed(dataset)  # labels and columns as stored, not through a transform
        columns = list(raw.column_names)
        label_col = find_column(columns, label_column, LABEL_COLUMNS, "label")
        self.references = torch.tensor(check_labels(raw, label_col, model_id2label(config), name or reference_dir))
        self.forward_seconds = 0.0
        self.batches: Sequence[tuple[torch.Tensor, dict[str, torch.Tensor]]] = []
        if self.task == "text":
            self._prepare_text(raw, reference_dir, find_column(columns, text_column, TEXT_COLUMNS, "text"),
                               max_length)
        else:
            self.batches = image_batches(dataset, reference_dir, config, image_column=image_column,
                                         batch_size=self.batch_size)

    def __len__(self) -> int:
        return len(self.references)

    def _prepare_text(self, dataset: Any, reference_dir: str, column: str, max_length: int) -> None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(reference_dir)
        texts = [str(t) for t in dataset[column]]
        encoded = tokenizer(texts, truncation=True, max_length=max_length)
        lengths = torch.tensor([len(ids) for ids in encoded["input_ids"]])
        order = torch.argsort(lengths, stable=True)
        keys = list(encoded.keys())
        batches = []
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            features = [{k: encoded[k][i] for k in keys} for i in idx.tolist()]
            batches.append((idx, dict(tokenizer.pad(features, return_tensors="pt"))))
        self.batches = batches

    def place(self, model: Any) -> Any:
        """Move `model` to the evaluation device (a model dispatched by accelerate stays where it was placed)."""
        if getattr(model, "hf_device_map", None):
            return model
        current = input_device(model)
        if current != self.device and current.type != "meta":
            model.to(self.device)
        return model

    def _inputs(self, device: torch.device) -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
        """This process's batches with inputs on `device`, one at a time (image batches are preprocessed as they are
        read); on an accelerator they are kept there across candidates while they total at most 1 GiB."""
        from .distributed import my_share

        if device.type != "cpu" and self._device_batches is not None and self._device_batch_device == device:
            yield from self._device_batches
            return
        kept: list[tuple[torch.Tensor, dict[str, torch.Tensor]]] | None = []
        nbytes = 0
        for b in my_share(range(len(self.batches))):
            idx, inputs = self.batches[b]
            if device.type != "cpu":
                nbytes += sum(v.numel() * v.element_size() for v in inputs.values())
                inputs = {k: v.to(device, non_blocking=True) for k, v in inputs.items()}
                kept = kept + [(idx, inputs)] if kept is not None and nbytes <= _DEVICE_CACHE_BYTES else None
            yield idx, inputs
            del inputs  # the next batch is prepared without this one alive
        if kept is not None and device.type != "cpu":
            self._device_batches, self._device_batch_device = kept, device

    def logits(self, model: Any) -> torch.Tensor:
        """Logits of `model` on every example, in dataset order (float32, on the CPU).

        The model runs on [`Evaluator.device`] under `torch.inference_mode()` (and autocast when a reduced `dtype`
        was asked for); the logits are copied back to the CPU once per evaluation. Under `accelerate launch`, each
        process computes its share of the batches on its own device and the logits are summed across processes
        (each example is computed by exactly one), so every process returns the full logits.
        """
        from .distributed import sum_across

        model = self.place(model)
        model.eval()
        device = input_device(model)
        start = time.perf_counter()
        indices, outputs = [], []
        with torch.inference_mode(), autocast(device, self.dtype):
            for idx, inputs in self._inputs(device):
                outputs.append(model(**inputs).logits.float())
                indices.append(idx)
                del inputs  # (image batches: preprocessed per batch, so only one is alive at a time)
        out = torch.zeros(len(self), int(model.config.num_labels))
        if outputs:
            out[torch.cat(indices)] = torch.cat([o.to(outputs[0].device) for o in outputs]).cpu()
        self.forward_seconds += time.perf_counter() - start
        self.evaluations += 1
        out = sum_across(out)
        if not self.inputs_vary and len(out) > 1 and bool(torch.isfinite(out).all()) and not _collapsed(out):
            self.inputs_vary = True
        return out

    def problem(self, logits: torch.Tensor) -> str | None:
        """Why `logits` from this evaluator are degenerate, or `None` (see [`logit_problem`]); collapse counts only
        once some model gave different logits on these examples (a set of identical inputs is not flagged)."""
        return logit_problem(logits, inputs_vary=self.inputs_vary)

    def score_logits(self, logits: torch.Tensor) -> float:
        """The metric of argmax predictions against the references."""
        return self.metric(logits.argmax(-1).tolist(), self.references.tolist())

    def predictions(self, logits: torch.Tensor) -> torch.Tensor:
        """Predicted label ids (argmax) of `logits`."""
        return logits.argmax(-1)

    def score(self, model: Any) -> tuple[float, torch.Tensor]:
        """`(metric, logits)` of `model`."""
        logits = self.logits(model)
        return self.score_logits(logits), logits


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
    task = task_of(config)
    shared: dict[str | None, Evaluator] = {}
    out = []
    for k, directory in enumerate(directories):
        key = _processor_identity(directory) if task == "image" else None
        if key not in shared:
            shared[key] = Evaluator(dataset, directory, config, name=names[k] if names else None, **kwargs)
        out.append(shared[key])
    return out
