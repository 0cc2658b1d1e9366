"""Image evaluation data as vision users hold it, preprocessed one batch at a time.

The forms of image data go through [`as_eval_dataset`] like every other form (this module registers the refusal of
bare arrays with [`register_eval_data_form`]); what reaches an evaluator is a `datasets.Dataset`:

- whose image column holds `Image` features, PIL images, image file paths, or uint8 arrays (`HxW` or `HxWxC`);
- whose `pixel_values` column was already preprocessed (`dataset.map(...)` with an image processor): used as it is,
  for every model;
- with a `with_transform(...)`/`set_transform(...)` transform that returns `pixel_values`: used as it is; the labels
  are read from the untransformed columns.

(An `IterableDataset` is read up to `max_samples` examples, a `DatasetDict` needs `split`: see [`as_eval_dataset`].)
Anything else ends in an [`EvaluationError`] that says what to pass.

Images are converted to the model's channel count (`config.num_channels`: 1 -> `"L"`, 3 -> `"RGB"`), not forced to
RGB. No list of every preprocessed image is kept: a batch is preprocessed when it is used, and kept for the next pass
only while the cached batches stay under `HF_SOUPS_EVAL_CACHE_MB` (default 64 MB), so tens of thousands of images
at 224 px are evaluated in bounded memory.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .. import constants
from ..errors import EvaluationError
from .data import IMAGE_COLUMNS, find_column, is_transformed, register_eval_data_form, untransformed

__all__ = ["ImageBatches", "image_batches", "image_mode", "PIXEL_COLUMN"]

PIXEL_COLUMN = "pixel_values"
_WHAT_TO_PASS = ("pass a datasets.Dataset with an image column (Image feature, PIL images, file paths or uint8 arrays) "
                 "and a label column, e.g. Dataset.from_dict({'image': images, 'label': labels}).cast_column('image', "
                 "datasets.Image()); or one whose 'pixel_values' column is already preprocessed.")


def image_mode(config: Mapping[str, Any]) -> str:
    """The PIL mode the model takes: `"L"` for 1-channel models, `"RGBA"` for 4, else `"RGB"`."""
    n = config.get("num_channels") or (config.get("vision_config") or {}).get("num_channels") or 3
    return {1: "L", 4: "RGBA"}.get(int(n), "RGB")


def _is_array(data: Any) -> bool:
    """A bare numpy array or torch tensor (no columns, no labels)."""
    return type(data).__module__.split(".")[0] in ("numpy", "torch") and hasattr(data, "shape")


def _refuse_array(data: Any, split: str | None) -> Any:
    raise EvaluationError(f"cannot evaluate a bare {type(data).__name__} of shape {tuple(data.shape)}: it has no "
                          "labels and no columns.", fix=_WHAT_TO_PASS, param="eval_dataset")


register_eval_data_form(_is_array, _refuse_array)


def _image_error(row: int | None, column: str | None, path: str | None, why: str) -> EvaluationError:
    where = f"row {row} of image column '{column}'" if row is not None else "an image"
    return EvaluationError(f"{where}: {why}.", file=path, param="image_column",
                           fix="fix or drop that row (each image must be a readable image file or bytes within "
                               "HF_SOUPS_MAX_IMAGE_MB and PIL.Image.MAX_IMAGE_PIXELS).")


def _read_image_file(path: str, row: int | None, column: str | None) -> bytes:
    """The bytes of the image file `path`: a regular file (never a FIFO, socket, device or directory), opened without
    blocking, at most `HF_SOUPS_MAX_IMAGE_MB`."""
    from ..checkpoint.safe_files import open_regular

    if "://" in path or "::" in path:
        raise _image_error(row, column, path, "is a URL or remote path; only local image files are read")
    limit = constants.max_image_bytes()
    fd = open_regular(path, lambda why: _image_error(row, column, path, f"the image file {why}"))
    with os.fdopen(fd, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise _image_error(row, column, path, f"the image file is larger than {limit} bytes (HF_SOUPS_MAX_IMAGE_MB)")
    return data


def _decode(data: bytes, mode: str, row: int | None, column: str | None, path: str | None) -> Any:
    """Decode image bytes to a PIL image in `mode`; every PIL failure (not an image, truncated, a decompression bomb,
    whose warning is promoted to an error) becomes an [`EvaluationError`] naming the row and the file."""
    import io
    import warnings

    from PIL import Image, ImageOps

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                if im.getexif().get(Image.ExifTags.Base.Orientation) is not None:  # as `datasets.Image` decodes
                    return ImageOps.exif_transpose(im).convert(mode)
                return im.convert(mode)
    except Exception as e:  # decoding untrusted bytes: PIL raises OSError, SyntaxError, ValueError, EOFError, ...
        first = (str(e).splitlines() or [""])[0][:200]
        raise _image_error(row, column, path, f"cannot be decoded as an image ({type(e).__name__}: {first})") \
            from None


def _to_image(value: Any, mode: str, row: int | None = None, column: str | None = None) -> Any:
    from PIL import Image

    if isinstance(value, Image.Image):
        return value if value.mode == mode else value.convert(mode)
    if isinstance(value, (str, os.PathLike)):
        path = os.fspath(value)
        return _decode(_read_image_file(path, row, column), mode, row, column, path)
    if isinstance(value, (bytes, bytearray)):
        return _decode(bytes(value), mode, row, column, None)
    if isinstance(value, Mapping) and ("bytes" in value or "path" in value):  # an undecoded datasets Image
        if value.get("bytes") is not None:
            return _to_image(value["bytes"], mode, row, column)
        if value.get("path") is not None:
            return _to_image(value["path"], mode, row, column)
        raise _image_error(row, column, None, "holds neither image bytes nor a path")
    import numpy as np

    arr = value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    integral = np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_
    if arr.ndim in (2, 3) and integral and arr.size and arr.min() >= 0 and arr.max() <= 255 \
            and (arr.ndim == 2 or arr.shape[-1] in (3, 4)):
        return Image.fromarray(arr.astype(np.uint8)).convert(mode)
    raise EvaluationError(f"the image column holds {type(value).__name__} values of dtype {arr.dtype} and shape "
                          f"{tuple(arr.shape)}, which are not images (uint8 HxW or HxWxC).", fix=_WHAT_TO_PASS)


def _stack_pixels(values: Sequence[Any]) -> torch.Tensor:
    try:
        return torch.stack([v.float() if isinstance(v, torch.Tensor) else torch.as_tensor(v, dtype=torch.float32)
                            for v in values])
    except (TypeError, ValueError, RuntimeError) as e:
        raise EvaluationError(f"the preprocessed 'pixel_values' cannot be stacked into a batch ({e}).",
                              fix="preprocess every image to the same shape, or pass the raw images.") from None


class ImageBatches(Sequence):
    """`(indices, {"pixel_values": tensor})` batches of an image dataset, preprocessed when indexed.

    Args:
        dataset (`datasets.Dataset`): the data (possibly with a transform).
        column (`str`): the image column (`pixel_values` when already preprocessed).
        processor: the model's image processor (`None` when the pixels are already preprocessed).
        mode (`str`): PIL mode of the model's input (see [`image_mode`]).
        batch_size (`int`): examples per batch.
        order (`Sequence[int]`, *optional*): the example order (a seeded shuffle for calibration).
        num_channels (`int`): channels the model expects, checked against preprocessed pixels.
    """

    def __init__(self, dataset: Any, column: str, processor: Any, mode: str, batch_size: int,
                 order: Sequence[int] | None = None, num_channels: int = 3) -> None:
        self.dataset, self.column, self.processor, self.mode = dataset, column, processor, mode
        self.batch_size, self.num_channels = batch_size, num_channels
        self.order = list(order) if order is not None else None
        self.size = len(self.order) if self.order is not None else len(dataset)
        self._cache: dict[int, tuple[torch.Tensor, dict[str, torch.Tensor]]] = {}
        self._cached_bytes = 0
        self._budget = constants.eval_cache_bytes()

    def __len__(self) -> int:
        return (self.size + self.batch_size - 1) // self.batch_size

    def indices(self, i: int) -> torch.Tensor:
        start, stop = i * self.batch_size, min((i + 1) * self.batch_size, self.size)
        if self.order is not None:
            return torch.tensor(self.order[start:stop])
        return torch.arange(start, stop)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:  # type: ignore[override]
        if not isinstance(i, int):
            raise TypeError("ImageBatches are indexed by batch number")
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        if i in self._cache:
            return self._cache[i]
        with torch.inference_mode(False):  # cached batches also feed autograd (learned soups)
            return self._load(i)

    def _load(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        idx = self.indices(i)
        rows = self.dataset[idx.tolist()] if self.order is not None else \
            self.dataset[int(idx[0]) : int(idx[-1]) + 1]
        if is_transformed(self.dataset) and PIXEL_COLUMN not in rows:
            raise EvaluationError(f"the dataset's transform returns {sorted(rows)}, without 'pixel_values'.",
                                  fix="return 'pixel_values' from the transform, or pass the dataset without it "
                                      "(dataset.with_transform(None)) so each model's image processor is applied.")
        values = rows[self.column if not is_transformed(self.dataset) else PIXEL_COLUMN]
        if self.processor is None:
            pixels = _stack_pixels(values)
            if pixels.ndim != 4 or pixels.shape[1] != self.num_channels:
                raise EvaluationError(f"preprocessed 'pixel_values' have shape {tuple(pixels.shape[1:])} per example; "
                                      f"the model takes {self.num_channels} channels (C, H, W).",
                                      fix="preprocess with the model's image processor, or pass the raw images.")
        else:
            rows_of = idx.tolist()
            pixels = self.processor([_to_image(v, self.mode, rows_of[k], self.column) for k, v in enumerate(values)],
                                    return_tensors="pt")["pixel_values"]
        batch = (idx, {PIXEL_COLUMN: pixels})
        nbytes = pixels.element_size() * pixels.nelement()
        if self._cached_bytes + nbytes <= self._budget:
            self._cache[i] = batch
            self._cached_bytes += nbytes
        return batch

    def __iter__(self):  # type: ignore[override]
        for i in range(len(self)):
            yield self[i]


def _undecoded(dataset: Any, column: str) -> Any:
    """`dataset` with its `Image` column left undecoded (`{"bytes", "path"}`): hf_soups reads and decodes each image
    itself, with the checks of [`_read_image_file`] and [`_decode`], instead of `datasets` opening any path."""
    import datasets

    feature = dataset.features.get(column)
    if isinstance(feature, datasets.Image) and feature.decode:
        return dataset.cast_column(column, datasets.Image(decode=False))
    return dataset


def image_batches(dataset: Any, processor_dir: str, config: Mapping[str, Any], *, image_column: str | None,
                  batch_size: int, order: Sequence[int] | None = None) -> ImageBatches:
    """[`ImageBatches`] of `dataset` for the model of `config`, preprocessed by the image processor in
    `processor_dir`, unless the dataset already holds `pixel_values` (a column or a transform's output).

    Raises:
        [`EvaluationError`]: no image column, or no image processor for raw images.
    """
    import logging

    columns = list(untransformed(dataset).column_names)
    channels = {"L": 1, "RGBA": 4}.get(image_mode(config), 3)
    if is_transformed(dataset):
        column, preprocessed = PIXEL_COLUMN, True
    else:
        raw_columns = [c for c in IMAGE_COLUMNS if c != PIXEL_COLUMN]
        if image_column is None and PIXEL_COLUMN in columns and not any(c in columns for c in raw_columns):
            column = PIXEL_COLUMN
        else:
            column = find_column(columns, image_column, IMAGE_COLUMNS, "image")
        preprocessed = column == PIXEL_COLUMN
        dataset = _undecoded(dataset, column)
    processor = None
    if preprocessed:
        logging.getLogger(__name__).info("the dataset holds preprocessed pixel_values: they are used as they are for "
                                         "every model (the ingredients' image processors are not applied).")
    else:
        from transformers import AutoImageProcessor

        try:
            processor = AutoImageProcessor.from_pretrained(processor_dir)
        except (OSError, ValueError) as e:
            raise EvaluationError(f"no image processor could be loaded from '{processor_dir}' ({e}).",
                                  fix="save the image processor with the checkpoint (processor.save_pretrained), "
                                      "or pass a dataset with preprocessed 'pixel_values'.") from None
    return ImageBatches(dataset, column, processor, image_mode(config), batch_size, order=order,
                        num_channels=channels)
