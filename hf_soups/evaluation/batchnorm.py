"""Recomputing BatchNorm statistics of a soup on calibration data (`torch.optim.swa_utils.update_bn`-style).

By default a soup averages BatchNorm running statistics like any floating tensor (and copies the integer
`num_batches_tracked`). The average of running variances is not the variance of the averaged network's activations,
so for ConvNets recomputing them on a small calibration set is offered as an option.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import torch

from ..checkpoint.writer import AtomicDirectory
from ..errors import SoupError
from ..modeling import load_model
from .evaluator import Evaluator

__all__ = ["recompute_batchnorm"]


def recompute_batchnorm(soup: Any, dataset: Any, *, image_column: str | None = None, label_column: str | None = None,
                        batch_size: int = 64, max_batches: int | None = None) -> int:
    """Replace a soup's BatchNorm running statistics by their cumulative average over `dataset`, in place.

    Every BatchNorm layer's statistics are reset and re-estimated with `momentum=None` (an exact average over the
    calibration batches), with the rest of the network in eval mode; the soup directory is rewritten atomically.

    Args:
        soup ([`Soup`]): a soup of `*ForImageClassification` (or other) models with BatchNorm layers.
        dataset (`datasets.Dataset`): calibration data, preprocessed like evaluation data.
        max_batches (`int`, *optional*): use at most this many batches.

    Returns:
        `int`: the number of BatchNorm layers recomputed.

    Raises:
        [`SoupError`]: the model has no BatchNorm layer.
    """
    config = soup.config
    model = load_model(soup.output_dir, config, soup.trust_remote_code, dtype=torch.float32)
    layers = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not layers:
        raise SoupError("the model has no BatchNorm layer to recompute.", fix="nothing to do for this architecture.")
    batches = Evaluator(dataset, soup.output_dir, config, image_column=image_column, label_column=label_column,
                        batch_size=batch_size).batches[:max_batches]
    momenta = [m.momentum for m in layers]
    model.eval()
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: exact mean over the calibration batches
        m.train()
    with torch.no_grad():
        for _, inputs in batches:
            model(**inputs)
    for m, momentum in zip(layers, momenta):
        m.momentum = momentum
    model.eval()
    keep = [n for n in os.listdir(soup.output_dir) if not n.endswith(".safetensors") and n != "model.safetensors.index.json"
            and os.path.isfile(os.path.join(soup.output_dir, n))]
    with AtomicDirectory(soup.output_dir, overwrite=True) as tmp:
        model.save_pretrained(tmp)
        for name in keep:
            if name != "config.json":
                shutil.copy2(os.path.join(soup.output_dir, name), os.path.join(tmp, name))
    soup._model = None
    return len(layers)
