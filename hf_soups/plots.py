"""The paper's figure: in-domain score on x, mean out-of-distribution score on y (needs the `plots` extra)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from .errors import SoupError

__all__ = ["plot_soup"]


def plot_soup(report: Any, path: str | os.PathLike[str], *, in_domain: str, ood: Sequence[str],
              title: str = "Model soups") -> str:
    """Write a PNG in the spirit of Wortsman et al. (2022), Figure 1.

    Ingredients are grey dots; uniform soup, greedy soup, ensemble and greedy ensemble are marked; the WiSE-FT
    curve is drawn when the report has `wise_ft@alpha` entries.

    Args:
        report ([`SoupReport`]): from [`Soup.evaluate`].
        path (`str`): the PNG to write.
        in_domain (`str`): the evaluation set on the x axis.
        ood (`Sequence[str]`): the sets averaged on the y axis.

    Raises:
        [`SoupError`]: matplotlib is missing (`pip install hf_soups[plots]`).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SoupError("plotting needs matplotlib.", fix="pip install 'hf_soups[plots]'.") from None
    res = report.results

    def point(method: str) -> tuple[float, float] | None:
        if method not in res[in_domain] or not all(method in res[s] for s in ood):
            return None
        return res[in_domain][method], sum(res[s][method] for s in ood) / len(ood)

    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=120)
    ing = [m for m in report.methods if m.startswith("ingredient:")]
    pts = [p for p in (point(m) for m in ing) if p]
    if pts:
        ax.scatter(*zip(*pts), c="#9e9e9e", s=30, label="fine-tuned ingredients", zorder=2)
    wise = sorted((float(m.split("@")[1]), m) for m in report.methods if m.startswith("wise_ft@"))
    if wise:
        curve = [point(m) for _, m in wise]
        ax.plot(*zip(*[c for c in curve if c]), "-o", c="#7b1fa2", ms=3, label="WiSE-FT (base → soup)", zorder=3)
    styles = {"uniform_soup": ("#1565c0", "s", "uniform soup"), "greedy_soup": ("#c62828", "*", "greedy soup"),
              "learned_soup": ("#ef6c00", "P", "learned soup"), "ensemble": ("#2e7d32", "D", "ensemble"),
              "greedy_ensemble": ("#66bb6a", "d", "greedy ensemble"), "best_individual": ("#424242", "^",
                                                                                          "best individual")}
    for method, (color, marker, label) in styles.items():
        p = point(method)
        if p:
            ax.scatter(*p, c=color, marker=marker, s=160 if marker == "*" else 70, label=label, zorder=4,
                       edgecolors="black", linewidths=0.5)
    ax.set_xlabel(f"{report.metric} on {in_domain} (in-domain)")
    ax.set_ylabel(f"mean {report.metric} on {', '.join(ood)} (shifted)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return os.fspath(path)
