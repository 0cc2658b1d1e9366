"""The pretrained base of a soup of full models, one value: resolved and pinned to a commit like the ingredients,
checked against them from headers only, recorded (`repo@sha`) in the recipe and the card.

LoRA adapters find their base themselves ([`hf_soups.adapters.attach_bases`]); this module covers full-model
ingredients. A base is only resolved when the user names it, or when the method needs it: then it is the
ingredients' agreed `base_model` card metadata. A uniform soup never downloads one.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from .checkpoint.local import local_meta
from .compat import BaseFindings, CompatibilityReport, Problem, base_findings
from .errors import InvalidArgumentError
from .hub.access import HubAccess
from .refs import Ingredient, IngredientMeta, IngredientRef

__all__ = ["shared_base_model", "pin_base"]


def shared_base_model(metas: Sequence[IngredientMeta]) -> str | None:
    """The pretrained base every ingredient's card declares (`base_model:`), when they all declare the same one.

    Args:
        metas (`Sequence[IngredientMeta]`): the ingredients'.

    Returns:
        `str` or `None`: the repo id, or `None` when a card declares none, several, or another one.
    """
    declared = {m.base_model for m in metas}
    if len(declared) == 1:
        only = next(iter(declared))
        if only is not None and len(only) == 1:
            return only[0]
    return None


def pin_base(base: str | os.PathLike[str] | None, metas: Sequence[IngredientMeta], report: CompatibilityReport,
             access: HubAccess, *, needed: bool, allow_pickle: bool = False) -> Ingredient | None:
    """Resolve the base of full-model ingredients to a commit and check it against them (no weight is read).

    Args:
        base (`str` or `os.PathLike`, *optional*): a Hub id, `id@rev` or a directory; `None`: the ingredients'
            agreed `base_model` card metadata when `needed`, else no base.
        metas (`Sequence[IngredientMeta]`): the ingredients'.
        report ([`CompatibilityReport`]): gets the base's problems (errors) and missing heads (a warning).
        access ([`HubAccess`]): how to reach the Hub.
        needed (`bool`): the method (or an adapter) reads the base.
        allow_pickle (`bool`, *optional*): accept a `pytorch_model.bin` base.

    Returns:
        [`Ingredient`] or `None`: the pinned base (`.name` is `repo@sha`, or the directory).

    Raises:
        [`InvalidArgumentError`]: the method needs a base, none is given and the cards do not agree on one.
        [`IncompatibleIngredientsError`]: the base lacks a tensor of the ingredients' body, or holds one in another
            shape.
        [`IngredientNotFoundError`], [`RevisionNotFoundError`]: the base cannot be resolved.
    """
    if base is None:
        if not needed:
            return None
        declared = shared_base_model(metas)
        if declared is None:
            raise InvalidArgumentError("this method needs the base (pretrained) checkpoint, and the ingredients' "
                                       "cards do not agree on one base_model.", param="base",
                                       fix="pass base=<the checkpoint the ingredients were fine-tuned from>.")
        base = declared
    parsed = IngredientRef.parse(base, None)
    if parsed.is_local:
        pinned = Ingredient(ref=parsed.ref, local_dir=parsed.local_dir)
        meta = local_meta(parsed.local_dir, pinned.name, allow_pickle=allow_pickle)  # type: ignore[arg-type]
    else:
        pinned = access.resolve(parsed)
        meta = access.fetch_meta(pinned, allow_pickle=allow_pickle)
    add_base_findings(report, base_findings(meta, metas), pinned.name)
    return pinned


def add_base_findings(report: CompatibilityReport, found: BaseFindings, name: str) -> None:
    """Add `found` to `report`: its problems as errors (raised), the heads the base lacks as one warning."""
    for problem in found.problems:
        report.add(problem)
    if found.missing_heads:
        report.warnings.append(Problem(
            name, f"tensor {found.missing_heads[0]}", f"the base lacks the head tensor(s) "
            f"{', '.join(found.missing_heads[:5])} that the ingredients have (a base trained on no task).",
            "nothing to do for a soup; a method that starts from the base takes these from the ingredients.",
            severity="warning"))
    report.raise_if_incompatible()
