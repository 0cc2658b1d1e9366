"""`SoupCallback`: a `transformers.TrainerCallback` that soups a run's checkpoints at the end of training.

This module imports transformers; `hf_soups` exports `SoupCallback` lazily, so `import hf_soups` stays cheap.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

import torch
from transformers import TrainerCallback

from .errors import InvalidArgumentError, SoupError
from .runs import run_checkpoints

__all__ = ["SoupCallback"]

logger = logging.getLogger(__name__)


def _metric_from_compute_metrics(compute_metrics: Callable[[Any], Mapping[str, float]], key: str,
                                 num_labels: int) -> Callable[[Any, Any], float]:
    """hf_soups' `(predictions, references) -> float` from a Trainer's `compute_metrics(EvalPrediction)`: the class
    predictions are passed as one-hot logits (argmax-based metrics see the same predictions)."""
    import numpy as np
    from transformers import EvalPrediction

    def metric(predictions: Any, references: Any) -> float:
        preds = np.asarray(predictions, dtype=np.int64)
        logits = np.eye(num_labels, dtype=np.float32)[preds]
        out = compute_metrics(EvalPrediction(predictions=logits, label_ids=np.asarray(references)))
        if key not in out:
            raise SoupError(f"compute_metrics returned no {key!r} (it returned {sorted(out)}).",
                            fix="pass SoupCallback(selection_metric=...) with one of its keys.")
        return float(out[key])

    metric.__name__ = key
    return metric


class SoupCallback(TrainerCallback):
    """At the end of training, soup the run's last or top N checkpoints, evaluate the soup and log its metrics.

    The soup is written to `<output_dir>/soup` (or `soup_dir`) with its card and recipe; with a `trainer`, it is then
    evaluated with `trainer.evaluate(metric_key_prefix="soup")`, so its metrics (`soup_loss`, `soup_accuracy`, ...)
    reach the trainer's log history and its `report_to` integrations; the trained weights are restored afterwards.
    Under `accelerate launch`/DDP every process calls the soup, the main process alone writes it, and the others wait.

    Args:
        trainer (`transformers.Trainer`, *optional*):
            The trainer, to evaluate the soup and (greedy/learned) choose its weights on `trainer.eval_dataset` with
            `trainer.compute_metrics`. Without it the soup is written but not evaluated.
        last, top, metric, greater_is_better, since_step:
            Which checkpoints (see [`run_checkpoints`]); `last=3` when neither `last` nor `top` is given.
        method (`str`, *optional*, defaults to `"uniform"`):
            `"uniform"`, or `"greedy"`/`"learned"` on the trainer's eval set (its `text`/`label` columns).
        selection_metric (`str`, *optional*):
            The `compute_metrics` key greedy/learned maximise (default: `metric` without its `eval_` prefix).
        soup_dir (`str`, *optional*):
            Where to write the soup (default `<output_dir>/soup`); a soup hf_soups wrote there is replaced.
        every_save (`bool`, *optional*, defaults to `False`):
            Keep a running uniform average of the checkpoints saved from `since_step` on (SWA-style), updated at each
            save; `last`/`top` do not apply. At the end, when all those checkpoints are still on disk the soup is an
            ordinary uniform soup of them (card and `recipe.yaml`); when some were deleted (`save_total_limit`), it
            is the running average, with a card that says no recipe can re-create it.
        push_to_hub (`str`, *optional*):
            A repo id to push the soup to, with its card (with the `TrainingArguments`' `hub_token`).
        soup_kwargs (`dict`, *optional*):
            Further keyword arguments for [`soup_from_hub`].

    Raises:
        [`InvalidArgumentError`]: `method` needs evaluation and no `trainer` was given, or `every_save` with
            `method` other than uniform.

    Example:
        ```python
        >>> trainer = Trainer(model, args, train_dataset=train, eval_dataset=val, compute_metrics=accuracy)
        >>> trainer.add_callback(SoupCallback(trainer, top=3))
        >>> trainer.train()  # then out/soup holds the soup, and the log its soup_* metrics
        ```
    """

    def __init__(self, trainer: Any = None, *, last: int | None = None, top: int | None = None,
                 metric: str = "eval_loss", greater_is_better: bool | None = None, since_step: int | None = None,
                 method: str = "uniform", selection_metric: str | None = None, soup_dir: str | None = None,
                 every_save: bool = False, push_to_hub: str | None = None,
                 soup_kwargs: Mapping[str, Any] | None = None) -> None:
        from .recipes import get_method

        entry = get_method(method)
        if entry.needs_eval and trainer is None:
            raise InvalidArgumentError(f"method={method!r} chooses weights on the trainer's eval set.",
                                       fix="pass SoupCallback(trainer, method=...), or method='uniform'.",
                                       param="trainer")
        if every_save and method != "uniform":
            raise InvalidArgumentError("every_save=True keeps a running uniform average.",
                                       fix="pass method='uniform' with every_save=True.", param="every_save")
        self.trainer = trainer
        self.last, self.top = (3 if last is None and top is None and not every_save else last), top
        self.metric, self.greater_is_better, self.since_step = metric, greater_is_better, since_step
        self.method, self.selection_metric, self.soup_dir = method, selection_metric, soup_dir
        self.every_save, self.push_to_hub, self.soup_kwargs = every_save, push_to_hub, dict(soup_kwargs or {})
        self.soup: Any = None
        self.metrics: dict[str, float] = {}
        self._average: dict[str, torch.Tensor] | None = None
        self._averaged_steps: list[int] = []

    # -- every_save: a running average -------------------------------------------------------------------------------
    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not self.every_save or (self.since_step is not None and state.global_step < self.since_step):
            return
        if state.global_step in self._averaged_steps:
            return
        from safetensors.torch import load_file

        path = os.path.join(args.output_dir, f"checkpoint-{state.global_step}", "model.safetensors")
        if not os.path.isfile(path):
            raise SoupError("every_save=True reads model.safetensors of each checkpoint; none was saved.",
                            file=path, fix="train with TrainingArguments(save_safetensors=True) and without sharded FSDP/DeepSpeed "
                            "state, or pass every_save=False.")
        tensors = load_file(path)
        n = len(self._averaged_steps)
        if self._average is None:
            self._average = {k: v.to(torch.float64) for k, v in tensors.items()}
        else:
            for k, v in tensors.items():  # avg_{n+1} = avg_n + (x - avg_n) / (n + 1)
                self._average[k] += (v.to(torch.float64) - self._average[k]) / (n + 1)
        self._dtypes = {k: v.dtype for k, v in tensors.items()}
        self._first = os.path.dirname(path)
        self._averaged_steps.append(state.global_step)

    def _kept_checkpoints(self, args: Any) -> Any:
        """every_save: the averaged checkpoints as a [`RunCheckpoints`] when all of them are still on disk (then the
        soup is an ordinary uniform soup, with a recipe that re-creates it), else `None`."""
        import dataclasses

        try:
            found = run_checkpoints(args.output_dir, since_step=self.since_step)
        except SoupError:
            return None
        if not self._averaged_steps or found.steps != self._averaged_steps:
            return None
        since = f" from step {self.since_step}" if self.since_step else ""
        return dataclasses.replace(found, rule=f"every save{since} (SoupCallback(every_save=True), SWA-style)")

    def _write_running_average(self, args: Any, target: str) -> None:
        from safetensors.torch import save_file

        from .checkpoint.companions import copy_companion_files
        from .checkpoint.writer import AtomicDirectory

        if self._average is None:
            raise SoupError("every_save=True saw no checkpoint" + (f" at step {self.since_step} or later" if
                            self.since_step else "") + ".", fix="save checkpoints during training (save_steps), or "
                            "lower since_step.")
        with AtomicDirectory(target, overwrite=True) as tmp:
            save_file({k: v.to(self._dtypes[k]).contiguous() for k, v in self._average.items()},
                      os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
            copy_companion_files(self._first, tmp, ingredient=os.path.basename(self._first))
            steps = ", ".join(str(s) for s in self._averaged_steps)
            with open(os.path.join(tmp, "README.md"), "w", encoding="utf-8") as f:
                f.write("---\nlibrary_name: transformers\ntags: [merge, model-soup, hf-soups]\n---\n\n"
                        f"# soup\n\nRunning uniform average (SWA-style) of the checkpoints of one run at steps "
                        f"{steps}, made with hf_soups' SoupCallback(every_save=True). Some of these checkpoints "
                        "were deleted during training (save_total_limit), so no recipe can re-create this soup.\n")

    # -- the end of training -----------------------------------------------------------------------------------------
    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        target = self.soup_dir or os.path.join(args.output_dir, "soup")
        from .evaluation.distributed import is_main_process, wait_for_everyone

        chosen = self._kept_checkpoints(args) if self.every_save else run_checkpoints(
            args.output_dir, last=self.last, top=self.top, metric=self.metric,
            greater_is_better=self.greater_is_better, since_step=self.since_step)
        if chosen is None:  # every_save, and some averaged checkpoints are gone (save_total_limit): the running mean
            if is_main_process():
                self._write_running_average(args, target)
            wait_for_everyone()
        else:  # an ordinary soup of the checkpoints, with its card and recipe
            from .api import soup_from_hub

            kwargs_ = {"overwrite": True, "allow_single": True, **self.soup_kwargs}
            from .recipes import get_method

            if get_method(self.method).needs_eval:  # held-out data from the trainer's eval set (the registry says)
                kwargs_.update(self._selection(kwargs.get("model"), kwargs_.get("eval_spec")))
            self.soup = soup_from_hub(chosen, self.method, output_dir=target, **kwargs_)
        if self.trainer is not None:
            self.metrics = self._evaluate(target)
        if self.push_to_hub and is_main_process():
            token = getattr(args, "hub_token", None)
            if self.soup is not None:
                self.soup.push_to_hub(self.push_to_hub, token=token)
            else:
                from huggingface_hub import HfApi

                api = HfApi(token=token)
                api.create_repo(self.push_to_hub, exist_ok=True)
                api.upload_folder(folder_path=target, repo_id=self.push_to_hub, commit_message="Upload soup")

    def _selection(self, model: Any, spec: Any = None) -> dict[str, Any]:
        """The trainer's eval_dataset, and `spec` (an [`EvalSpec`], default one) with the compute_metrics key as its
        metric."""
        import dataclasses

        from .recipes import EvalSpec

        trainer = self.trainer
        if trainer.eval_dataset is None or trainer.compute_metrics is None:
            raise InvalidArgumentError(f"method={self.method!r} needs the trainer's eval_dataset and compute_metrics.",
                                       fix="pass Trainer(eval_dataset=..., compute_metrics=...), or "
                                           "method='uniform'.", param="method")
        key = self.selection_metric or self.metric.removeprefix("eval_")
        num_labels = int(getattr((model or trainer.model).config, "num_labels", 2))
        metric = _metric_from_compute_metrics(trainer.compute_metrics, key, num_labels)
        return {"eval_dataset": trainer.eval_dataset,
                "eval_spec": dataclasses.replace(spec if spec is not None else EvalSpec(), metric=metric)}

    def _evaluate(self, target: str) -> dict[str, float]:
        """Evaluate the soup with the trainer (its metrics logged with the `soup_` prefix), then restore the trained
        weights."""
        from safetensors.torch import load_file

        model = self.trainer.model
        trained = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        soup = load_file(os.path.join(target, "model.safetensors")) if os.path.isfile(
            os.path.join(target, "model.safetensors")) else self._sharded(target)
        try:
            model.load_state_dict(soup, strict=False)
            return self.trainer.evaluate(metric_key_prefix="soup")
        finally:
            model.load_state_dict(trained)

    @staticmethod
    def _sharded(target: str) -> dict[str, torch.Tensor]:
        import json

        from safetensors.torch import load_file

        with open(os.path.join(target, "model.safetensors.index.json"), encoding="utf-8") as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
        out: dict[str, torch.Tensor] = {}
        for name in files:
            out.update(load_file(os.path.join(target, name)))
        return out
