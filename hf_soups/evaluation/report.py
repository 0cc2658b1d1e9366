"""`Soup.evaluate`: the soup and its baselines on every evaluation set, with paired bootstrap confidence intervals.

Each ingredient's logits are computed once per set and reused by every baseline (best individual, ensemble, greedy
ensemble); candidate soups (uniform, WiSE-FT) are built on the evaluation device, where they are scored.
"""

from __future__ import annotations

import contextlib
import difflib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from huggingface_hub.utils import tqdm

from .. import constants
from ..checkpoint.companions import lead_index
from ..checkpoint.reader import SAFETENSORS_INDEX, SAFETENSORS_SINGLE, open_checkpoint
from ..errors import EvaluationError
from ..merge.ops import weighted_sum
from ..merge.plan import build_plan
from ..recipes.greedy import greedy_ensemble
from ..recipes.recipe import BatchNormCalibration
from .batchnorm import calibration_batches, is_calibration_set, load_calibration_data, recalibrate
from .candidates import ModelHolder, checkpoint_float_state, read_float_state
from .device import resolve_eval_device
from .evaluator import Evaluator, evaluators_by_processor
from .uncertainty import Bootstrap, Interval, paired_bootstrap, separation_warning

__all__ = ["EvaluationReport", "SoupReport", "ResultRow", "evaluate_soup", "BASELINE"]

#: The method differences are taken to.
BASELINE = "best_individual"


@dataclass(frozen=True)
class ResultRow:
    """One method on one evaluation set: its score with a confidence interval, and its difference to the best
    individual ingredient with the paired bootstrap interval of that difference (`None` when not computed)."""

    eval_set: str
    method: str
    score: float
    low: float | None = None
    high: float | None = None
    delta: float | None = None
    delta_low: float | None = None
    delta_high: float | None = None


@dataclass
class EvaluationReport:
    """Scores of the soup and its baselines on every evaluation set, with their uncertainty: what
    [`Soup.evaluate`] returns, and what [`Soup.with_evaluation`] shows on a new soup's card.

    Attributes:
        results (`dict[str, dict[str, float]]`): `{set: {method: score}}`.
        metric (`str`): the metric name.
        ingredient_scores (`dict[str, dict[str, float]]`): `{set: {ingredient: score}}` (those evaluated).
        members (`dict[str, list[str]]`): the ingredients chosen by each selection method.
        intervals (`dict[str, dict[str, Interval]]`): `{set: {method: score with its bootstrap interval}}`.
        differences (`dict[str, dict[str, Interval]]`): `{set: {method: score - best_individual's score, with its
            paired bootstrap interval}}`, when the best individual was scored.
        sizes (`dict[str, int]`): the number of examples of each set.
        warnings (`list[str]`): e.g. sets too small to separate the candidates, or a set that was the BatchNorm
            calibration set.
        notes (`list[str]`): how to read the results (e.g. how BatchNorm statistics were recalibrated).
        bootstrap ([`Bootstrap`]): resamples, confidence level and seed of the intervals.
        also (`dict[str, dict[str, dict[str, float]]]`): `{set: {method: {metric: score}}}`, the task's other
            metrics reported beside the main one (regression: Spearman's rho and MSE; multi-label: exact match;
            QA: exact match; token classification: token accuracy); empty for classification.
        datasets (`dict[str, dict[str, str]]`): per evaluation set named by an [`EvalSet`] or a path / Hub id,
            what it really is (`id`, `config`, `split`, `name`), for the card's `model-index`.
        held_out (`str`, *optional*): the set that chose the best individual and the greedy ensemble, when named.
        base (`str`, *optional*): the WiSE-FT rows' base: the soup's pinned base (`repo@sha`) by default, else the
            `base=` given; `None` without WiSE-FT rows.
    """

    results: dict[str, dict[str, float]]
    metric: str
    ingredient_scores: dict[str, dict[str, float]] = field(default_factory=dict)
    members: dict[str, list[str]] = field(default_factory=dict)
    intervals: dict[str, dict[str, Interval]] = field(default_factory=dict)
    differences: dict[str, dict[str, Interval]] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    bootstrap: Bootstrap = field(default_factory=Bootstrap)
    also: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    datasets: dict[str, dict[str, str]] = field(default_factory=dict)
    held_out: str | None = None
    base: str | None = None

    def card_values(self, metric: str, *, default_metric: bool) -> dict[str, Any]:
        """What a soup's card shows of this report, as [`Soup`] fields: `results` (no `ingredient:` rows), their
        `intervals` and `differences`, `evaluation_warnings`, `notes` and the `metric` name.

        Args:
            metric (`str`): the soup's metric name.
            default_metric (`bool`): the metric is the soup's own (not a user callable): a soup still on the
                library default `"accuracy"` then shows the task's default metric the evaluation used.

        Returns:
            `dict[str, Any]`: keyword arguments for `dataclasses.replace(soup, ...)`.
        """
        results = {s: {m: v for m, v in r.items() if not m.startswith("ingredient:")} for s, r in self.results.items()}
        return {
            "results": results,
            "intervals": {s: {m: (i.low, i.high) for m, i in t.items() if m in results[s]}
                          for s, t in self.intervals.items()},
            "differences": {s: {m: (i.value, i.low, i.high) for m, i in t.items() if m in results[s]}
                            for s, t in self.differences.items()},
            "evaluation_warnings": list(self.warnings),
            "notes": list(self.notes),
            "metric": self.metric if metric == "accuracy" and default_metric else metric,
        }

    @property
    def methods(self) -> list[str]:
        seen: list[str] = []
        for scores in self.results.values():
            seen += [m for m in scores if m not in seen]
        return seen

    def rows(self) -> list[ResultRow]:
        """One [`ResultRow`] per (set, method), in set then method order (DataFrame-like records)."""
        out = []
        for s, scores in self.results.items():
            for m, score in scores.items():
                ci = self.intervals.get(s, {}).get(m)
                d = self.differences.get(s, {}).get(m)
                out.append(ResultRow(s, m, score, ci.low if ci else None, ci.high if ci else None,
                                     d.value if d else None, d.low if d else None, d.high if d else None))
        return out

    def to_pandas(self) -> Any:
        """The rows as a `pandas.DataFrame` (columns: the [`ResultRow`] fields)."""
        import dataclasses

        import pandas as pd

        return pd.DataFrame([dataclasses.asdict(r) for r in self.rows()])

    def _cell(self, s: str, m: str) -> str:
        if m not in self.results[s]:
            return "–"
        ci = self.intervals.get(s, {}).get(m)
        cell = f"{self.results[s][m]:.4f}" + (f" [{ci.low:.4f}, {ci.high:.4f}]" if ci else "")
        d = self.differences.get(s, {}).get(m)
        if d is not None and m != BASELINE:
            cell += f" (Δ {d.value:+.4f} [{d.low:+.4f}, {d.high:+.4f}])"
        return cell

    def to_markdown(self, methods: Sequence[str] | None = None) -> str:
        """A markdown table: one row per method (those of `methods`, in that order, when given), one column per set;
        each cell the score, its confidence interval and its difference to the best individual with the paired
        interval of that difference."""
        from ..text import escape_markdown  # set and method names are the user's (ingredient names, set names)

        sets = list(self.results)
        lines = [f"| method | {' | '.join(escape_markdown(s) for s in sets)} |", "|---|" + "---|" * len(sets)]
        for m in self.methods if methods is None else methods:
            lines.append(f"| {escape_markdown(m)} | {' | '.join(self._cell(s, m) for s in sets)} |")
        return "\n".join(lines)

    def to_table(self) -> str:
        """A plain-text table for terminals and logs: the metric, the interval settings, the table and warnings."""
        from ..text import one_line  # names from outside never break the terminal table

        b = self.bootstrap
        sizes = ", ".join(f"{one_line(s)}: {n}" for s, n in self.sizes.items())
        lines = [f"{one_line(self.metric)} with {b.confidence:.0%} paired bootstrap intervals ({b.resamples} "
                 f"resamples, seed {b.seed}); Δ = difference to {BASELINE}" + (f"; examples {sizes}" if sizes else "")]
        sets = list(self.results)
        rows = [["method", *map(one_line, sets)]] + [[one_line(m), *(self._cell(s, m) for s in sets)]
                                                     for m in self.methods]
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        lines += [f"note: {n}" for n in self.notes] + [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_table()

    def to_dict(self) -> dict[str, Any]:
        def ivs(table: dict[str, dict[str, Interval]]) -> dict[str, dict[str, list[float]]]:
            return {s: {m: [i.value, i.low, i.high] for m, i in t.items()} for s, t in table.items()}

        return {"metric": self.metric, "results": self.results, "ingredient_scores": self.ingredient_scores,
                "members": self.members, "intervals": ivs(self.intervals), "differences": ivs(self.differences),
                "sizes": self.sizes, "warnings": self.warnings, "notes": self.notes, "also": self.also,
                "bootstrap": {"resamples": self.bootstrap.resamples, "confidence": self.bootstrap.confidence,
                              "seed": self.bootstrap.seed}, "base": self.base}


def _wanted(methods: Sequence[str] | None, soup_label: str, available: Sequence[str]) -> set[str]:
    """The requested method names, validated (`"soup"` is the soup's own label, `"wise_ft"` every alpha,
    `"ingredients"` every ingredient)."""
    if methods is None:
        return set(available)
    wanted = set()
    for m in methods:
        m = soup_label if m == "soup" else m
        if m not in available:
            close = difflib.get_close_matches(m, list(available), n=1)
            raise EvaluationError(f"unknown method '{m}' for Soup.evaluate" + (f" (did you mean '{close[0]}'?)"
                                                                                 if close else "") + ".",
                                  fix=f"choose among {', '.join(available)} (or 'soup').")
        wanted.add(m)
    return wanted


def evaluate_soup(
    soup: Any,
    datasets: Mapping[str, Any],
    *,
    methods: Sequence[str] | None = None,
    device: str | torch.device | None = None,
    dtype: str | None = None,
    progress: bool = True,
    held_out: str | None = None,
    base: str | os.PathLike[str] | None = None,
    alphas: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
    metric: Any = None,
    batch_size: int | None = None,
    text_column: str | None = None,
    label_column: str | None = None,
    image_column: str | None = None,
    extra_soups: Mapping[str, str | os.PathLike[str]] | None = None,
    bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    max_samples: int | None = None,
    calibration_dataset: Any = None,
) -> EvaluationReport:
    """Evaluate the soup and its baselines on each dataset, with paired bootstrap confidence intervals.

    Methods: `best_individual` (best on the held-out set), `uniform_soup`, the soup itself (named by its method,
    e.g. `greedy_soup`; `"soup"` selects it too), `ensemble` (mean logits of all ingredients), `greedy_ensemble`
    (members chosen on the held-out set), `wise_ft@alpha` (`(1 - alpha) * base + alpha * soup`, when `base` is
    given; `"wise_ft"` selects every alpha), each name in `extra_soups`, and `ingredient:<name>` rows (`"ingredients"`
    selects them all). Ingredient logits are computed once per set and shared by every baseline; only what the
    requested methods need is evaluated.

    Each ingredient is scored through its own image processor, the soup and the other candidates through the soup's
    (see [`evaluators_by_processor`]); images are preprocessed one batch at a time, within a bounded cache per set.

    When the soup's BatchNorm statistics were recomputed ([`Soup.recompute_batchnorm`]), the comparison is like for
    like: every ingredient (hence `best_individual` and the ensembles) and `uniform_soup` are recalibrated on the same
    calibration data with the same settings; rows `... (no BN recalibration)` add `best_individual`, `uniform_soup`
    and the soup with their own (ingredients) or averaged (soups) statistics. A set that is the calibration set is
    flagged in the report's and the card's warnings.

    Args:
        soup ([`Soup`]): the soup; its ingredients must be on disk (not streamed).
        datasets (`Mapping[str, datasets.Dataset]`): evaluation sets by name, e.g. `{"test": ds, "ood_tweets": ds2}`.
        methods (`Sequence[str]`, *optional*): score only these methods (e.g. `["soup", "best_individual"]`);
            defaults to all.
        device (`str` or `torch.device`, *optional*): where evaluations run; defaults to accelerate's
            `PartialState().device` under `accelerate launch` or with an accelerator, else the CPU.
        dtype (`str`, *optional*): `"bfloat16"` or `"float16"` evaluates under autocast; default exact fp32.
        progress (`bool`, *optional*, defaults to `True`): show a progress bar (huggingface_hub's tqdm).
        held_out (`str`, *optional*): the set used to pick the best individual and the greedy ensemble; defaults to
            the held-out scores of a greedy/learned soup, else the first set.
        base (`str`, *optional*): the pretrained (or zero-shot) checkpoint directory for WiSE-FT; defaults to the
            soup's pinned base ([`Soup.base_checkpoint`]: the recipe's `repo@sha`, downloaded at that sha), and without
            one there are no WiSE-FT rows.
        alphas (`Sequence[float]`, *optional*): the WiSE-FT grid.
        metric (*optional*): defaults to the soup's metric.
        batch_size (`int`, *optional*): defaults to 64 on the CPU, 256 on an accelerator.
        extra_soups (`Mapping[str, str]`, *optional*): more soup directories to score, by method name (e.g.
            `{"learned_soup": "path"}`).
        bootstrap (`int`, *optional*, defaults to `1000`): bootstrap resamples per set (`0` for no intervals).
        confidence (`float`, *optional*, defaults to `0.95`): the intervals' confidence level.
        seed (`int`, *optional*, defaults to `0`): the resampling seed.
        max_samples (`int`, *optional*): evaluate at most this many examples per set (required for an
            `IterableDataset`).
        calibration_dataset (*optional*): the BatchNorm calibration data, when the soup was recalibrated on an
            in-memory set in another session (by default the soup's own `calibration_data`, or the recorded path).

    Returns:
        [`EvaluationReport`]: `.results`, `.intervals`, `.differences` (to `best_individual`), `.rows()`,
        `.to_table()`; the soup is not changed ([`Soup.with_evaluation`] gives one whose card shows the report).

    Raises:
        [`EvaluationError`]: an unknown method, WiSE-FT without `base` on a soup that pinned none, ingredients not
            on disk, unusable data, or a recalibrated soup whose calibration data is not available.
    """
    metric = metric or (soup.metric_fn if soup.metric_fn is not None else soup.metric)
    ingredients = soup.ingredients
    names = [i.name for i in ingredients]
    config = soup.config
    reference_dir = ingredients[0].local_dir or soup.output_dir
    label = f"{soup.method}_soup"
    for ing in ingredients:  # before the base is downloaded
        if not ing.local_dir or not any(os.path.exists(os.path.join(ing.local_dir, f))
                                        for f in (SAFETENSORS_SINGLE, SAFETENSORS_INDEX)):
            raise EvaluationError("its weights are not on disk (the soup was streamed), and evaluating the baselines "
                                  "needs every ingredient.", ingredient=ing.name,
                                  fix="make the soup with stream=False to evaluate it against its ingredients.")
    asked_wise = methods is not None and any(str(m).startswith("wise_ft") for m in methods)
    base_name = None if base is None else os.fspath(base)
    if base is None and (methods is None or asked_wise):
        base = soup.base_checkpoint()  # the soup's pinned base (repo@sha or directory), when it has one
        base_name = soup.pinned_base.name if base is not None else None
    wise = [f"wise_ft@{a:g}" for a in alphas] if base is not None else []
    available = ["best_individual", "uniform_soup", label, "ensemble", "greedy_ensemble", *wise,
                 *(["wise_ft"] if wise else []), *(extra_soups or {}), "ingredients",
                 *(f"ingredient:{n}" for n in names)]
    if asked_wise and base is None:
        raise EvaluationError("WiSE-FT needs the pretrained checkpoint, and this soup pinned none.",
                              fix="pass evaluate(base=<checkpoint directory>), or make the soup with "
                                  "soup_from_hub(..., base=<the checkpoint the ingredients were fine-tuned from>).")
    wanted = _wanted(methods, label, available)
    if "wise_ft" in wanted:
        wanted |= set(wise)
    sets = list(datasets)
    sel_set = held_out or sets[0]
    if sel_set not in datasets:
        raise EvaluationError(f"held_out='{sel_set}' is not one of the evaluation sets {sets}.",
                              fix="pass held_out= with one of the names of `datasets`.")
    record, calibration = _calibration(soup, calibration_dataset)
    show_ingredients = "ingredients" in wanted or any(m.startswith("ingredient:") for m in wanted)
    every_ingredient = show_ingredients or bool({"ensemble", "greedy_ensemble"} & wanted)
    # the best individual: known from a greedy/learned soup's held-out scores, else chosen on `sel_set`
    known_best = names.index(max(names, key=lambda n: soup.scores[n])) if soup.scores and held_out is None \
        and all(n in soup.scores for n in names) else None
    need: dict[int, list[str]] = {}  # ingredient -> the sets it is scored on in the first pass
    for i in range(len(names)):
        if every_ingredient:
            need[i] = sets
        elif "best_individual" in wanted:
            need[i] = sets if i == known_best else ([sel_set] if known_best is None else [])
    later = [] if every_ingredient or "best_individual" not in wanted or known_best is not None else \
        [s for s in sets if s != sel_set]
    soups = {label, "uniform_soup", *(extra_soups or {}), *wise} & wanted
    raw = 2 if record is not None else 1  # recalibrated: ingredients and soups also scored with their statistics
    total = (sum(len(v) for v in need.values()) + len(later)) * raw + len(soups) * len(sets) \
        + (len({label, "uniform_soup"} & wanted) * len(sets) if record is not None else 0)
    bar = tqdm(total=total, desc="Evaluating the soup and its baselines",
               disable=not progress or constants.progress_disabled())

    with contextlib.ExitStack() as stack:
        stack.callback(bar.close)
        readers = [stack.enter_context(open_checkpoint(i.local_dir, ingredient=i.name)) for i in ingredients]
        plan = build_plan([r.tensors for r in readers], [1.0] * len(readers), names=names)
        eval_device = resolve_eval_device(device)
        dirs = [i.local_dir or reference_dir for i in ingredients]
        # per set: one evaluator per ingredient and one for the soup (shared where the image processors agree)
        evaluators = {name: evaluators_by_processor(ds, [*dirs, soup.output_dir], config, names=[*names, "soup"],
                                                    metric=metric, text_column=text_column, label_column=label_column,
                                                    image_column=image_column, batch_size=batch_size,
                                                    device=eval_device, dtype=dtype, max_samples=max_samples,
                                                    threshold=_recorded_threshold(soup))
                      for name, ds in datasets.items()}
        run = _Run(names=names, sets=sets, sel_set=sel_set, evaluators=evaluators, readers=readers, plan=plan,
                   dirs=dirs, config=config, record=record, calibration=calibration, bar=bar,
                   holder=ModelHolder(reference_dir, config, soup.trust_remote_code, device=eval_device))
        best = _ingredient_rows(run, need, later, known_best)
        if "best_individual" in wanted:
            _best_individual(run, best)
        members = _greedy_ensemble(run) if "greedy_ensemble" in wanted else []
        if "ensemble" in wanted:
            _ensemble(run, list(range(len(names))), "ensemble")
        if "greedy_ensemble" in wanted:
            _ensemble(run, members, "greedy_ensemble")
        if "uniform_soup" in wanted:
            _uniform_soup(run)
        soup_state = _soup_state(run, soup.output_dir, stack) if label in wanted and label != "uniform_soup" or wise \
            else None
        if label in wanted and label != "uniform_soup":
            _the_soup(run, label, soup.weights, soup_state)
        for label_extra, path in (extra_soups or {}).items():
            if label_extra in wanted:
                _extra_soup(run, label_extra, path, stack)
        if base is not None and wise and wanted & set(wise):
            _wise_ft(run, base, soup_state, [(a, w) for a, w in zip(alphas, wise) if w in wanted], stack)
        results = run.results
        if not show_ingredients:
            for s in sets:
                results[s] = {m: v for m, v in results[s].items() if not m.startswith("ingredient:")}
        elif methods is not None and "ingredients" not in wanted:
            for s in sets:
                results[s] = {m: v for m, v in results[s].items()
                              if not m.startswith("ingredient:") or m.removesuffix(_NO_BN) in wanted}
    report = _with_uncertainty(results, run.predictions, {s: evs[-1] for s, evs in evaluators.items()},
                               run.ingredient_scores, best=names[best] if "best_individual" in wanted else None,
                               bootstrap=Bootstrap(bootstrap, confidence, seed))
    if record is not None:
        report.notes.append(f"BatchNorm statistics of the soup were recomputed on {record.describe()}; every "
                            "ingredient (hence best_individual and the ensembles) and uniform_soup were recalibrated "
                            f"the same way (rows '{_NO_BN.strip()}' keep their own or averaged statistics).")
        report.warnings += [f"'{s}' is the BatchNorm calibration set: scores on it are not held-out scores."
                            for s in sets if is_calibration_set(datasets[s], calibration, record)]
    report.warnings += run.degenerate
    report.members = {}
    if "greedy_ensemble" in wanted:
        report.members["greedy_ensemble"] = [names[m] for m in members]
    report.members[label] = [i.name for i in ingredients if (i.weight or 0) > 0]
    report.held_out = held_out
    report.base = base_name if wanted & set(wise) else None
    return report


#: The suffix of the rows that keep their own (ingredients) or averaged (soups) BatchNorm statistics.
_NO_BN = " (no BN recalibration)"


@dataclass
class _Run:
    """One evaluation's shared state: the evaluators per set, the loaded model, the ingredients' readers and logits,
    and the rows scored so far (`results`, `predictions`, `degenerate`)."""

    names: list[str]
    sets: list[str]
    sel_set: str
    evaluators: dict[str, list[Evaluator]]
    readers: list[Any]
    plan: Any
    dirs: list[str]
    config: Mapping[str, Any]
    record: BatchNormCalibration | None
    calibration: Any
    bar: Any
    holder: ModelHolder
    results: dict[str, dict[str, float]] = field(default_factory=dict)
    predictions: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    logits: dict[str, dict[int, torch.Tensor]] = field(default_factory=dict)
    ingredient_scores: dict[str, dict[str, float]] = field(default_factory=dict)
    degenerate: list[str] = field(default_factory=list)  # rows whose logits are non-finite, absurd or collapsed

    def __post_init__(self) -> None:
        for table in (self.results, self.predictions, self.logits, self.ingredient_scores):
            table.update({s: {} for s in self.sets})

    def score(self, s: str, name: str, model: Any, by: int = -1) -> torch.Tensor:
        """Score `model` on set `s` as row `name` (through evaluator `by`: an ingredient's, or the soup's)."""
        ev = self.evaluators[s][by]
        value, lg = ev.score(model)
        problem = ev.problem(lg)
        if problem is not None:
            self.degenerate.append(f"'{name}' on '{s}' gives {problem}: its score ({value:.4f}) is not meaningful.")
        self.results[s][name] = value
        self.predictions[s][name] = ev.predictions(lg)
        self.bar.update()
        return lg

    def score_all(self, name: str, model: Any, by: int = -1) -> None:
        """Score `model` on every set as row `name`."""
        for s in self.sets:
            self.score(s, name, model, by=by)

    def recalibrated(self, processor_dir: str) -> Any:
        """The loaded model with BatchNorm statistics recomputed as the soup's were (its own processor)."""
        if self.record is None:
            raise EvaluationError("no recalibration record to replay.", fix="report this bug.")
        record = self.record
        recalibrate(self.holder.model, calibration_batches(
            self.calibration, processor_dir, self.config, batch_size=record.batch_size,
            num_batches=record.num_batches, seed=record.seed, image_column=record.image_column))
        return self.holder.model

    def score_ingredient(self, i: int, on: Sequence[str]) -> None:
        """Ingredient `i` on the sets `on` (its own statistics first when the soup was recalibrated)."""
        model = self.holder.load(read_float_state(self.plan, self.readers[i], i, device=self.holder.device))
        name = f"ingredient:{self.names[i]}"
        if self.record is not None:
            for s in on:
                self.score(s, name + _NO_BN, model, by=i)
            model = self.recalibrated(self.dirs[i])
        for s in on:
            self.logits[s][i] = self.score(s, name, model, by=i)
            self.ingredient_scores[s][self.names[i]] = self.results[s][name]


def _ingredient_rows(run: _Run, need: Mapping[int, list[str]], later: Sequence[str], known_best: int | None) -> int:
    """Each ingredient on the sets it is needed on; returns the best one (known, else the best on the held-out set),
    scored on the `later` sets too."""
    for i in range(len(run.names)):
        if need.get(i):
            run.score_ingredient(i, need[i])
    held = run.ingredient_scores[run.sel_set]
    key = next(iter(run.evaluators.values()))[-1].metric.key  # larger is better, whatever the direction
    best = known_best if known_best is not None else \
        max(range(len(run.names)), key=lambda i: key(held.get(run.names[i], float("nan")))
            if run.names[i] in held else float("-inf"))
    if later:
        run.score_ingredient(best, later)
    return best


def _best_individual(run: _Run, best: int) -> None:
    """`best_individual`: the best ingredient's rows, on every set."""
    for s in run.sets:
        for row in ("best_individual", *([f"best_individual{_NO_BN}"] if run.record is not None else [])):
            source = f"ingredient:{run.names[best]}" + row.removeprefix("best_individual")
            run.results[s][row] = run.results[s][source]
            run.predictions[s][row] = run.predictions[s][source]


def _greedy_ensemble(run: _Run) -> list[int]:
    """The greedy ensemble's members, chosen on the held-out set."""
    ev = run.evaluators[run.sel_set][-1]
    return greedy_ensemble([run.logits[run.sel_set][i] for i in range(len(run.names))],
                           [run.ingredient_scores[run.sel_set][n] for n in run.names], ev.score_logits,
                           problem=ev.problem, higher_is_better=ev.metric.higher_is_better)


def _ensemble(run: _Run, members: Sequence[int], name: str) -> None:
    """Row `name`: the mean logits of `members` (the merge kernel), on every set."""
    for s, evs in run.evaluators.items():
        mean = weighted_sum([run.logits[s][i] for i in members], [1.0] * len(members))
        run.results[s][name] = evs[-1].score_logits(mean)
        run.predictions[s][name] = evs[-1].predictions(mean)


def _uniform_soup(run: _Run) -> None:
    """`uniform_soup`, exactly as the engine computes it, through the image processor it ships."""
    model = run.holder.load_plan(run.plan, run.readers)
    lead = lead_index(run.plan.weights)  # the ingredient whose image processor the uniform soup ships
    if run.record is not None:
        run.score_all(f"uniform_soup{_NO_BN}", model, by=lead)
        model = run.recalibrated(run.dirs[lead])
    run.score_all("uniform_soup", model, by=lead)


def _soup_state(run: _Run, directory: str, stack: contextlib.ExitStack) -> dict[str, torch.Tensor]:
    """The soup's weights as written, on the evaluation device."""
    state = checkpoint_float_state(stack.enter_context(open_checkpoint(directory, ingredient="soup")))
    return {k: v.to(run.holder.device) for k, v in state.items()}


def _the_soup(run: _Run, label: str, weights: Sequence[float], state: Mapping[str, torch.Tensor] | None) -> None:
    """The soup itself (and, when recalibrated, its weights with averaged statistics, as the engine computed them)."""
    if run.record is not None:
        run.score_all(f"{label}{_NO_BN}", run.holder.load_plan(run.plan.with_weights(weights), run.readers))
    run.score_all(label, run.holder.load(state))


def _extra_soup(run: _Run, label: str, path: str | os.PathLike[str], stack: contextlib.ExitStack) -> None:
    """Another soup directory, scored as row `label`."""
    run.score_all(label, run.holder.load(checkpoint_float_state(stack.enter_context(open_checkpoint(
        path, ingredient=label)))))


def _wise_ft(run: _Run, base: str | os.PathLike[str], soup_state: Mapping[str, torch.Tensor] | None,
             points: Sequence[tuple[float, str]], stack: contextlib.ExitStack) -> None:
    """WiSE-FT: `(1 - alpha) * base + alpha * soup` for each `(alpha, row)` of `points`."""
    base_reader = stack.enter_context(open_checkpoint(base, ingredient=str(base)))
    base_state = {k: v.to(run.holder.device) for k, v in checkpoint_float_state(base_reader).items()}
    if soup_state is None:
        raise EvaluationError("the soup's weights were not loaded before the WiSE points.", fix="report this bug.")
    for alpha, name in points:
        run.score_all(name, run.holder.load_combination([base_state, soup_state], [1 - alpha, alpha]))


def _calibration(soup: Any, calibration_dataset: Any) -> tuple[BatchNormCalibration | None, Any]:
    """The soup's BatchNorm recalibration record and its calibration data (passed, kept on the soup, or re-loaded
    from the recorded path or Hub id); `(None, None)` when the soup was not recalibrated.

    Raises:
        [`EvaluationError`]: recalibrated on an in-memory set that is not available.
    """
    record = soup.recipe.batchnorm
    if record is None:
        return None, None
    if calibration_dataset is not None:
        return record, load_calibration_data(calibration_dataset, record.split)[0]
    if soup.calibration_data is not None:
        return record, soup.calibration_data
    if record.recorded:
        return record, load_calibration_data(record.dataset, record.split)[0]
    raise EvaluationError("the soup's BatchNorm statistics were recomputed on an in-memory calibration set that is "
                          "not available here, and the baselines must be recalibrated on the same data for a "
                          "like-for-like comparison.", fix="pass calibration_dataset=<the calibration data>.",
                          param="calibration_dataset")


def _array(values: Any) -> Any:
    """Predictions or references as numpy arrays (tensors converted; a task's object arrays as they are)."""
    return values.numpy() if isinstance(values, torch.Tensor) else values


def _recorded_threshold(soup: Any) -> float | None:
    """The multi-label threshold the soup's recipe recorded (`None`: the task's default)."""
    evaluation = getattr(getattr(soup, "recipe", None), "evaluation", None)
    return getattr(evaluation, "threshold", None)


def _with_uncertainty(results: dict[str, dict[str, float]], predictions: dict[str, dict[str, torch.Tensor]],
                      evaluators: Mapping[str, Evaluator], ingredient_scores: dict[str, dict[str, float]], *,
                      best: str | None, bootstrap: Bootstrap) -> EvaluationReport:
    """The report: paired bootstrap intervals per set, and the small-set warnings."""
    first = next(iter(evaluators.values()))
    report = EvaluationReport(results, first.metric.name, ingredient_scores, bootstrap=bootstrap)
    for s, ev in evaluators.items():
        report.sizes[s] = len(ev)
        preds = {m: _array(p) for m, p in predictions[s].items()}
        intervals, differences = paired_bootstrap(preds, _array(ev.references), ev.metric,
                                                  baseline="best_individual" if best else None, bootstrap=bootstrap)
        report.intervals[s] = {m: i for m, i in intervals.items() if m in results[s]}
        others = [m for m in ev.task_impl.metrics().values() if m.name != ev.metric.name]
        if others:  # the task's metrics reported beside the main one
            refs = _array(ev.references)
            report.also[s] = {m: {o.name: o(p, refs) for o in others} for m, p in preds.items() if m in results[s]}
        report.differences[s] = {m: d for m, d in differences.items() if m in results[s]}
        scores = ingredient_scores[s]
        if len(scores) >= 2:
            top = max(scores, key=lambda n: ev.metric.key(scores[n]))
            warning = separation_warning(f"evaluation set '{s}'", len(ev), scores, intervals.get(f"ingredient:{top}"),
                                         bootstrap.confidence, ev.task_impl.unit)
            if warning:
                report.warnings.append(warning)
    return report


#: The former name of [`EvaluationReport`].
SoupReport = EvaluationReport
