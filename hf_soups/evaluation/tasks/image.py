"""Image classification (`*ForImageClassification`, single label); the data forms are `evaluation.images`'."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..data import IMAGE_COLUMNS, LABEL_COLUMNS, check_labels, find_column, model_id2label
from ..images import image_batches
from ..metrics import Metric, _native_accuracy
from .base import Columns, Prepared, Task, num_labels_of, register_task

__all__ = ["ImageClassification"]


@register_task
class ImageClassification(Task):
    """Single-label image classification: argmax predictions, accuracy, cross-entropy."""

    name = "image"
    title = "image classification"
    architectures = ("ForImageClassification",)
    pipeline_tag = "image-classification"
    auto_class = "AutoModelForImageClassification"
    pipeline_class = "ImageClassificationPipeline"
    processor_per_model = True
    columns_help = "--image-column, --label-column"

    @classmethod
    def serves(cls, config: Mapping[str, Any]) -> bool:
        return super().serves(config) and config.get("problem_type") in (None, "single_label_classification") \
            and num_labels_of(config) > 1

    def find_columns(self, columns: Sequence[str], asked: Columns) -> dict[str, Any]:
        # the image column is found by `image_batches` (a transform's `pixel_values` needs none)
        return {"label": find_column(columns, asked.label, LABEL_COLUMNS, "label"), "asked_image": asked.image}

    def check_columns(self, columns: Sequence[str], asked: Columns) -> dict[str, Any]:
        found = self.find_columns(columns, asked)
        return {"label": found["label"], "image": find_column(columns, asked.image, IMAGE_COLUMNS, "image")}

    def references(self, raw: Any, found: Mapping[str, Any], name: str) -> torch.Tensor:
        return torch.tensor(check_labels(raw, found["label"], model_id2label(self.config), name))

    def prepare(self, dataset: Any, raw: Any, reference_dir: str, found: Mapping[str, Any], references: Any, *,
                batch_size: int, max_length: int) -> Prepared:
        batches = image_batches(dataset, reference_dir, self.config, image_column=found.get("asked_image"),
                                batch_size=batch_size)
        return Prepared(batches, len(references), (num_labels_of(self.config),), targets=references)

    def metrics(self) -> dict[str, Metric]:
        return {"accuracy": Metric("accuracy", _native_accuracy, "accuracy")}
