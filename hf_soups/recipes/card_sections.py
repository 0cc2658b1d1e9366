"""The card sections of the methods whose parameters are too many to list (`register_method(card_section=...)`):
Model Stock's t summarised per tensor group, the learned soup by layer's weights as a groups x ingredients table.

Each is `fn(parameters, ingredients) -> markdown`, pure: the recipe's recorded parameters in,
markdown out (no file read), every outside name (tensor groups, ingredients) escaped with [`escape_markdown`].
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from ..text import escape_markdown

__all__ = ["model_stock_section", "learned_by_layer_section"]

def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def model_stock_section(parameters: Mapping[str, Any], ingredients: Sequence[str]) -> str:
    """Model Stock's interpolation ratio t per tensor group (the embeddings, each block, the head, ...): the number
    of tensors and the min, median and max of their t, from `parameters["t"]` (t per tensor); then the tensors where
    the task vectors cancel out (`parameters["singular"]`), which keep the base.

    Args:
        parameters (`Mapping[str, Any]`): Model Stock's recorded parameters.
        ingredients (`Sequence[str]`): the ingredients' display names (unused).

    Returns:
        `str`: markdown (`""` without a t per tensor).
    """
    from ..merge.groups import group_of  # the learned soup by layer's groups

    per_tensor = parameters.get("t")
    groups: dict[str, list[float]] = {}
    for name, t in (per_tensor.items() if isinstance(per_tensor, Mapping) else ()):
        value = _number(t)
        if value is not None:
            groups.setdefault(group_of(str(name)), []).append(value)
    if not groups:
        return ""
    lines = ["The soup is t·mean(ingredients) + (1−t)·base, t per tensor; summarised per tensor group "
             "(t = 1 where the base lacks the tensor: the ingredients' mean):", "",
             "| tensor group | tensors | min t | median t | max t |", "|---|---|---|---|---|"]
    lines += [f"| {escape_markdown(g, code=True)} | {len(ts)} | {min(ts):.4f} | {statistics.median(ts):.4f} | "
              f"{max(ts):.4f} |" for g, ts in groups.items()]
    singular = [str(s) for s in parameters.get("singular") or () if isinstance(s, str)]
    if singular:
        shown = ", ".join(escape_markdown(s, code=True) for s in singular[:5])
        lines += ["", f"{len(singular)} tensor(s) kept the base (t = 0: their task vectors cancel out): {shown}"
                  + (", …" if len(singular) > 5 else "") + "."]
    return "\n".join(lines)


def learned_by_layer_section(parameters: Mapping[str, Any], ingredients: Sequence[str]) -> str:
    """The learned weights per parameter group (rows) and ingredient (columns), from `parameters["groups"]`
    (`{group: [weight per ingredient]}`), and the optimisation steps (`parameters["steps"]`).

    Args:
        parameters (`Mapping[str, Any]`): the learned soup by layer's recorded parameters.
        ingredients (`Sequence[str]`): the ingredients' display names, in input order (the columns).

    Returns:
        `str`: markdown (`""` without recorded groups).
    """
    groups = parameters.get("groups")
    if not isinstance(groups, Mapping) or not groups:
        return ""
    width = max(len(ingredients), *(len(w) for w in groups.values() if isinstance(w, Sequence)))
    names = [escape_markdown(ingredients[k]) if k < len(ingredients) else str(k + 1) for k in range(width)]
    steps = _number(parameters.get("steps"))
    lines = ["Weights per parameter group (softmax over the ingredients, learned on the held-out data"
             + (f" in {int(steps)} steps" if steps is not None else "") + "):", "",
             "| group | " + " | ".join(names) + " |", "|---|" + "---|" * width]
    for group, weights in groups.items():
        row = list(weights) if isinstance(weights, Sequence) and not isinstance(weights, str) else []
        cells = [f"{v:.4f}" if (v := _number(row[k]) if k < len(row) else None) is not None else "–"
                 for k in range(width)]
        lines.append(f"| {escape_markdown(group, code=True)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
