"""`soup_from_hub`'s keyword arguments -> its two option objects ([`EvalSpec`], [`MergeOptions`]).

Keeps the deprecation path of the keywords that moved into those objects (one release, `FutureWarning`), and turns
a misspelled keyword into a `TypeError` that names the closest real one.
"""

from __future__ import annotations

import dataclasses
import difflib
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

from .merge.options import MergeOptions
from .recipes.recipe import EvalSpec

__all__ = ["resolve_options", "EVAL_KEYWORDS", "MERGE_KEYWORDS"]

#: Former `soup_from_hub` keywords that are now [`EvalSpec`] fields.
EVAL_KEYWORDS: tuple[str, ...] = ("strict", "max_memory", "offload_folder")
#: Former `soup_from_hub` keywords that are now [`MergeOptions`] fields.
MERGE_KEYWORDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(MergeOptions))
_EVAL_FIELDS = tuple(f.name for f in dataclasses.fields(EvalSpec))


def _unknown(function: str, name: str, known: Iterable[str]) -> TypeError:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return TypeError(f"{function}() got an unexpected keyword argument '{name}'.{hint}")


def resolve_options(
    *,
    eval_spec: EvalSpec | None,
    merge_options: MergeOptions | None,
    eval_dataset: Any,
    text_column: str | None,
    label_column: str | None,
    metric: Any,
    deprecated: Mapping[str, Any],
    parameters: Iterable[str],
    function: str = "soup_from_hub",
) -> tuple[EvalSpec, MergeOptions]:
    """Merge the option objects, the top-level evaluation arguments and the deprecated keywords.

    Top-level `text_column`, `label_column` and a non-default `metric` override the `eval_spec`'s; a deprecated
    keyword overrides the option object's field and warns.

    Raises:
        `TypeError`: an unknown keyword (the message names the closest valid one), or `eval_kwargs` holding a key
        that is not an [`EvalSpec`] field.
    """
    spec = eval_spec if eval_spec is not None else EvalSpec()
    options = merge_options if merge_options is not None else MergeOptions()
    if not isinstance(spec, EvalSpec):
        raise TypeError(f"eval_spec must be an EvalSpec, got {type(spec).__name__}.")
    if not isinstance(options, MergeOptions):
        raise TypeError(f"merge_options must be a MergeOptions, got {type(options).__name__}.")
    eval_changes: dict[str, Any] = {}
    merge_changes: dict[str, Any] = {}
    for name, value in deprecated.items():
        if name in EVAL_KEYWORDS:
            eval_changes[name] = value
            target = f"eval_spec=EvalSpec({name}=...)"
        elif name in MERGE_KEYWORDS:
            merge_changes[name] = value
            target = f"merge_options=MergeOptions({name}=...)"
        elif name == "eval_kwargs":
            for key, v in (value or {}).items():
                if key not in _EVAL_FIELDS:
                    raise _unknown("EvalSpec", key, _EVAL_FIELDS)
                eval_changes[key] = v
            target = "eval_spec=EvalSpec(...)"
        else:
            raise _unknown(function, name, [*parameters, *EVAL_KEYWORDS, *MERGE_KEYWORDS, "eval_kwargs"])
        warnings.warn(f"{function}({name}=...) is deprecated and will be removed in the next release; pass "
                      f"{target} instead.", FutureWarning, stacklevel=3)
    if text_column is not None:
        eval_changes["text_column"] = text_column
    if label_column is not None:
        eval_changes["label_column"] = label_column
    if metric != "accuracy" or eval_spec is None:  # "accuracy" is the default: it does not override a spec's metric
        eval_changes.setdefault("metric", metric)
    if isinstance(eval_dataset, str) and spec.dataset is None:
        eval_changes["dataset"] = eval_dataset
    if eval_changes:
        spec = dataclasses.replace(spec, **eval_changes)
    if merge_changes:
        options = dataclasses.replace(options, **merge_changes)
    return spec, options
