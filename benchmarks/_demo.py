"""What the text demo (`science_text.py`) and the image demo (`science_vision.py`) share: the seeded random search's
draws, the linear probe of LP-FT, the results tables and the output's run sections. No side effects on import (torch is imported lazily)."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def draw_search(k: int, seed: int, space: Mapping[str, dict]) -> list[dict]:
    """The random search's `k` draws over `space`, in order (each with its own training seed: its index)."""
    rng = random.Random(seed)

    def sample(spec: dict):
        kind = spec["distribution"]
        if kind == "log-uniform":
            return math.exp(rng.uniform(math.log(spec["low"]), math.log(spec["high"])))
        if kind == "uniform":
            return rng.uniform(spec["low"], spec["high"])
        if kind == "integer-uniform":
            return rng.randint(spec["low"], spec["high"])
        return rng.choice(spec["values"])

    draws = []
    for i in range(k):
        d = {name: sample(spec) for name, spec in space.items()}
        if d["augmentation"] == "none":
            d["augmentation_rate"] = 0.0
        d["seed"] = i
        d["name"] = f"rs{i:02d}"
        draws.append(d)
    return draws


def fit_linear_probe(head: Any, feats: Any, labels: Any, l2: float, max_iter: int) -> None:
    """LP-FT's linear probe: `head` (a `torch.nn.Linear`) fitted in place on frozen features by full-batch L-BFGS,
    cross-entropy plus `l2 * ||W||^2`."""
    import torch

    opt = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(head(feats), labels) + l2 * head.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)


def run_sections(draws: Sequence[dict], describe: Callable[[dict], str], trace: Sequence[Mapping[str, Any]],
                 weights: Mapping[str, Sequence[float]], name: Callable[[str], str] = str) -> str:
    """The output's search draws, greedy trace and weights (markdown), each ingredient shown by `name`."""
    return ("Search draws:\n\n" + "\n".join(f"- {d['name']}: {describe(d)}" for d in draws)
            + "\n\nGreedy trace:\n\n" + "\n".join(
                f"- {name(str(s['ingredient']))}: {s['score']:.4f} -> {'accepted' if s['accepted'] else 'rejected'}"
                for s in trace)
            + "\n\nWeights: " + "; ".join(f"{m}: {[round(w, 3) for w in ws]}" for m, ws in weights.items()))


def mean_ood(report: Any, ood: Sequence[str]) -> dict[str, float]:
    """Each row's plain mean score over the shifted sets (rows scored on every one of them)."""
    return {m: sum(report.results[s][m] for s in ood) / len(ood) for m in report.methods
            if all(m in report.results[s] for s in ood)}


def results_tables(report: Any, ood: Sequence[str], extra: Sequence[str], *, wise_differences: bool = False,
                   name: Callable[[str], str] = str) -> list[str]:
    """The demo's two markdown tables: every row's score with its 95% bootstrap interval on val, test and each
    shifted set (plus their plain mean), then each soup's paired difference to the best individual.

    Args:
        report: the `EvaluationReport` of `Soup.evaluate`.
        ood: the shifted sets' names.
        extra: the `extra_soups` rows, after the uniform and greedy soups.
        wise_differences: also list the WiSE-FT rows in the differences table.
        name: how a row is shown in the first table.
    """
    soup_rows = ["uniform_soup", "greedy_soup", *extra]
    headline = [m for m in ["best_individual", *soup_rows, "ensemble", "greedy_ensemble"] if m in report.methods]
    wise = [m for m in report.methods if m.startswith("wise_ft@")]
    cols = ["val", "test", *ood, "mean_ood"]
    means = mean_ood(report, ood)

    def cell(c, m):  # the score with its 95% bootstrap interval (mean_ood: the plain mean)
        if c == "mean_ood":
            return f"{means[m]:.3f}" if m in means else "–"
        if m not in report.results[c]:
            return "–"
        ci = report.intervals.get(c, {}).get(m)
        return f"{report.results[c][m]:.3f}" + (f" [{ci.low:.3f}, {ci.high:.3f}]" if ci else "")

    lines = ["| method | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for m in headline + wise + [m for m in report.methods if m.startswith("ingredient:")]:
        lines.append(f"| {name(m)} | " + " | ".join(cell(c, m) for c in cols) + " |")
    sets_ci = [c for c in cols if c in report.differences]
    lines += ["", "Difference to the best individual (chosen on val), with its paired 95% bootstrap interval (an "
              "interval containing 0 means no detectable difference):", "",
              "| method | " + " | ".join(sets_ci) + " |", "|---|" + "---|" * len(sets_ci)]
    for m in headline[1:] + (wise if wise_differences else []):
        diffs = [report.differences[c].get(m) for c in sets_ci]
        lines.append(f"| {m} | " + " | ".join(f"{d.value:+.3f} [{d.low:+.3f}, {d.high:+.3f}]" if d else "–"
                                              for d in diffs) + " |")
    return lines
