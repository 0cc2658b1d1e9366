"""The paper's figure: in-domain score on x, mean out-of-distribution score on y (needs the `plots` extra)."""

from __future__ import annotations

import os
import re
import textwrap
from collections.abc import Sequence
from typing import Any

from .errors import SoupError

__all__ = ["plot_soup"]

#: method -> (colour, marker, label, size); markers differ in shape *and* colour, and are drawn hollow-on-filled so
#: that two methods at the same point (greedy soup = best individual, often) stay visible.
_STYLES = {
    "best_individual": ("#424242", "^", "best individual", 150),
    "greedy_soup": ("#c62828", "*", "greedy soup", 260),
    "uniform_soup": ("#1565c0", "s", "uniform soup", 90),
    "learned_soup": ("#ef6c00", "P", "learned soup", 120),
    "weighted_soup": ("#6d4c41", "X", "weighted soup", 110),
    "ensemble": ("#2e7d32", "D", "ensemble", 80),
    "greedy_ensemble": ("#00838f", "o", "greedy ensemble", 50),
}


def _wrap(text: str, width: int = 48) -> str:
    return "\n".join(textwrap.wrap(text, width)) or text


def plot_soup(report: Any, path: str | os.PathLike[str], *, in_domain: str, ood: Sequence[str] = (),
              title: str = "Model soups") -> str:
    """Write a PNG in the spirit of Wortsman et al. (2022), Figure 1.

    Left panel: ingredients as grey dots and each method with its own marker (methods at the same point are drawn
    largest first, so every marker stays visible and the legend names them all); x is the in-domain score, y the
    mean score on the shifted sets (without shifted sets, the methods are ranked on the in-domain score). Right
    panel, when the report has `wise_ft@alpha` entries: the WiSE-FT curve (`(1 - alpha) * base + alpha * soup`),
    score against alpha for each set.

    Args:
        report ([`EvaluationReport`]): from [`Soup.evaluate`].
        path (`str`): the PNG to write.
        in_domain (`str`): the evaluation set on the x axis.
        ood (`Sequence[str]`, *optional*): the sets averaged on the y axis.
        title (`str`, *optional*): the figure title.

    Returns:
        `str`: `path`.

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
    ood = [s for s in ood if s != in_domain]
    wise = sorted((float(m.split("@")[1]), m) for m in report.methods if m.startswith("wise_ft@"))
    ncols = 2 if wise else 1
    fig, axes = plt.subplots(1, ncols, figsize=(6.4 * ncols, 5.0), dpi=120, squeeze=False)
    ax = axes[0][0]
    if ood:
        _scatter_panel(ax, report, in_domain, ood)
    else:
        _ranking_panel(ax, report, in_domain)
    if wise:
        wax = axes[0][1]
        alphas = [a for a, _ in wise]
        for s in [in_domain, *ood]:
            wax.plot(alphas, [res[s].get(m, float("nan")) for _, m in wise], "-o", ms=4, label=s)
        wax.set_xlabel("α  (0 = pretrained base, 1 = soup)")
        wax.set_ylabel(f"{report.metric}")
        wax.set_title("WiSE-FT: base → soup")
        wax.grid(alpha=0.3)
        wax.legend(fontsize=8, loc="best")
    fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, bbox_inches="tight")  # nothing clipped: the canvas grows to hold every label
    plt.close(fig)
    return os.fspath(path)


def _scatter_panel(ax: Any, report: Any, in_domain: str, ood: Sequence[str]) -> None:
    res = report.results

    def point(method: str) -> tuple[float, float] | None:
        if method not in res[in_domain] or not all(method in res[s] for s in ood):
            return None
        return res[in_domain][method], sum(res[s][method] for s in ood) / len(ood)

    ing = [m for m in report.methods if m.startswith("ingredient:")]
    pts = [p for p in (point(m) for m in ing) if p]
    if pts:
        ax.scatter(*zip(*pts), c="#9e9e9e", s=30, label="fine-tuned ingredients", zorder=2)
    from matplotlib.transforms import offset_copy

    present = [(m, p) for m in _STYLES if (p := point(m)) is not None]
    groups: dict[tuple[float, float], list[str]] = {}
    for method, p in present:  # methods at the same point (greedy soup = best individual, often)
        groups.setdefault((round(p[0], 4), round(p[1], 4)), []).append(method)
    for (x, y), methods in groups.items():
        for k, method in enumerate(methods):
            # side by side, 13 points apart, so that no marker hides another; the legend names each
            shift = offset_copy(ax.transData, fig=ax.figure, x=(k - (len(methods) - 1) / 2) * 13, units="points")
            color, marker, label, size = _STYLES[method]
            same = f" (= {', '.join(_STYLES[m][2] for m in methods if m != method)})" if len(methods) > 1 else ""
            ax.scatter([x], [y], c=color, marker=marker, s=size, label=label + same, zorder=5, transform=shift,
                       edgecolors="white", linewidths=1.0)
    if groups:  # offset markers do not count for autoscaling: their data points do
        ax.update_datalim(list(groups))
        ax.autoscale_view()
    ax.set_xlabel(_wrap(f"{report.metric} on {in_domain} (in-domain)"))
    ax.set_ylabel(f"mean {report.metric} on the shifted sets")
    ax.set_title(_wrap(f"shifted: {', '.join(ood)}", 60), fontsize=9)
    ax.grid(alpha=0.3)
    ax.margins(0.12)
    ax.legend(fontsize=7, loc="best", framealpha=0.85)


def _ranking_panel(ax: Any, report: Any, in_domain: str) -> None:
    res = report.results[in_domain]
    methods = [m for m in res if not m.startswith("wise_ft@")]
    methods.sort(key=lambda m: res[m])
    labels = [re.sub(r"@([0-9a-f]{7})[0-9a-f]{33}$", r"@\1", m.replace("ingredient:", "")) for m in methods]
    colors = [_STYLES.get(m, ("#9e9e9e",))[0] for m in methods]
    ax.barh(range(len(methods)), [res[m] for m in methods], color=colors)
    ax.set_yticks(range(len(methods)), [_wrap(lbl, 40) for lbl in labels], fontsize=8)
    lo = min(res[m] for m in methods)
    ax.set_xlim(max(0.0, lo - 0.1 * (max(res[m] for m in methods) - lo + 0.05)), None)
    ax.set_xlabel(f"{report.metric} on {in_domain}")
    ax.grid(alpha=0.3, axis="x")
