"""Recomputing BatchNorm statistics of a soup on calibration data (`torch.optim.swa_utils.update_bn`-style), recorded
in the recipe so that the soup can be replayed, and the baselines recalibrated the same way.

By default a soup averages BatchNorm running statistics like any floating tensor (and resolves the integer
`num_batches_tracked` by `int_rule`). The average of running variances is not the variance of the averaged network's
activations, so for ConvNets recomputing them on a small calibration set is offered as an option.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from ..checkpoint.atomic import MARKER
from ..checkpoint.meta import read_config
from ..checkpoint.reader import SAFETENSORS_INDEX, open_checkpoint
from ..checkpoint.writer import AtomicDirectory
from ..errors import SoupError
from ..modeling import load_model
from ..recipes.recipe import IN_MEMORY, BatchNormCalibration
from .data import as_eval_dataset
from .images import image_batches

__all__ = ["recompute_batchnorm", "replay_batchnorm", "recalibrate_checkpoint", "recalibrate", "calibration_batches",
           "load_calibration_data", "batchnorm_layers", "is_calibration_set"]


def batchnorm_layers(model: Any) -> list[torch.nn.Module]:
    """The BatchNorm layers of `model`."""
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


def load_calibration_data(dataset: Any, split: str | None = None) -> tuple[Any, str]:
    """`(dataset, reference)`: any form [`as_eval_dataset`] reads; a path or Hub id is recorded as such, an object
    as `"<in-memory dataset>"`."""
    reference = os.fspath(dataset) if isinstance(dataset, (str, os.PathLike)) else IN_MEMORY
    return as_eval_dataset(dataset, split, parameter="calibration_dataset"), reference


def calibration_batches(dataset: Any, processor_dir: str, config: Mapping[str, Any], *, batch_size: int = 64,
                        num_batches: int | None = None, seed: int = 0, image_column: str | None = None) -> Any:
    """The calibration batches: every example in order, or a `seed`-ed sample of `num_batches * batch_size`
    examples (kept in dataset order), preprocessed by the image processor in `processor_dir` one batch at a time."""
    n = len(dataset)
    order: list[int] | None = None
    if num_batches is not None and num_batches * batch_size < n:
        gen = torch.Generator().manual_seed(seed)
        order = sorted(torch.randperm(n, generator=gen)[: num_batches * batch_size].tolist())
    return image_batches(dataset, processor_dir, config, image_column=image_column, batch_size=batch_size, order=order)


def recalibrate(model: Any, batches: Iterable[tuple[torch.Tensor, Mapping[str, torch.Tensor]]]) -> tuple[int, str, int]:
    """Reset and re-estimate `model`'s BatchNorm statistics in place: the exact (cumulative) average of the
    per-batch statistics over `batches`, the rest of the network in eval mode.

    Returns:
        `tuple[int, str, int]`: the number of layers, the sha256 of the calibration pixels, the number of examples.

    Raises:
        [`SoupError`]: the model has no BatchNorm layer.
    """
    layers = batchnorm_layers(model)
    if not layers:
        raise SoupError("the model has no BatchNorm layer to recompute.", fix="nothing to do for this architecture.")
    momenta = [m.momentum for m in layers]
    device = next(model.parameters()).device
    digest = hashlib.sha256()
    examples = 0
    model.eval()
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: exact mean over the calibration batches
        m.train()
    try:
        with torch.no_grad():
            for _, inputs in batches:
                for key in sorted(inputs):
                    digest.update(inputs[key].contiguous().numpy().tobytes())
                examples += len(next(iter(inputs.values())))
                model(**{k: v.to(device) for k, v in inputs.items()})
    finally:
        for m, momentum in zip(layers, momenta):
            m.momentum = momentum
        model.eval()
    return len(layers), digest.hexdigest(), examples


def _stored_dtype(directory: str) -> torch.dtype | None:
    """The one floating dtype the checkpoint's tensors are stored in (`None` when mixed)."""
    with open_checkpoint(directory) as reader:
        dtypes = {info.torch_dtype for info in reader.tensors.values() if info.is_float}
    return next(iter(dtypes)) if len(dtypes) == 1 else None


def recalibrate_checkpoint(directory: str, data: Any, *, target: str | None = None, num_batches: int | None = None,
                           batch_size: int = 64, seed: int = 0, image_column: str | None = None,
                           expected_sha256: str | None = None, trust_remote_code: bool = False) -> tuple[int, str, int]:
    """Recompute the BatchNorm statistics of the checkpoint in `directory` on `data` and write its weights and
    `config.json` (in the checkpoint's own dtype) into `target`: a new directory, or `directory` itself (a soup
    inside its atomic commit, as replay does).

    Returns:
        `tuple[int, str, int]`: see [`recalibrate`].

    Raises:
        [`SoupError`]: the model has no BatchNorm layer, or the calibration pixels differ from `expected_sha256`
            (then nothing is written).
    """
    config = read_config(os.path.join(directory, "config.json"), directory)
    stored = _stored_dtype(directory)
    model = load_model(directory, config, trust_remote_code, dtype=torch.float32)
    if not batchnorm_layers(model):
        raise SoupError("the model has no BatchNorm layer to recompute.", fix="nothing to do for this architecture.")
    batches = calibration_batches(data, directory, config, batch_size=batch_size, num_batches=num_batches, seed=seed,
                                  image_column=image_column)
    layers, sha, examples = recalibrate(model, batches)
    if expected_sha256 is not None and sha != expected_sha256:
        raise SoupError(f"the calibration data differs from the recipe's (pixels sha256 {sha[:12]}, recorded "
                        f"{expected_sha256[:12]}), so the BatchNorm statistics would not be re-created.",
                        fix="pass the same calibration data (calibration_dataset=...).", param="calibration_dataset")
    target = directory if target is None else target
    for name in os.listdir(target):  # unlinked, not overwritten: the loaded model may still map the old files
        if name.endswith(".safetensors") or name == SAFETENSORS_INDEX:
            os.unlink(os.path.join(target, name))
    if stored is not None:
        model.to(stored)
    model.save_pretrained(target)
    return layers, sha, examples


def replay_batchnorm(directory: str, data: Any, record: BatchNormCalibration, *,
                     trust_remote_code: bool = False) -> int:
    """Replay a recorded recalibration on the soup being committed in `directory` (`replay_recipe`): the same
    sample, batches and image processor; pixels with another sha256 are refused.

    Returns:
        `int`: the number of BatchNorm layers recomputed.
    """
    layers, _, _ = recalibrate_checkpoint(directory, data, num_batches=record.num_batches,
                                          batch_size=record.batch_size, seed=record.seed,
                                          image_column=record.image_column, expected_sha256=record.sha256,
                                          trust_remote_code=trust_remote_code)
    return layers


def recompute_batchnorm(soup: Any, dataset: Any, *, num_batches: int | None = None, batch_size: int = 64,
                        seed: int = 0, split: str | None = None, image_column: str | None = None,
                        expected_sha256: str | None = None, **deprecated: Any) -> Any:
    """Replace a soup's BatchNorm running statistics by their average over calibration data, and return the new soup,
    whose recipe records it (so `replay_recipe` re-creates it and the card says so). `soup` itself is not changed.

    Every BatchNorm layer's statistics are reset and re-estimated with `momentum=None` (an exact average of the
    per-batch statistics), the rest of the network in eval mode; the images go through the soup's own image
    processor; the soup directory (weights, config and card) is rewritten in one atomic commit.

    Args:
        soup ([`Soup`]): a soup of models with BatchNorm layers.
        dataset (*any form [`as_eval_dataset`] reads*): calibration images. A local path (save_to_disk folder,
            parquet, csv, imagefolder) or a Hub dataset id is recorded in the recipe and re-loaded by replay; an
            in-memory dataset is recorded as `"<in-memory dataset>"` (with the sha256 of its pixels), and replay then
            needs it passed. Do not calibrate on a set whose scores you report: `Soup.evaluate` flags it.
        num_batches (`int`, *optional*): use a `seed`-ed sample of `num_batches * batch_size` examples; all
            examples, in order, when omitted.
        batch_size (`int`, *optional*, defaults to `64`): examples per calibration batch.
        seed (`int`, *optional*, defaults to `0`): the sampling seed.
        split (`str`, *optional*): the split of a Hub dataset or `DatasetDict`.
        image_column (`str`, *optional*): the image column (default: `image`/`img`).
        expected_sha256 (`str`, *optional*): refuse calibration pixels with another sha256.

    Returns:
        [`Soup`]: the recalibrated soup (its `batchnorm_layers` counts the BatchNorm layers recomputed, its
        `calibration_data` is the data, reused by [`Soup.evaluate`]).

    Raises:
        [`SoupError`]: the model has no BatchNorm layer, or the calibration data differs from `expected_sha256`.
        [`EvaluationError`]: the calibration data cannot be read.
    """
    if "max_batches" in deprecated:
        warnings.warn("recompute_batchnorm(max_batches=...) is deprecated; pass num_batches=...", FutureWarning,
                      stacklevel=3)
        num_batches = deprecated.pop("max_batches")
    deprecated.pop("label_column", None)  # calibration needs no labels
    if deprecated:
        raise TypeError(f"recompute_batchnorm() got an unexpected keyword argument '{next(iter(deprecated))}'")
    data, reference = load_calibration_data(dataset, split)
    source = soup.output_dir
    with AtomicDirectory(source, overwrite=True) as tmp:
        layers, sha, examples = recalibrate_checkpoint(
            source, data, target=tmp, num_batches=num_batches, batch_size=batch_size, seed=seed,
            image_column=image_column, expected_sha256=expected_sha256, trust_remote_code=soup.trust_remote_code)
        for name in os.listdir(source):  # the companion files; weights and config.json come from the model
            path = os.path.join(source, name)
            if not os.path.exists(os.path.join(tmp, name)) and name != MARKER and os.path.isfile(path) \
                    and not name.endswith(".safetensors") and name != SAFETENSORS_INDEX:
                shutil.copy2(path, os.path.join(tmp, name))
        record = BatchNormCalibration(dataset=reference, split=split, image_column=image_column,
                                      num_batches=num_batches, batch_size=batch_size, seed=seed, examples=examples,
                                      sha256=sha)
        recalibrated = dataclasses.replace(soup, recipe=dataclasses.replace(soup.recipe, batchnorm=record),
                                           calibration_data=data, batchnorm_layers=layers)
        recalibrated.write_card(directory=tmp)
    return recalibrated


def is_calibration_set(dataset: Any, calibration_data: Any, record: BatchNormCalibration | None) -> bool:
    """Whether an evaluation set is the BatchNorm calibration set (same object, same `datasets` fingerprint, or
    the same recorded path / Hub id)."""
    if record is None:
        return False
    if calibration_data is not None and dataset is calibration_data:
        return True
    fp = getattr(dataset, "_fingerprint", None)
    if fp is not None and fp == getattr(calibration_data, "_fingerprint", None):
        return True
    return isinstance(dataset, (str, os.PathLike)) and record.recorded and os.fspath(dataset) == record.dataset

