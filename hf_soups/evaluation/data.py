"""Evaluation data: loading datasets from local files or the Hub, finding columns, checking labels."""

from __future__ import annotations

import io
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import EvaluationError, LabelMismatchError

logger = logging.getLogger(__name__)

__all__ = ["EvalSet", "as_eval_dataset", "register_eval_data_form", "model_id2label",
           "is_transformed", "untransformed",
           "load_eval_dataset", "find_column", "check_labels", "label_id", "TEXT_COLUMNS", "IMAGE_COLUMNS", "LABEL_COLUMNS"]

TEXT_COLUMNS = ("text", "sentence", "sentence1", "content", "review")
IMAGE_COLUMNS = ("image", "img", "pixel_values")
LABEL_COLUMNS = ("label", "labels", "target")


@dataclass(frozen=True)
class EvalSet:
    """One evaluation set and what it really is, for the model card's `model-index`.

    Args:
        data (*any form [`as_eval_dataset`] accepts*):
            The examples: a `datasets.Dataset`, a `DatasetDict` (with `split`), a pandas DataFrame, a dict of lists,
            a csv/json/parquet path or a Hub dataset id.
        dataset_id (`str`, *optional*):
            The Hub dataset id (e.g. `"stanfordnlp/imdb"`); defaults to `data` when it is a Hub dataset id.
        config (`str`, *optional*):
            The dataset configuration (e.g. `"sst2"` of `"nyu-mll/glue"`).
        split (`str`, *optional*):
            The split (e.g. `"validation"`); also selects the split of a `DatasetDict` or a Hub dataset.
        name (`str`, *optional*):
            A pretty name for the card.

    Example:
        ```python
        >>> soup.evaluate({"test": EvalSet(test_ds, dataset_id="stanfordnlp/imdb", split="test")})
        ```
    """

    data: Any
    dataset_id: str | None = None
    config: str | None = None
    split: str | None = None
    name: str | None = None

    def describe(self, key: str) -> dict[str, str]:
        """`{"id", "config", "split", "name"}` for the card (only the known fields), `key` naming the set."""
        dataset_id = self.dataset_id
        if dataset_id is None and isinstance(self.data, str) and _looks_like_hub_id(self.data):
            dataset_id = self.data
        out = {"id": dataset_id, "config": self.config, "split": self.split, "name": self.name or key}
        return {k: v for k, v in out.items() if v is not None}


def _looks_like_hub_id(text: str) -> bool:
    return not os.path.exists(text) and re.match(r"^[\w.\-]+(/[\w.\-]+)?$", text) is not None


#: Converters for further forms of evaluation data: `(predicate, converter)` pairs tried in order, before the built-in
#: forms. Extend with [`register_eval_data_form`] (e.g. image arrays).
_FORMS: list[tuple[Callable[[Any], bool], Callable[[Any, str | None], Any]]] = []


def register_eval_data_form(predicate: Callable[[Any], bool], convert: Callable[[Any, str | None], Any]) -> None:
    """Teach [`as_eval_dataset`] another form of evaluation data.

    Args:
        predicate (`Callable[[Any], bool]`): whether an object is of this form.
        convert (`Callable[[Any, str | None], datasets.Dataset]`): `(data, split) -> Dataset`.
    """
    _FORMS.append((predicate, convert))


def as_eval_dataset(data: Any, split: str | None = None, *, parameter: str = "eval_dataset",
                    max_samples: int | None = None) -> Any:
    """Normalise evaluation data to one `datasets.Dataset`.

    Accepts a `datasets.Dataset` (also one with a `with_transform(...)` transform, or a `map()`-preprocessed
    `pixel_values` column); a `DatasetDict` (or a dict of Datasets) with `split` (defaults to its only split, else
    `"validation"`, else `"test"`); a `datasets.IterableDataset` with `max_samples` (its first examples are read); a
    pandas DataFrame; a dict of equal-length lists; a list of dicts; a csv/tsv/json/jsonl/parquet path (a csv/json
    whose `image`/`img` column holds image file paths, relative to the file, gets an `Image` column), a
    `save_to_disk` directory or an imagefolder (one sub-folder of images per class); a Hub dataset id (loaded with
    `split`); an [`EvalSet`] (its `split` is used when `split` is not given); and the forms added with
    [`register_eval_data_form`].

    Args:
        data: the evaluation data.
        split (`str`, *optional*): the split of a `DatasetDict` or Hub dataset.
        parameter (`str`, *optional*): the argument name, for error messages.
        max_samples (`int`, *optional*): keep only the first `max_samples` examples (required for an
            `IterableDataset`).

    Returns:
        `datasets.Dataset`

    Raises:
        [`EvaluationError`]: the data cannot be used (an unknown form, a missing split, an unreadable file, an
            `IterableDataset` without `max_samples`).
    """
    import datasets

    if isinstance(data, EvalSet):
        return as_eval_dataset(data.data, split if split is not None else data.split, parameter=parameter,
                               max_samples=max_samples)
    if isinstance(data, datasets.IterableDataset):
        return _take(data, max_samples, parameter)
    ds = _as_dataset(data, split, parameter)
    if max_samples is not None and len(ds) > max_samples:
        ds = ds.select(range(int(max_samples)))
    return ds


def _take(data: Any, max_samples: int | None, parameter: str) -> Any:
    """The first `max_samples` examples of an `IterableDataset`, as a `Dataset` (evaluation reads them many times)."""
    import itertools

    import datasets

    if not max_samples:
        raise EvaluationError(f"{parameter} is a streaming IterableDataset; evaluation needs a known set of examples "
                              "(it reads them once per candidate).",
                              fix="pass max_samples=N to evaluate its first N examples, or load it without "
                                  "load_dataset(streaming=True).", param="max_samples")
    rows = list(itertools.islice(iter(data), int(max_samples)))
    if not rows:
        raise EvaluationError(f"{parameter} is an empty IterableDataset.", fix="pass a dataset with examples.",
                              param=parameter)
    return datasets.Dataset.from_list(rows, features=data.features) if data.features is not None else \
        datasets.Dataset.from_list(rows)


def is_transformed(dataset: Any) -> bool:
    """Whether `dataset` carries a `with_transform(...)`/`set_transform(...)` transform."""
    fmt = getattr(dataset, "format", None)
    return isinstance(fmt, Mapping) and fmt.get("type") == "custom"


def untransformed(dataset: Any) -> Any:
    """`dataset` without its format or transform: the raw columns, for labels and column names."""
    return dataset.with_format(None) if is_transformed(dataset) else dataset


def _as_dataset(data: Any, split: str | None, parameter: str) -> Any:
    import datasets

    for predicate, convert in _FORMS:
        if predicate(data):
            return convert(data, split)
    if isinstance(data, datasets.Dataset):
        return data
    if isinstance(data, (str, os.PathLike)):
        return load_eval_dataset(os.fspath(data), split)
    if isinstance(data, datasets.DatasetDict) or (isinstance(data, Mapping) and data
                                                  and all(isinstance(v, datasets.Dataset) for v in data.values())):
        return _pick_split(data, split, parameter)
    if _is_dataframe(data):
        return _converted(lambda: datasets.Dataset.from_pandas(data, preserve_index=False), parameter)
    if isinstance(data, Mapping):
        lengths = {k: len(v) for k, v in data.items() if isinstance(v, Sequence) and not isinstance(v, str)}
        if not data or len(lengths) != len(data) or len(set(lengths.values())) != 1:
            raise EvaluationError(f"{parameter} is a dict, but not of equal-length lists ({lengths or 'empty'}).",
                                  fix="pass {'text': [...], 'label': [...]} with one entry per example.",
                                  param=parameter)
        return _converted(lambda: datasets.Dataset.from_dict(dict(data)), parameter)
    if isinstance(data, Sequence) and data and all(isinstance(r, Mapping) for r in data):
        return _converted(lambda: datasets.Dataset.from_list(list(data)), parameter)
    raise EvaluationError(
        f"{parameter} of type {type(data).__name__} is not a form of evaluation data hf_soups reads.",
        fix="pass a datasets.Dataset, a DatasetDict with split=..., a pandas DataFrame, a dict of lists, a "
            "csv/json/parquet path or a Hub dataset id.", param=parameter)


def _converted(build: Callable[[], Any], parameter: str) -> Any:
    """`build()`, a `datasets.Dataset` made from in-memory columns; Arrow's refusal of a column whose values have no
    common type (`[1, None, "x", [2]]`) becomes an [`EvaluationError`]."""
    import pyarrow

    try:
        return build()
    except (TypeError, ValueError, ArithmeticError, pyarrow.ArrowException) as e:
        first = (str(e).splitlines() or [""])[0][:200]
        raise EvaluationError(f"{parameter} cannot be converted to a dataset: a column mixes values of different "
                              f"types ({type(e).__name__}: {first}).",
                              fix="give each column one type (e.g. int labels, str texts).", param=parameter) from None


def _is_dataframe(data: Any) -> bool:
    return type(data).__name__ == "DataFrame" and hasattr(data, "to_dict") and hasattr(data, "columns")


def _pick_split(data: Mapping[str, Any], split: str | None, parameter: str) -> Any:
    names = list(data)
    if split is None:
        if len(names) == 1:
            return data[names[0]]
        for default in ("validation", "test"):
            if default in data:
                return data[default]
        raise EvaluationError(f"{parameter} is a DatasetDict with splits {names}; which one is the evaluation set?",
                              fix="pass split=<one of those>.", param="split")
    if split not in data:
        raise EvaluationError(f"{parameter} has no split '{split}' (it has {names}).",
                              fix="pass split=<one of those>.", param="split")
    return data[split]


def model_id2label(config: Mapping[str, Any]) -> dict[int, str]:
    """The model's `id2label` with int keys (transformers' default `LABEL_i` names when the config has none).

    Raises:
        [`LabelMismatchError`]: the config's `id2label` does not map integer ids to names.
    """
    from ..checkpoint.meta import normalize_id2label

    labels = normalize_id2label(config)
    if labels is None and config.get("id2label"):
        raise LabelMismatchError("config.json's id2label must map integer ids to names; got keys "
                                 f"{sorted(str(k)[:20] for k in config['id2label'])[:5]}.",
                                 fix="fix id2label in config.json (transformers cannot load it either).")
    return labels or {i: f"LABEL_{i}" for i in range(int(config.get("num_labels", 2)))}



def load_eval_dataset(source: str, split: str | None = None) -> Any:
    """Load a `datasets.Dataset` from a local csv/json/jsonl/parquet file, a saved dataset directory, or a Hub id.

    Raises:
        [`EvaluationError`]: the dataset or split cannot be loaded.
    """
    import datasets

    from .. import constants

    if constants.progress_disabled():
        datasets.disable_progress_bars()
    try:
        if os.path.isdir(source) and (os.path.exists(os.path.join(source, "dataset_info.json"))
                                      or os.path.exists(os.path.join(source, "dataset_dict.json"))):
            ds = datasets.load_from_disk(source)
        elif os.path.isfile(source):
            ext = os.path.splitext(source)[1].lstrip(".").lower()
            builder = {"jsonl": "json", "tsv": "csv"}.get(ext, ext)
            kwargs = {"delimiter": "\t"} if ext == "tsv" else {}
            ds = _small_csv(source, kwargs.get("delimiter", ",")) if builder == "csv" else None
            if ds is None:
                ds = datasets.load_dataset(builder, data_files=source, split="train", **kwargs)
            ds = _cast_image_paths(ds, os.path.dirname(os.path.abspath(source)))
        else:
            ds = datasets.load_dataset(source, split=split)
    except Exception as e:
        first = (str(e).splitlines() or [""])[0][:200]
        raise EvaluationError(f"cannot load dataset '{source}': {type(e).__name__}: {first}",
                              fix="pass a csv/json/parquet file, a directory from save_to_disk, or a Hub dataset id.",
                              param="eval_dataset") from None
    if isinstance(ds, datasets.DatasetDict):
        ds = _pick_split(ds, split, f"dataset '{source}'")
    return ds


_SMALL_CSV_BYTES = 64 * 1024 * 1024
_SMALL_CSV_ROWS = 10_000  # datasets' csv builder reads 10,000 rows at a time and casts later chunks to the first's


def _small_csv(path: str, delimiter: str) -> Any:
    """A csv/tsv file of at most 64 MiB and 10,000 rows as an in-memory `datasets.Dataset`, read as `datasets`' csv
    builder reads it (`pandas.read_csv` of one chunk, then Arrow), without the builder: no module import, no copy
    under the datasets cache, no lock (~0.25 s of a process's first load). Its fingerprint is the file's sha256, so
    a re-read is the same dataset. Other files (`None`) go through `datasets.load_dataset`, memory-mapped, whose
    chunked type inference they then get."""
    import hashlib

    import datasets
    import pandas as pd
    import pyarrow as pa

    with open(path, "rb") as f:
        data = f.read(_SMALL_CSV_BYTES + 1)
    if len(data) > _SMALL_CSV_BYTES:
        return None
    frame = pd.read_csv(io.BytesIO(data), sep=delimiter)
    if not len(frame):
        raise ValueError("the file has no rows")
    if len(frame) > _SMALL_CSV_ROWS:
        return None
    fingerprint = hashlib.sha256(b"hf_soups csv\0" + delimiter.encode() + b"\0" + data).hexdigest()[:32]
    return datasets.Dataset(pa.Table.from_pandas(frame, preserve_index=False), fingerprint=fingerprint)


def _cast_image_paths(ds: Any, base_dir: str) -> Any:
    """A csv/json listing image files: its image column (`image`/`img`) of paths, relative to the file, becomes an
    `Image` column."""
    import datasets

    for column in IMAGE_COLUMNS:
        feature = ds.features.get(column)
        if isinstance(feature, datasets.Value) and "string" in feature.dtype and len(ds):
            ds = ds.map(lambda row: {column: os.path.join(base_dir, row[column])}, desc=None)
            return ds.cast_column(column, datasets.Image())
    return ds


def find_column(columns: Sequence[str], wanted: str | None, candidates: Sequence[str], kind: str) -> str:
    """Pick `wanted`, else the first of `candidates` present.

    Raises:
        [`EvaluationError`]: no such column.
    """
    if wanted is not None:
        if wanted not in columns:
            import difflib

            close = difflib.get_close_matches(wanted, list(columns), n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise EvaluationError(f"the dataset has no {kind} column '{wanted}' (columns: {list(columns)}).",
                                  fix=f"{hint}pass {kind}_column=<one of those>.", param=f"{kind}_column")
        return wanted
    for c in candidates:
        if c in columns:
            return c
    raise EvaluationError(f"no {kind} column found among {list(columns)} (looked for {list(candidates)}).",
                          fix=f"pass {kind}_column=<one of those>.", param=f"{kind}_column")


def _is_generic(id2label: Mapping[int, str]) -> bool:
    return all(str(v) == f"LABEL_{k}" for k, v in id2label.items())


def _shown(value: Any) -> str:
    """A label value as an error shows it: its repr, cut to 60 characters."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def label_id(value: Any) -> int | None:
    """The label id an integral `value` stands for: an `int` or numpy integer, or a finite float that is exactly an
    integer (`2.0`); `None` for anything else (bools, fractional or non-finite floats, strings, lists, `None`).

    The id is not range-checked here (see [`check_labels`]).
    """
    import math
    import numbers

    if isinstance(value, bool) or type(value).__name__ == "bool_":  # True is not a class id
        return None
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        as_float = float(value)
        if math.isfinite(as_float) and as_float.is_integer():
            return int(as_float)
    return None


def _bad_label(row: int, column: str, value: Any, id2label: Mapping[int, str], model_name: str,
               count: int) -> EvaluationError:
    names = [id2label[i] for i in sorted(id2label)]
    more = f" ({count - 1} more rows are invalid too)" if count > 1 else ""
    return EvaluationError(
        f"row {row} of label column '{column}' holds {_shown(value)} ({type(value).__name__}), which is not a label of "
        f"a single-label classifier{more}. Labels must be integer ids in [0, {len(id2label)}) (ints, or floats that "
        f"are exactly integers) or the label names {names[:10]}{'...' if len(names) > 10 else ''}.",
        ingredient=model_name, param="label_column",
        fix="clean the label column (drop or fix the rows without a label; cast it to int) before evaluating.")


def column_values(dataset: Any, column: str) -> list[Any]:
    """Every value of `column`, as iterating it gives them, read in one slice (`datasets` >= 4 formats a column row
    by row when iterated: 25x slower)."""
    return list(dataset[column][:])


def check_labels(dataset: Any, label_column: str, id2label: Mapping[int, str], model_name: str) -> list[int]:
    """Map the dataset's labels to the model's label ids, refusing any mismatch.

    `ClassLabel` names must match the model's `id2label` names (case-insensitive); when the same names carry other
    ids (an imagefolder numbers its class folders alphabetically), the labels are mapped by name, as
    `datasets.Dataset.align_labels_with_mapping` and `evaluate`'s `label_mapping` do, and a note is logged. String
    labels are mapped through `label2id` (case-insensitive); integer labels (ints, numpy integers, floats that are
    exactly integers such as `2.0`) must lie in `[0, num_labels)`. Every other value (`None`, NaN, inf, `2.9`, `-0.4`,
    bools, lists, dicts) is refused, never truncated: an accepted value maps to exactly one valid id.

    Returns:
        `list[int]`: the reference label ids.

    Raises:
        [`EvaluationError`]: a value is not a label at all (the first such row, its column and value are named).
        [`LabelMismatchError`]: names differ, a label name is unknown, or ids are out of range.
    """
    import datasets
    import pyarrow

    try:
        labels = column_values(dataset, label_column)
    except (TypeError, ValueError, pyarrow.ArrowException) as e:  # e.g. structs with duplicate field names
        first = (str(e).splitlines() or [""])[0][:200]
        raise EvaluationError(f"the label column '{label_column}' cannot be read ({type(e).__name__}: {first}).",
                              ingredient=model_name, param="label_column",
                              fix="labels must be integer ids or label names, one per row.") from None
    feature = dataset.features.get(label_column)
    fix = "re-map the dataset's labels to the model's id2label (dataset.align_labels_with_mapping(label2id, column))."
    to_model: list[int] | None = None
    if isinstance(feature, datasets.ClassLabel) and not _is_generic(id2label):
        names = feature.names
        model_names = [id2label.get(i) for i in range(len(id2label))]
        lowered, model_lowered = [n.lower() for n in names], [str(n).lower() for n in model_names]
        if lowered != model_lowered:
            if sorted(lowered) != sorted(model_lowered) or len(set(lowered)) != len(lowered):
                raise LabelMismatchError(
                    f"the dataset's labels {names} do not match the model's id2label {model_names} (the same names "
                    "are required; ids may differ).", ingredient=model_name, fix=fix)
            to_model = [model_lowered.index(n) for n in lowered]
            logger.warning("the dataset's class ids differ from the model's id2label (%s vs %s); labels are mapped "
                           "by name.", names, model_names)
    label2id = {str(v).lower(): k for k, v in id2label.items()}
    ids: list[int] = []
    invalid: list[tuple[int, Any]] = []
    unknown: dict[str, None] = {}
    out_of_range: dict[int, None] = {}
    for row, value in enumerate(labels):
        if isinstance(value, str):
            mapped = label2id.get(value.lower())
            if mapped is None:
                unknown.setdefault(value, None)
            ids.append(-1 if mapped is None else mapped)
            continue
        i = label_id(value)
        if i is None:
            invalid.append((row, value))
        elif not 0 <= i < (len(to_model) if to_model is not None else len(id2label)):
            out_of_range.setdefault(i, None)
        else:
            ids.append(to_model[i] if to_model is not None else i)
            continue
        ids.append(-1)
    if invalid:
        row, value = invalid[0]
        raise _bad_label(row, label_column, value, id2label, model_name, len(invalid))
    if unknown:
        raise LabelMismatchError(f"dataset labels {', '.join(_shown(u) for u in list(unknown)[:5])} in column "
                                 f"'{label_column}' (first at row {labels.index(next(iter(unknown)))}) are not in the "
                                 f"model's label2id {sorted(label2id)}.", ingredient=model_name, fix=fix)
    if out_of_range:
        bad = sorted(out_of_range)
        first = next(r for r, v in enumerate(labels) if not isinstance(v, str) and label_id(v) in out_of_range)
        unlabeled = " (-1 marks an unlabeled example, as in a test split without labels)" if -1 in out_of_range else ""
        raise LabelMismatchError(f"dataset label ids {', '.join(_shown(b) for b in bad[:5])} in column "
                                 f"'{label_column}' (first at row {first}) are outside the model's {len(id2label)} "
                                 f"labels {_shown(dict(id2label))}{unlabeled}.",
                                 ingredient=model_name, fix=fix)
    return ids
