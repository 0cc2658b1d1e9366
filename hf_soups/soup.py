"""The `Soup` result object: where the soup lives, how it was made, and what it scored."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
import dataclasses
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .atomic_file import write_atomic
from .card import CardValues, ModelFacts, render_card
from .checkpoint.atomic import record_files
from .checkpoint.meta import read_config
from .checkpoint.writer import AtomicDirectory
from .compat import CompatibilityReport
from .recipes import Recipe
from .refs import Ingredient

if TYPE_CHECKING:
    from collections.abc import Sequence

    import torch
    from huggingface_hub import CommitInfo, ModelCard

    from .evaluation.report import EvaluationReport
    from .hub.access import HubAccess

__all__ = ["Soup", "RECIPE_FILE", "PLOT_FILE", "facts_of"]

#: The recipe written into every soup directory (`hf-soups recipe DIR/recipe.yaml` replays it).
RECIPE_FILE = "recipe.yaml"
#: The figure [`Soup.evaluate`] draws into the soup directory and the card embeds.
PLOT_FILE = "soup_plot.png"

logger = logging.getLogger(__name__)


def facts_of(directory: str | os.PathLike[str]) -> ModelFacts:
    """What the card needs of the `config.json` in `directory` (a soup being written, or written).

    Raises:
        [`SoupError`]: as [`read_config`] (a missing or unreadable `config.json`).
    """
    return ModelFacts.from_config(read_config(os.path.join(directory, "config.json"), os.fspath(directory)))


def _write_text(path: str, text: str) -> str:
    write_atomic(path, text)
    return path


@dataclass(frozen=True)
class Soup:
    """A model soup on disk: an immutable result, built once its weights are written.

    Nothing changes a `Soup` in place: [`Soup.evaluate`] returns an [`EvaluationReport`] and
    [`Soup.with_evaluation`] a new `Soup` whose card shows it; [`Soup.recompute_batchnorm`] returns the
    recalibrated soup. Derive others with `dataclasses.replace`.

    Attributes:
        output_dir (`str`): the directory holding the soup (safetensors, config, tokenizer, README.md).
        method (`str`): `"uniform"`, `"weighted"`, `"greedy"` or `"learned"`.
        ingredients (`list[Ingredient]`): each with `.ref`, `.repo_id`, `.revision` (pinned sha), `.weight`, `.score`.
        recipe ([`Recipe`]): re-creates the soup exactly.
        report ([`CompatibilityReport`]): the compatibility verdict, with its warnings.
        trace (`list[dict]`): greedy decisions, in order.
        scores (`dict[str, float]`): each ingredient's held-out score (greedy and learned soups).
        results (`dict[str, dict[str, float]]`): `{eval set: {method: score}}` from [`Soup.evaluate`].
        intervals (`dict[str, dict[str, tuple[float, float]]]`): `{eval set: {method: (low, high)}}`, the paired
            bootstrap confidence intervals of `results`.
        differences (`dict[str, dict[str, tuple[float, float, float]]]`): `{eval set: {method: (difference to the
            best individual, low, high)}}`.
        warnings (`list[str]`): warnings about the held-out set (e.g. too small to separate the candidates).
        evaluation_warnings (`list[str]`): the same for the sets of the last [`Soup.evaluate`].
        base_model (`str`, *optional*): the shared pretrained checkpoint, when known (the repo of `soup_from_hub(base=...)`,
            or the one every ingredient's card declares).
        pinned_base ([`Ingredient`], *optional*): the base of full-model ingredients, pinned (`repo@sha`, or its
            directory) as the recipe records it: given as `soup_from_hub(base=...)`, or read by a method that needs
            it. [`Soup.evaluate`]'s WiSE-FT rows start from it when no `base=` is passed.
        access ([`HubAccess`], *optional*): the Hub endpoint, token and cache the soup was made with (the pinned base
            is downloaded through it); never shown.
        metric (`str`): the metric name of the held-out scores and results (a callable's qualified name).
        metric_fn (*optional*): the metric itself when its name cannot re-load it: the user's callable (reused by
            [`Soup.evaluate`]), or, for a replayed soup, the recipe's [`UserCallableMetric`], which asks for the
            callable again.
        trust_remote_code (`bool`): whether `.model` may run the repository's code.
        plot_file (`str`, *optional*): the figure embedded in the card, relative to `output_dir`; [`Soup.evaluate`]
            draws it (`soup_plot.png`) whenever matplotlib is installed.
        datasets (`dict[str, dict[str, str]]`): per evaluation set, what it really is (`id`, `config`, `split`,
            `name`; from [`EvalSet`] descriptors), for the card's `model-index`.
        card_metadata (`dict`): `license`, `language`, `datasets` metadata the ingredients' cards agree on.
        discovery (`dict`, *optional*): how the ingredients were found ([`CandidateSet.discovery`]), for the card.
        notes (`list[str]`): notes on `results` printed under the card's results table (how BatchNorm statistics
            were recalibrated for a like-for-like comparison).
        calibration_data (*optional*): the in-memory BatchNorm calibration data of [`Soup.recompute_batchnorm`],
            reused by [`Soup.evaluate`] to recalibrate the baselines.
        batchnorm_layers (`int`, *optional*): the number of BatchNorm layers [`Soup.recompute_batchnorm`]
            recomputed.
        facts ([`ModelFacts`], *optional*): what the card needs of the soup's `config.json` (architecture, pipeline
            tag, labels), taken when the soup is written; read from `output_dir` when not given.
    """

    output_dir: str
    method: str
    ingredients: list[Ingredient]
    recipe: Recipe
    report: CompatibilityReport | None = None
    trace: list[dict[str, Any]] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)
    results: dict[str, dict[str, float]] = field(default_factory=dict)
    intervals: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)
    differences: dict[str, dict[str, tuple[float, float, float]]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    evaluation_warnings: list[str] = field(default_factory=list)
    base_model: str | None = None
    metric: str = "accuracy"
    metric_fn: Any = field(default=None, repr=False, compare=False)
    trust_remote_code: bool = False
    plot_file: str | None = None
    discovery: dict[str, Any] | None = None
    datasets: dict[str, dict[str, str]] = field(default_factory=dict)
    card_metadata: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    adapter_export: dict[str, Any] | None = None
    calibration_data: Any = field(default=None, repr=False, compare=False)
    batchnorm_layers: int | None = None
    facts: ModelFacts | None = None
    pinned_base: Ingredient | None = None
    access: HubAccess | None = field(default=None, repr=False, compare=False)
    _model: Any = field(default=None, init=False, repr=False, compare=False)  # `.model`'s cache, never copied

    @property
    def config(self) -> dict[str, Any]:
        return read_config(os.path.join(self.output_dir, "config.json"), self.output_dir)

    @property
    def weights(self) -> list[float]:
        return [float(i.weight or 0.0) for i in self.ingredients]

    @property
    def model(self) -> Any:
        """The soup as a transformers model, loaded on first access (`from_pretrained`, no remote code)."""
        if self._model is None:
            from .modeling import load_model

            model = load_model(self.output_dir, self.config, self.trust_remote_code)
            model.eval()
            object.__setattr__(self, "_model", model)  # a cache of what is on disk, not a change of the soup
        return self._model

    def base_checkpoint(self) -> str | None:
        """The soup's pinned base on disk (WiSE-FT's default base): downloaded at the pinned sha the recipe and the
        card record, through the soup's Hub access and cache, never another revision.

        Returns:
            `str` or `None`: the base's directory; `None` when the soup pinned no base (a soup of adapters, or one
            made without `base=` by a method that does not read it: the cards' `base_model` alone is not pinned).

        Raises:
            [`IngredientNotFoundError`], [`RevisionNotFoundError`]: the pinned base cannot be downloaded.
        """
        base = self.pinned_base
        if base is None:
            return None
        if base.repo_id is None:  # a local directory, recorded as such
            return base.local_dir or base.ref
        from .hub.access import HubAccess

        return (self.access or HubAccess()).download(base)

    def card_values(self, repo_id: str | None = None) -> CardValues:
        """What the card shows ([`render_card`] renders it without reading any file), the snippet loading
        `repo_id`."""
        return CardValues(
            method=self.method, ingredients=self.ingredients, facts=self.facts or facts_of(self.output_dir),
            recipe=self.recipe, base_model=self.base_model, trace=self.trace, results=self.results,
            metric=self.metric, repo_id=repo_id, plot_file=self.plot_file, discovery=self.discovery,
            intervals=self.intervals, differences=self.differences, warnings=[*self.warnings,
                                                                               *self.evaluation_warnings],
            compat_warnings=self.report.warnings if self.report is not None else (), datasets=self.datasets,
            inherited=self.card_metadata, local_path=self.output_dir, notes=self.notes,
            adapter_export=self.adapter_export,
        )

    def card_for(self, repo_id: str | None = None) -> ModelCard:
        """The model card, with the loading snippet pointing at `repo_id`."""
        return render_card(self.card_values(repo_id))

    @property
    def card(self) -> ModelCard:
        """The model card (`huggingface_hub.ModelCard`) recording ingredients, revisions, weights, recipe, results."""
        return self.card_for()

    def write_card(self, repo_id: str | None = None, *, directory: str | os.PathLike[str] | None = None) -> str:
        """(Re)write `README.md` (the card, for `repo_id` when given) and `recipe.yaml` in the soup directory (or in
        `directory`, e.g. the soup's directory while it is being committed), atomically; returns the card's path."""
        where = os.fspath(directory) if directory is not None else self.output_dir
        _write_text(os.path.join(where, RECIPE_FILE), self.recipe.to_yaml())
        path = _write_text(os.path.join(where, "README.md"), str(self.card_for(repo_id)))
        record_files(where, ["README.md", RECIPE_FILE])
        return path

    def save_pretrained(self, path: str | os.PathLike[str], overwrite: bool = False) -> str:
        """Copy the soup (weights, config, tokenizer) to `path` with this soup's card, atomically.

        Raises:
            [`OutputExistsError`]: `path` is not empty and `overwrite=False`, or holds something hf_soups did not
                write (see [`soup_from_hub`]'s `overwrite`).
            [`OutputNotWritableError`]: `path` is read-only or a mount point.
        """
        with AtomicDirectory(path, overwrite=overwrite,
                             ingredients=[i.local_dir for i in self.ingredients if i.local_dir]) as tmp:
            for name in os.listdir(self.output_dir):
                src = os.path.join(self.output_dir, name)
                if os.path.isfile(src) and not os.path.islink(src) and not name.startswith("."):
                    shutil.copy2(src, os.path.join(tmp, name))
            self.write_card(directory=tmp)
        return os.fspath(path)

    def push_to_hub(
        self,
        repo_id: str,
        private: bool | None = None,
        token: str | bool | None = None,
        commit_message: str | None = None,
        revision: str | None = None,
        endpoint: str | None = None,
    ) -> CommitInfo:
        """Upload the soup and its card to `repo_id` in one commit, creating the repo when missing.

        Args:
            repo_id (`str`): e.g. `"user/my-soup"`.
            private (`bool`, *optional*): visibility of a newly created repo.
            token (`str` or `bool`, *optional*): a write token; defaults to the saved login / `HF_TOKEN`.
            commit_message (`str`, *optional*): the commit message.
            revision (`str`, *optional*): the branch to push to (created if missing).
            endpoint (`str`, *optional*): the Hub endpoint, defaults to `HF_ENDPOINT`.

        Returns:
            `huggingface_hub.CommitInfo`: the commit (its `.commit_url`, `.oid`).

        Raises:
            [`AuthenticationError`], [`PushError`]: the local soup is left intact; re-running is safe.
        """
        from .hub import push_folder

        self.write_card(repo_id)
        return push_folder(self.output_dir, repo_id, token=token, private=private,
                           commit_message=commit_message or f"Add {self.method} soup of {len(self.ingredients)} "
                           "models (hf_soups)", revision=revision, endpoint=endpoint)

    def evaluate(self, datasets: Any, methods: Sequence[str] | None = None, device: str | torch.device | None = None,
                 progress: bool = True, **kwargs: Any) -> EvaluationReport:
        """Score the soup and its baselines (ingredients, uniform, ensembles, WiSE-FT, ...) on each dataset, with
        paired bootstrap confidence intervals; see [`hf_soups.evaluation.evaluate_soup`] for every option.

        Nothing is changed: the soup, its directory and its card stay as they are. Pass the report to
        [`Soup.with_evaluation`] for a soup whose card shows it (and the plot).

        Args:
            datasets (`Mapping[str, Any]`): evaluation sets by name, in any form [`as_eval_dataset`] reads, or
                [`EvalSet`] descriptors naming the real dataset (`dataset_id`, `config`, `split`) for the card's
                `model-index`.
            methods (`Sequence[str]`, *optional*): only these methods, e.g. `["soup", "best_individual"]`.
            device (`str` or `torch.device`, *optional*): where evaluations run; defaults to accelerate's
                `PartialState().device` under `accelerate launch` or with an accelerator, else the CPU.
            progress (`bool`, *optional*, defaults to `True`): show a progress bar.
            **kwargs: the options of [`evaluate_soup`]; `base=` defaults to the soup's pinned base
                ([`Soup.base_checkpoint`]), so a soup made with `soup_from_hub(base=...)` shows `wise_ft@alpha` rows.

        Returns:
            [`EvaluationReport`]: `.results`, `.intervals`, `.differences`, `.rows()`, `.to_table()`, and what the
            card shows of them.
        """
        from .evaluation.data import EvalSet, as_eval_dataset
        from .evaluation.report import evaluate_soup

        if not isinstance(datasets, Mapping):
            datasets = {"eval": datasets}
        described = {name: (value if isinstance(value, EvalSet) else EvalSet(value)).describe(name)
                     for name, value in datasets.items() if isinstance(value, (EvalSet, str))}
        data = {name: as_eval_dataset(value, parameter=f"datasets[{name!r}]", max_samples=kwargs.get("max_samples"))
                for name, value in datasets.items()}
        report = evaluate_soup(self, data, methods=methods, device=device, progress=progress, **kwargs)
        return dataclasses.replace(report, datasets=described)

    def with_evaluation(self, report: EvaluationReport) -> Soup:
        """A new soup whose card shows `report` (results, intervals, differences, warnings, notes, the evaluation
        sets and, when matplotlib is installed, the plot `soup_plot.png`); its card and plot are written to
        `output_dir`, so that [`Soup.push_to_hub`] and [`Soup.save_pretrained`] carry them.

        Args:
            report ([`EvaluationReport`]): from [`Soup.evaluate`] on this soup.

        Returns:
            [`Soup`]
        """
        shown = report.card_values(self.metric, default_metric=self.metric_fn is None)
        soup = dataclasses.replace(self, datasets={**self.datasets, **report.datasets}, **shown)
        if soup._draw_plot(report):
            soup = dataclasses.replace(soup, plot_file=PLOT_FILE)
        soup.write_card()
        return soup

    def _draw_plot(self, report: Any) -> bool:
        """Draw the figure of `report` into the soup directory; `False` without matplotlib (the `plots` extra)."""
        try:
            import matplotlib  # noqa: F401
        except ImportError:  # the `plots` extra is optional: the card then has no figure
            return False
        from .plots import plot_soup

        held_out = report.held_out
        sets = list(report.results)
        in_domain = held_out if held_out in sets and len(sets) == 1 else next((s for s in sets if s != held_out),
                                                                               sets[0])
        ood = [s for s in sets if s not in (in_domain, held_out)]
        plot_soup(report, os.path.join(self.output_dir, PLOT_FILE), in_domain=in_domain, ood=ood)
        record_files(self.output_dir, [PLOT_FILE])  # hf_soups' own file: `overwrite=True` may replace it later
        return True

    def recompute_batchnorm(self, dataset: Any, **kwargs: Any) -> Soup:
        """Re-estimate BatchNorm running statistics on calibration data instead of averaging them; returns the
        recalibrated soup, whose recipe records it (`num_batches=`, `batch_size=`, `seed=`, `split=`,
        `image_column=`) and whose `batchnorm_layers` counts the layers recomputed; see
        [`hf_soups.evaluation.batchnorm.recompute_batchnorm`]. The soup directory is rewritten in one commit."""
        from .evaluation.batchnorm import recompute_batchnorm

        return recompute_batchnorm(self, dataset, **kwargs)

    def __repr__(self) -> str:
        ings = ", ".join(f"{i.name} (w={i.weight:.3f})" for i in self.ingredients if i.weight is not None)
        return f"Soup(method={self.method!r}, output_dir={self.output_dir!r}, ingredients=[{ings}])"
