"""Evaluation data: loading datasets from local files or the Hub, finding columns, checking labels."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import EvaluationError, LabelMismatchError

__all__ = ["load_eval_dataset", "find_column", "check_labels", "TEXT_COLUMNS", "IMAGE_COLUMNS", "LABEL_COLUMNS"]

TEXT_COLUMNS = ("text", "sentence", "sentence1", "content", "review")
IMAGE_COLUMNS = ("image", "img", "pixel_values")
LABEL_COLUMNS = ("label", "labels", "target")


def load_eval_dataset(source: str, split: str | None = None) -> Any:
    """Load a `datasets.Dataset` from a local csv/json/jsonl/parquet file, a saved dataset directory, or a Hub id.

    Raises:
        [`EvaluationError`]: the dataset or split cannot be loaded.
    """
    import datasets

    try:
        if os.path.isdir(source) and (os.path.exists(os.path.join(source, "dataset_info.json"))
                                      or os.path.exists(os.path.join(source, "dataset_dict.json"))):
            ds = datasets.load_from_disk(source)
        elif os.path.isfile(source):
            ext = os.path.splitext(source)[1].lstrip(".").lower()
            builder = {"jsonl": "json", "tsv": "csv"}.get(ext, ext)
            kwargs = {"delimiter": "\t"} if ext == "tsv" else {}
            ds = datasets.load_dataset(builder, data_files=source, split="train", **kwargs)
        else:
            ds = datasets.load_dataset(source, split=split)
    except Exception as e:
        raise EvaluationError(f"cannot load dataset '{source}': {type(e).__name__}: {str(e).splitlines()[0][:200]}",
                              fix="pass a csv/json/parquet file, a directory from save_to_disk, or a Hub dataset id.") from None
    if isinstance(ds, datasets.DatasetDict):
        name = split or ("validation" if "validation" in ds else next(iter(ds)))
        if name not in ds:
            raise EvaluationError(f"dataset '{source}' has no split '{name}' (it has {list(ds)}).",
                                  fix="pass --split with one of those.")
        ds = ds[name]
    return ds


def find_column(columns: Sequence[str], wanted: str | None, candidates: Sequence[str], kind: str) -> str:
    """Pick `wanted`, else the first of `candidates` present.

    Raises:
        [`EvaluationError`]: no such column.
    """
    if wanted is not None:
        if wanted not in columns:
            raise EvaluationError(f"the dataset has no {kind} column '{wanted}' (columns: {list(columns)}).",
                                  fix=f"pass the right {kind}_column.")
        return wanted
    for c in candidates:
        if c in columns:
            return c
    raise EvaluationError(f"no {kind} column found among {list(columns)} (looked for {list(candidates)}).",
                          fix=f"pass {kind}_column=<name>.")


def _is_generic(id2label: Mapping[int, str]) -> bool:
    return all(str(v) == f"LABEL_{k}" for k, v in id2label.items())


def check_labels(dataset: Any, label_column: str, id2label: Mapping[int, str], model_name: str) -> list[int]:
    """Map the dataset's labels to the model's label ids, refusing any mismatch.

    `ClassLabel` names must match the model's `id2label` at the same ids; string labels are mapped through
    `label2id`; integer labels must lie in `[0, num_labels)`.

    Returns:
        `list[int]`: the reference label ids.

    Raises:
        [`LabelMismatchError`]: names differ, a label is unknown, or ids are out of range.
    """
    import datasets

    labels = list(dataset[label_column])
    feature = dataset.features.get(label_column)
    fix = "re-map the dataset's labels to the model's id2label (dataset.align_labels_with_mapping(label2id, column))."
    if isinstance(feature, datasets.ClassLabel) and not _is_generic(id2label):
        names = feature.names
        model_names = [id2label.get(i) for i in range(len(id2label))]
        if [n.lower() for n in names] != [str(n).lower() for n in model_names]:
            raise LabelMismatchError(
                f"the dataset's labels {names} do not match the model's id2label {model_names} (same ids, same "
                "names required).", ingredient=model_name, fix=fix)
    if labels and isinstance(labels[0], str):
        label2id = {str(v).lower(): int(k) for k, v in id2label.items()}
        unknown = sorted({x for x in labels if x.lower() not in label2id})
        if unknown:
            raise LabelMismatchError(f"dataset labels {unknown[:5]} are not in the model's label2id "
                                     f"{sorted(label2id)}.", ingredient=model_name, fix=fix)
        return [label2id[x.lower()] for x in labels]
    ids = [int(x) for x in labels]
    bad = sorted({i for i in ids if not 0 <= i < len(id2label)})
    if bad:
        raise LabelMismatchError(f"dataset label ids {bad[:5]} are outside the model's {len(id2label)} labels "
                                 f"{dict(id2label)}.", ingredient=model_name, fix=fix)
    return ids
