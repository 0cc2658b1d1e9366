"""The front door's keywords: each concept has one name, and every other name a user is likely to try is an error
that names the right one.

`soup_from_hub(..., split="validation")` would be Python's bare `TypeError`; [`guard_keywords`] turns it into an
[`UnknownArgumentError`] (also a `TypeError`) saying `eval_spec=EvalSpec(split=...)`, while `inspect.signature` still
shows the function's real parameters.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from .errors import UnknownArgumentError
from .merge.options import MergeOptions
from .recipes.recipe import EvalSpec

__all__ = ["WRONG_WAYS", "guard_keywords", "resolve_options", "unknown_keyword"]

F = TypeVar("F", bound=Callable[..., Any])

_EVAL_FIELDS = tuple(f.name for f in dataclasses.fields(EvalSpec))
_MERGE_FIELDS = tuple(f.name for f in dataclasses.fields(MergeOptions))
_BOTH = {
    "dtype": "merge_options=MergeOptions(dtype=...) for the soup's dtype, or eval_spec=EvalSpec(dtype=...) to "
             "evaluate under autocast",
    "device": "merge_options=MergeOptions(device=...) for where the soup is computed, or eval_spec=EvalSpec("
              "device=...) for where held-out evaluations run",
}

#: A keyword `soup_from_hub` does not take -> the way to say it (every [`EvalSpec`] and [`MergeOptions`] field, the
#: Hub access, the keywords of earlier versions, and the names of other libraries).
WRONG_WAYS: dict[str, str] = {
    **{name: f"eval_spec=EvalSpec({name}=...)" for name in _EVAL_FIELDS},
    **{name: f"merge_options=MergeOptions({name}=...)" for name in _MERGE_FIELDS},
    **_BOTH,
    "dataset": "eval_dataset=... (the data itself), or eval_spec=EvalSpec(dataset=...) (a file or Hub id)",
    "eval_data": "eval_dataset=...",
    "eval_split": "eval_spec=EvalSpec(split=...)",
    "eval_kwargs": "eval_spec=EvalSpec(...)",
    "token": "access=HubAccess(token=...)",
    "endpoint": "access=HubAccess(endpoint=...)",
    "cache_dir": "access=HubAccess(cache_dir=...)",
    "hf_token": "access=HubAccess(token=...)",
    "use_auth_token": "access=HubAccess(token=...)",
    "rank": "as_adapter=<rank> (as_adapter takes the rank of the adapter written)",
    "base_model": "base=... (the pretrained checkpoint; the card's base_model is derived from it)",
    "base_model_name_or_path": "base=...",
    "models": "refs=[...]",
    "model_ids": "refs=[...]",
    "ingredients": "refs=[...]",
    "output": "output_dir=...",
    "save_directory": "output_dir=...",
    "merge_method": "method=...",
    "trust_remote": "trust_remote_code=True",
}


def unknown_keyword(function: str, name: str, known: Iterable[str]) -> UnknownArgumentError:
    """The error for `function(name=...)`, a keyword it does not take: the right way when [`WRONG_WAYS`] knows it,
    else the closest real parameter.

    Args:
        function (`str`): the function's name, as the user called it.
        name (`str`): the keyword given.
        known (`Iterable[str]`): the function's real keyword parameters.

    Returns:
        [`UnknownArgumentError`]: to raise.
    """
    known = list(known)
    if name in WRONG_WAYS:
        fix = f"pass {WRONG_WAYS[name]}."
    else:
        close = difflib.get_close_matches(name, [*known, *WRONG_WAYS], n=1, cutoff=0.6)
        if close and close[0] in WRONG_WAYS:
            fix = f"did you mean '{close[0]}'? Pass {WRONG_WAYS[close[0]]}."
        elif close:
            fix = f"did you mean '{close[0]}'? Pass {close[0]}=..."
        else:
            fix = f"pass one of its parameters: {', '.join(known)}."
    return UnknownArgumentError(f"{function}() got an unexpected keyword argument '{name}'.", fix=fix, param=name)


def guard_keywords(fn: F) -> F:
    """Decorate `fn` so that an unknown keyword raises [`unknown_keyword`]'s error instead of Python's bare one.

    `inspect.signature(fn)` stays `fn`'s own (the wrapper is `functools.wraps`ed); `fn` must take no `**kwargs`.

    Args:
        fn (`Callable`): the function to guard.

    Returns:
        `Callable`: the guarded function.
    """
    signature = inspect.signature(fn)
    names = [n for n, p in signature.parameters.items()
             if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    accepted = frozenset(names)

    @functools.wraps(fn)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        for name in kwargs:
            if name not in accepted:
                raise unknown_keyword(fn.__name__, name, names)
        return fn(*args, **kwargs)

    return guarded  # type: ignore[return-value]


def resolve_options(eval_spec: EvalSpec | None, merge_options: MergeOptions | None,
                    eval_dataset: Any) -> tuple[EvalSpec, MergeOptions]:
    """The evaluation and merge settings of one call, with their defaults.

    Args:
        eval_spec ([`EvalSpec`], *optional*): every evaluation setting.
        merge_options ([`MergeOptions`], *optional*): every merge setting.
        eval_dataset (*optional*): the held-out data; a string (a file or Hub id) is recorded as the spec's
            `dataset` when the spec names none.

    Returns:
        `tuple[EvalSpec, MergeOptions]`

    Raises:
        [`UnknownArgumentError`]: an option object of the wrong type (a dict, say).
    """
    spec = eval_spec if eval_spec is not None else EvalSpec()
    options = merge_options if merge_options is not None else MergeOptions()
    for name, value, cls in (("eval_spec", spec, EvalSpec), ("merge_options", options, MergeOptions)):
        if not isinstance(value, cls):
            fix = (f"pass {name}={cls.__name__}(**{{...}})." if isinstance(value, Mapping)
                   else f"pass {name}={cls.__name__}(...).")
            raise UnknownArgumentError(f"{name} must be a {cls.__name__}, got {type(value).__name__}.", fix=fix,
                                       param=name)
    if isinstance(eval_dataset, str) and spec.dataset is None:
        spec = dataclasses.replace(spec, dataset=eval_dataset)
    return spec, options
