"""`hf_soups.diagnose` (this module is `diagnosis`, so that the package attribute stays the function). Before souping:
do the ingredients share a basin? Distances, task-vector cosines and interpolation curves.

`diagnose` reads the checkpoints once, chunk by chunk ([`hf_soups.merge.stats.collect_stats`]), and reports:

- the pairwise relative distances ‖θ_i − θ_j‖ / mean_k ‖θ_k‖ (fine-tunes of one base are typically a few percent
  apart; independently trained models are of the order of √2),
- with a base, the task-vector cosines cos(θ_i − θ_base, θ_j − θ_base) and each task vector's length relative to
  the base (Model Stock's t comes from these cosines),
- with held-out data, the score along the straight lines from the best ingredient to the second best and to the
  uniform soup (α = 0, 0.1, ..., 1; Wortsman et al. 2022, Figure 2), and a one-line reading.

The reading: a line whose midpoint scores no worse than its worse end by more than [`BASIN_TOLERANCE`] (relative to
the ends' mean magnitude) goes through one basin; otherwise the drop is a barrier and souping those two is a risk.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from .errors import SoupError

__all__ = ["Diagnosis", "Curve", "diagnose", "BASIN_TOLERANCE", "ALPHAS"]

#: The interpolation points: α = 0, 0.1, ..., 1.
ALPHAS: tuple[float, ...] = tuple(i / 10 for i in range(11))
#: How much worse than its worse end (relative to the ends' mean magnitude) a line's midpoint may score and still
#: read as one basin: 2%, about the noise of an accuracy on a few hundred examples.
BASIN_TOLERANCE = 0.02

Matrix = tuple[tuple[float, ...], ...]


@dataclass(frozen=True)
class Curve:
    """Scores along the line (1 − α)·θ_start + α·θ_end.

    Attributes:
        start (`str`), end (`str`): what α = 0 and α = 1 are (an ingredient, or `"uniform soup"`).
        alphas (`tuple[float, ...]`): the points.
        scores (`tuple[float, ...]`): the metric at each point.
        one_basin (`bool`): whether the midpoint is within [`BASIN_TOLERANCE`] of the worse end.
    """

    start: str
    end: str
    alphas: tuple[float, ...]
    scores: tuple[float, ...]
    one_basin: bool

    def reading(self, higher_is_better: bool = True) -> str:
        """One line: the midpoint against the ends, and what it means."""
        mid = self.scores[len(self.scores) // 2]
        ends = f"{self.scores[0]:.4g} and {self.scores[-1]:.4g}"
        best_inside = (max if higher_is_better else min)(self.scores[1:-1])
        verdict = "one basin" if self.one_basin else "a barrier between them: different basins, souping them is a risk"
        extra = ""
        if self.one_basin and (best_inside > max(self.scores[0], self.scores[-1]) if higher_is_better
                               else best_inside < min(self.scores[0], self.scores[-1])):
            extra = f"; the line beats both ends ({best_inside:.4g})"
        return f"{self.start} → {self.end}: the midpoint scores {mid:.4g} against {ends} at the ends: {verdict}{extra}"


def _one_basin(scores: Sequence[float], higher_is_better: bool) -> bool:
    mid, a, b = scores[len(scores) // 2], scores[0], scores[-1]
    slack = BASIN_TOLERANCE * max((abs(a) + abs(b)) / 2, 1e-12)
    return mid >= min(a, b) - slack if higher_is_better else mid <= max(a, b) + slack


@dataclass(frozen=True)
class Diagnosis:
    """What [`diagnose`] found.

    Attributes:
        names (`tuple[str, ...]`): the ingredients.
        base (`str`, *optional*): the base, when given.
        relative_distances (`Matrix`): ‖θ_i − θ_j‖ / mean_k ‖θ_k‖ over all floating tensors.
        cosines (`Matrix`, *optional*): task-vector cosines (with a base; NaN for a zero task vector).
        task_vector_norms (`tuple[float, ...]`, *optional*): ‖θ_i − θ_base‖ / ‖θ_base‖ (with a base).
        metric (`str`, *optional*): the metric of the scores.
        higher_is_better (`bool`): the metric's direction.
        scores (`tuple[float, ...]`, *optional*): each ingredient's own score (with held-out data).
        curves (`tuple[Curve, ...]`): best → second best, best → uniform soup (with held-out data).
    """

    names: tuple[str, ...]
    base: str | None
    relative_distances: Matrix
    cosines: Matrix | None = None
    task_vector_norms: tuple[float, ...] | None = None
    metric: str | None = None
    higher_is_better: bool = True
    scores: tuple[float, ...] | None = None
    curves: tuple[Curve, ...] = ()

    @property
    def reading(self) -> str:
        """The one-line reading of each curve (or of the distances without held-out data)."""
        if self.curves:
            return "\n".join(c.reading(self.higher_is_better) for c in self.curves)
        off = [self.relative_distances[i][j] for i in range(len(self.names)) for j in range(i + 1, len(self.names))]
        return (f"pairwise relative distances {min(off):.3g} to {max(off):.3g}; pass held-out data "
                "(eval_dataset) for the interpolation curves that tell one basin from several.")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (NaN cosines become `None`)."""
        def clean(v: Any) -> Any:
            if isinstance(v, float):
                return None if math.isnan(v) else v
            if isinstance(v, (list, tuple)):
                return [clean(x) for x in v]
            if isinstance(v, dict):
                return {k: clean(x) for k, x in v.items()}
            return v

        out = clean(asdict(self))
        out["reading"] = self.reading
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def __str__(self) -> str:
        width = max(len(n) for n in self.names)
        k = len(self.names)
        lines = ["Relative distances ‖θ_i − θ_j‖ / mean‖θ‖:"]
        lines += [f"  {self.names[i]:<{width}}  " + "  ".join(f"{self.relative_distances[i][j]:8.4f}" for j in range(k))
                  for i in range(k)]
        if self.cosines is not None and self.task_vector_norms is not None:
            lines.append(f"Task-vector cosines (base {self.base}) and ‖τ‖/‖θ_base‖:")
            lines += [f"  {self.names[i]:<{width}}  " + "  ".join(f"{self.cosines[i][j]:8.4f}" for j in range(k))
                      + f"   |τ| {self.task_vector_norms[i]:.4g}" for i in range(k)]
        if self.scores is not None:
            lines.append(f"Scores ({self.metric}):")
            lines += [f"  {n:<{width}}  {s:.4f}" for n, s in zip(self.names, self.scores)]
        for c in self.curves:
            lines.append(f"Curve {c.start} → {c.end}:  " + "  ".join(f"{a:.1f}:{s:.4f}" for a, s in zip(c.alphas,
                                                                                                      c.scores)))
        lines.append(self.reading)
        return "\n".join(lines)

    def plot(self, path: str | os.PathLike[str]) -> str:
        """Write a PNG: the interpolation curves (left, with held-out data) and the pairwise distances or, with a
        base, the task-vector cosines as a heatmap (right).

        Raises:
            [`SoupError`]: matplotlib is missing (`pip install 'hf_soups[plots]'`).
        """
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            raise SoupError("plotting needs matplotlib.", fix="pip install 'hf_soups[plots]'.") from None
        panels = 2 if self.curves else 1
        fig, axes = plt.subplots(1, panels, figsize=(6.0 * panels, 4.8), dpi=120, squeeze=False)
        if self.curves:
            ax = axes[0][0]
            for c, style in zip(self.curves, ("-o", "--s")):
                ax.plot(c.alphas, c.scores, style, ms=4, label=f"{c.start} → {c.end}")
            ax.set_xlabel("α  (0 = best ingredient)")
            ax.set_ylabel(self.metric or "score")
            ax.set_title("Interpolation between fine-tunes")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8, loc="best")
        ax = axes[0][panels - 1]
        matrix, title = ((self.cosines, "task-vector cosines") if self.cosines is not None
                         else (self.relative_distances, "relative distances"))
        image = ax.imshow([[0.0 if math.isnan(v) else v for v in row] for row in matrix], cmap="viridis")
        ax.set_xticks(range(len(self.names)), [n[-18:] for n in self.names], rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(self.names)), [n[-18:] for n in self.names], fontsize=7)
        ax.set_title(title)
        fig.colorbar(image, ax=ax)
        fig.tight_layout()
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fig.savefig(path, bbox_inches="tight")
        plt.close(fig)
        return os.fspath(path)


def _distances(stats: Any) -> tuple[Matrix, Matrix | None, tuple[float, ...] | None]:
    total = stats.totals()
    k = len(total.sq_norms)
    scale = sum(math.sqrt(v) for v in total.sq_norms) / k
    rel = tuple(tuple(math.sqrt(total.sq_distances[i][j]) / scale if scale > 0 else math.nan for j in range(k))
                for i in range(k))
    if total.dots is None:
        return rel, None, None
    base_norm = math.sqrt(total.base_sq_norm or 0.0)
    norms = tuple(math.sqrt(max(total.dots[i][i], 0.0)) / base_norm if base_norm > 0 else math.nan for i in range(k))
    return rel, total.cosines(), norms


def diagnose(
    refs: Sequence[Any],
    base: str | os.PathLike[str] | None = None,
    eval_dataset: Any = None,
    *,
    revision: str | Sequence[str | None] | None = None,
    access: Any = None,
    eval_spec: Any = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    progress: bool = True,
) -> Diagnosis:
    """Tell, before souping, whether the ingredients share a basin.

    Args:
        refs (`Sequence[str | os.PathLike | IngredientRef]`):
            Two or more Hub repo ids (`"user/model"`, `"user/model@rev"`) or checkpoint directories.
        base (`str` or `os.PathLike`, *optional*):
            The pretrained checkpoint they were fine-tuned from: adds task-vector cosines and lengths.
        eval_dataset (*optional*):
            Held-out data in any form `soup_from_hub` reads: adds each ingredient's score and the interpolation
            curves (best → second best, best → uniform soup) with their reading.
        revision (`str` or `Sequence`, *optional*), access ([`HubAccess`], *optional*): as in `soup_from_hub`.
        eval_spec ([`EvalSpec`], *optional*): the evaluation settings (split, columns, metric, `max_samples`), as
            in `soup_from_hub`.
        trust_remote_code, allow_pickle: as in `soup_from_hub`.
        progress (`bool`, *optional*, defaults to `True`): show progress bars.

    Returns:
        [`Diagnosis`]: `.to_dict()`, `.plot(path)`, and a table as `str()`.

    Raises:
        [`InvalidArgumentError`]: fewer than two refs, or a malformed ref.
        [`SoupError`]: tensors missing or of another shape in an ingredient or the base; the errors of
            `soup_from_hub`'s download and evaluation.
    """
    from . import api
    from .checkpoint.meta import read_config
    from .errors import InvalidArgumentError
    from .merge.stats import collect_stats
    from .refs import local_dir_of

    if isinstance(refs, (str, os.PathLike)) or len(refs) < 2:
        raise InvalidArgumentError("diagnose compares two or more checkpoints.", param="refs",
                                   fix="pass a list of two or more repo ids or checkpoint directories.")
    from .hub.access import HubAccess
    from .recipes import EvalSpec

    access = access if access is not None else HubAccess()
    spec = eval_spec if eval_spec is not None else EvalSpec()
    if not isinstance(access, HubAccess) or not isinstance(spec, EvalSpec):
        raise InvalidArgumentError("access= takes a HubAccess and eval_spec= an EvalSpec.", param="access",
                                   fix="pass access=HubAccess(endpoint=..., token=...), eval_spec=EvalSpec(...).")
    if eval_dataset is None and spec.dataset is not None:
        eval_dataset = spec.dataset
    if eval_dataset is not None:  # loaded and checked before any download
        from .evaluation.data import as_eval_dataset

        eval_dataset = as_eval_dataset(eval_dataset, spec.split, max_samples=spec.max_samples)
    ingredients = api._resolve_all(refs, revision, access, allow_pickle=allow_pickle)
    base_ings = api._resolve_all([base], None, access, allow_pickle=allow_pickle) if base else []
    with contextlib.ExitStack() as stack:
        opened, readers = api._open_readers(ingredients + base_ings, stream=False, access=access,
                                            allow_pickle=allow_pickle, stack=stack)
        names = [ing.name for ing in opened[: len(ingredients)]]
        base_reader = readers[len(ingredients)] if base_ings else None
        stats = collect_stats(readers[: len(ingredients)], base_reader, names=names,
                              base_name=opened[-1].name if base_ings else None, progress=progress)
        rel, cosines, norms = _distances(stats)
        found = Diagnosis(tuple(names), opened[-1].name if base_ings else None, rel, cosines, norms)
        if eval_dataset is None:
            return found
        directory = local_dir_of(opened[0])
        config = read_config(os.path.join(directory, "config.json"), names[0])
        return _with_curves(found, readers[: len(ingredients)], directory, config, eval_dataset,
                            metric=spec.metric, text_column=spec.text_column, label_column=spec.label_column,
                            max_samples=spec.max_samples, trust_remote_code=trust_remote_code, progress=progress)


def _with_curves(found: Diagnosis, readers: Sequence[Any], directory: str, config: Any, eval_dataset: Any, *,
                 metric: Any, text_column: str | None, label_column: str | None, max_samples: int | None,
                 trust_remote_code: bool, progress: bool) -> Diagnosis:
    from huggingface_hub.utils import tqdm

    from . import constants
    from .evaluation.candidates import ModelHolder
    from .evaluation.evaluator import Evaluator
    from .merge.plan import build_plan

    evaluator = Evaluator(eval_dataset, directory, config, metric=metric, text_column=text_column,
                          label_column=label_column, max_samples=max_samples, name=found.names[0])
    holder = ModelHolder(directory, config, trust_remote_code, device=evaluator.device)
    k = len(readers)
    plan = build_plan([r.tensors for r in readers], [1.0] * k, names=list(found.names))
    up = evaluator.metric.higher_is_better
    bar = tqdm(total=k + 2 * len(ALPHAS), desc="Scoring interpolations",
               disable=not progress or constants.progress_disabled())

    def score(weights: Sequence[float]) -> float:
        value = evaluator.score(holder.load_plan(plan.with_weights(weights), readers))[0]
        bar.update(1)
        return float(value)

    try:
        scores = [score([1.0 if j == i else 0.0 for j in range(k)]) for i in range(k)]
        order = sorted(range(k), key=lambda i: -scores[i] if up else scores[i])
        best, second = order[0], order[1]
        curves = []
        for label, end in ((found.names[second], [1.0 if j == second else 0.0 for j in range(k)]),
                           ("uniform soup", [1.0 / k] * k)):
            line = [score([(1 - a) * (j == best) + a * end[j] for j in range(k)]) for a in ALPHAS]
            curves.append(Curve(found.names[best], label, ALPHAS, tuple(line), _one_basin(line, up)))
    finally:
        bar.close()
    return Diagnosis(found.names, found.base, found.relative_distances, found.cosines, found.task_vector_norms,
                     evaluator.metric.name, up, tuple(scores), tuple(curves))
