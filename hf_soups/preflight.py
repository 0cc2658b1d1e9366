"""Preflight: small files and headers -> the verdict, before any weight moves.

This module owns the three checks a soup passes before its weights are read, and settles each once:

- the verdict on config files and safetensors headers ([`hf_soups.compat.verdict`]) with the adapters' problems;
- the remote-code check (a config with `auto_map` and no `trust_remote_code`): one problem in the verdict, which a
  soup turns into [`UnsafeCheckpointError`] before anything else;
- the architecture check ([`hf_soups.architecture.architecture_problems`], a meta-device build): run in a background
  thread while the weights are merged, and settled before the commit (or before any download or evaluation).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from . import adapters
from .compat import CompatibilityReport, remote_code_problems, tied_extras
from .compat import verdict as headers_verdict
from .errors import SoupError, UnsafeCheckpointError
from .problem import Problem
from .refs import Ingredient, IngredientMeta

__all__ = ["Preflight", "BackgroundArchCheck", "preflight", "verdict", "architecture_findings"]

logger = logging.getLogger(__name__)


def architecture_findings(metas: Sequence[IngredientMeta]) -> list[Problem]:
    """The meta-device architecture check, once per distinct (config, tensor names); ingredients whose tensors are
    unknown before download (pickled Hub weights) are skipped (the verdict already warns about them)."""
    from .architecture import architecture_problems

    seen: set[str] = set()
    problems: list[Problem] = []
    for meta in metas:
        if meta.tensors is None:
            continue
        key = json.dumps(meta.config, sort_keys=True, default=str) + "|".join(sorted(meta.tensors))
        if key not in seen:
            seen.add(key)
            problems.extend(architecture_problems(meta.name, meta.config, meta.tensors))
    return problems


def verdict(metas: Sequence[IngredientMeta], *, align_labels: bool, arch_check: bool, trust_remote_code: bool = False,
            ingredients: Sequence[Ingredient] = ()) -> CompatibilityReport:
    """The whole verdict, in the foreground: headers, the architecture check when `arch_check`, remote code and the
    adapters' problems.

    Args:
        metas (`Sequence[IngredientMeta]`): the ingredients' metas; the first is the reference.
        align_labels (`bool`): accept a permuted `id2label`.
        arch_check (`bool`): run the meta-device architecture check now.
        trust_remote_code (`bool`, *optional*): accept configs with `auto_map`.
        ingredients (`Sequence[Ingredient]`, *optional*): the ingredients (for the adapters' problems).

    Returns:
        [`CompatibilityReport`]
    """
    report = headers_verdict(metas, align_labels=align_labels)
    if arch_check:
        for problem in architecture_findings(metas):
            report.add(problem)
    for problem in remote_code_problems(metas, trust_remote_code):  # the soup refuses them: so does the verdict
        report.add(problem)
    for problem in adapters.adapter_problems(ingredients, metas):
        report.add(problem)
    return report


class BackgroundArchCheck:
    """The architecture check (seconds, mostly importing the model's transformers module) run in a thread while the
    weights are merged; [`settle`] adds its findings and raises on errors before any download, evaluation or commit.
    Settling twice is settling once.
    """

    def __init__(self, metas: Sequence[IngredientMeta]) -> None:
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hf-soups-arch")
        self._future = pool.submit(architecture_findings, metas)
        pool.shutdown(wait=False)
        self._settled = False

    def settle(self, report: CompatibilityReport) -> None:
        """Wait for the check, add its findings to `report` (warnings logged) and raise on errors.

        Raises:
            [`IncompatibleIngredientsError`]: the checkpoint does not match its own config.
        """
        if self._settled:
            return
        self._settled = True
        for problem in self._future.result():
            report.add(problem)
            if problem.severity != "error":
                logger.warning("%s", problem)
        report.raise_if_incompatible()


@dataclass(frozen=True)
class Preflight:
    """What preflight settled, handed to the merge.

    Attributes:
        metas (`list[IngredientMeta]`): one per ingredient.
        report ([`CompatibilityReport`]): the verdict (positive), with its warnings.
        arch ([`BackgroundArchCheck`], *optional*): the architecture check still running beside the merge (`None`
            when it is off or already settled).
        tied (`dict[str, list[str]]`): tensors stored by some ingredients only and re-tied on load (left out).
    """

    metas: list[IngredientMeta]
    report: CompatibilityReport
    arch: BackgroundArchCheck | None
    tied: dict[str, list[str]]

    def settle(self) -> None:
        """Settle the architecture check (when it still runs) into the report; raises on its errors."""
        if self.arch is not None:
            self.arch.settle(self.report)


def _refuse_remote_code(report: CompatibilityReport, metas: Sequence[IngredientMeta]) -> None:
    """A soup refuses remote code first and by its own error: the verdict's `auto_map` problem, raised."""
    for problem in report.problems:
        if problem.field == "auto_map":
            meta = next(m for m in metas if m.name == problem.ingredient)
            raise UnsafeCheckpointError(
                f"config.json has an auto_map ({sorted(meta.config['auto_map'])}): loading it would run Python code "
                "from the repository.", ingredient=problem.ingredient, file="config.json", fix=problem.fix)


def preflight(ingredients: Sequence[Ingredient], metas: list[IngredientMeta], *, trust_remote_code: bool,
              align_labels: bool, arch_check: bool, needs_eval: bool, eval_data: Any = None,
              spec: Any = None) -> Preflight:
    """Small files and headers ([`hf_soups.metas.read_metas`]) -> the verdict, logged; raises when it is negative.
    No weight is read.

    The architecture check (when `arch_check`) runs in the background; it is settled here already when weights will
    be downloaded or evaluated, otherwise beside the merge ([`Preflight.settle`]). `eval_data` (loaded up front) is
    checked against the first ingredient's config here, before any weight moves.

    Args:
        ingredients (`Sequence[Ingredient]`): resolved ingredients.
        metas (`list[IngredientMeta]`): what [`read_metas`] read of them.
        trust_remote_code, align_labels, arch_check (`bool`): as [`soup_from_hub`] takes them.
        needs_eval (`bool`): the method evaluates candidates (the architecture check is settled first).
        eval_data (*optional*): held-out data, checked against the config.
        spec ([`EvalSpec`], *optional*): its columns (required with `eval_data`).

    Returns:
        [`Preflight`]

    Raises:
        [`UnsafeCheckpointError`]: a config needs remote code and `trust_remote_code=False`.
        [`IncompatibleIngredientsError`]: the verdict is negative.
        [`EvaluationError`], [`LabelMismatchError`]: `eval_data` does not fit the ingredients.
    """
    report = verdict(metas, align_labels=align_labels, arch_check=False, trust_remote_code=trust_remote_code,
                     ingredients=ingredients)
    _refuse_remote_code(report, metas)
    arch = BackgroundArchCheck(metas) if arch_check else None
    for w in report.warnings:
        logger.warning("%s", w)
    report.raise_if_incompatible()
    if arch is not None and (needs_eval or any(i.repo_id is not None for i in ingredients)):
        arch.settle(report)  # before any weight is downloaded or evaluated
        arch = None
    if eval_data is not None:  # columns, label values and names, against the config: before any weight moves
        from .evaluation.tasks import check_eval_data

        if spec is None:
            raise SoupError("evaluation data was given without its evaluation settings.", fix="report this bug.")
        check_eval_data(eval_data, metas[0].config, text_column=spec.text_column, label_column=spec.label_column,
                        image_column=spec.image_column, name=metas[0].name)
    return Preflight(metas=metas, report=report, arch=arch, tied=tied_extras(metas))
