"""Every figure, as PNG (matplotlib, no display needed): the per-frame metric curves of one or more
evaluations (``cttlstm evaluate --plot``), and a comparison's (:mod:`~cttlstm_cli.evaluation.compare`)
SSIM-vs-LPIPS bubble chart (the paper's Figure 2) and per-frame figures. The comparison's figures take a
``Comparison`` (its rows, horizons, metrics and convention); this module does not import it, so that
compare can import the figures."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cttlstm_cli.atomic import atomic_path
from cttlstm_cli.evaluation.report import DATASET_NAMES, METRIC_TITLES, format_count
from cttlstm_cli.evaluation.verdict import HIGHER_IS_BETTER

#: axis labels per metric (units follow the convention's scaling)
_LABELS = {"mse": "MSE", "mae": "MAE", "psnr": "PSNR (dB)", "ssim": "SSIM", "lpips": "LPIPS"}


def plot_per_frame(reports: Sequence[dict[str, Any]], path: str | Path, labels: Sequence[str] | None = None) -> Path:
    """Draw one panel per metric, one line per (report, horizon); x is the frame index after the context.

    The trivial baselines of the first report's longest horizon (when it has them) are drawn as
    thin dashed gray lines, so a model's curve can be read against "nothing moves" and "nothing there".
    ``reports`` are ``EvaluationReport.to_dict()`` objects (any number; one per checkpoint).
    The PNG is written to a temporary name and renamed, so a reader never sees half a file.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    if not reports:
        raise ValueError("nothing to plot")
    metric_names: list[str] = []
    for rep in reports:
        for h in rep["horizons"]:
            for m in h["per_frame"]:
                if m not in metric_names:
                    metric_names.append(m)
    labels = list(labels) if labels else [Path(r["checkpoint"]).parent.name or r["checkpoint"] for r in reports]
    n = len(metric_names)
    fig = Figure(figsize=(4.0 * n, 3.4), dpi=100, layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)[0]
    for ax, metric in zip(axes, metric_names):
        for label, rep in zip(labels, reports):
            context = int(rep.get("context_frames", 0))
            for h in rep["horizons"]:
                values = h["per_frame"].get(metric)
                if not values:
                    continue
                x = list(range(context + 1, context + len(values) + 1))
                name = label if len(rep["horizons"]) == 1 else f"{label} ({context}->{h['future_frames']})"
                ax.plot(x, values, marker="o" if len(values) <= 12 else None, markersize=3, label=name)
        longest = max(reports[0]["horizons"], key=lambda h: h["future_frames"])
        context = int(reports[0].get("context_frames", 0))
        for (name, baseline), style in zip(longest.get("baselines", {}).items(), ("--", ":")):
            values = baseline["per_frame"].get(metric)
            if values:
                x = list(range(context + 1, context + len(values) + 1))
                ax.plot(x, values, style, color="gray", linewidth=1, label=name.replace("_", " "))
        arrow = "higher is better" if metric in HIGHER_IS_BETTER else "lower is better"
        ax.set_title(f"{_LABELS.get(metric, metric)} ({arrow})", fontsize=10)
        ax.set_xlabel("frame")
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8)
    conventions = sorted({r["convention"] for r in reports})
    fig.suptitle(f"per-frame metrics, {', '.join(conventions)} convention ({reports[0].get('split', '')} split)", fontsize=11)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path




#: the largest bubble's area in points² (matplotlib ``scatter(s=...)``)
MAX_BUBBLE_AREA = 3000.0
#: default output folder of ``cttlstm compare``




@dataclass
class Bubble:
    """One plotted bubble: a model at one horizon, its area in points² proportional to its parameters."""

    label: str
    horizon: int
    lpips: float
    ssim: float
    parameters: int
    area: float
    quoted: bool


def _figure(width: float, height: float) -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def bubble_figure(cmp: Any) -> tuple[Any, list[Bubble]] | None:
    """The SSIM-vs-LPIPS bubble chart (the paper's Figure 2): one panel per horizon, one bubble per
    model holding both metrics and a parameter count there, area proportional to its parameters
    (one scale for the whole figure), each labelled; quoted rows are hollow. None when no measured
    row has both SSIM and LPIPS."""
    def usable(r: Any, f: int) -> bool:
        m = r.horizons.get(f, {})
        return m.get("ssim") is not None and m.get("lpips") is not None and bool(r.parameters)

    panels = [f for f in cmp.horizons if any(usable(r, f) for r in cmp.measured)]
    if not panels:
        return None
    largest = max(r.parameters or 0 for f in panels for r in cmp.rows if usable(r, f))
    fig = _figure(5.2 * len(panels), 4.2)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    bubbles: list[Bubble] = []
    colours = _colours()
    for ax, f in zip(axes, panels):
        for i, r in enumerate(cmp.rows):
            if not usable(r, f):
                continue
            params = int(r.parameters or 0)
            lpips, ssim = float(r.horizons[f]["lpips"] or 0), float(r.horizons[f]["ssim"] or 0)  # usable(): not None
            b = Bubble(r.label, f, lpips, ssim, params, MAX_BUBBLE_AREA * params / largest, r.quoted)
            colour = colours[i % len(colours)]
            if r.quoted:
                ax.scatter([b.lpips], [b.ssim], s=[b.area], facecolors="none", edgecolors=colour, linestyles="--",
                           linewidths=1.2)
            else:
                ax.scatter([b.lpips], [b.ssim], s=[b.area], color=colour, alpha=0.55, edgecolors="black",
                           linewidths=0.6)
            name = f"{b.label} [paper]" if b.quoted else b.label
            # the label sits just above the bubble's edge, so that overlapping bubbles keep readable labels
            radius = math.sqrt(b.area / math.pi)
            ax.annotate(f"{name} ({format_count(b.parameters)})", (b.lpips, b.ssim), xytext=(0, radius + 2),
                        textcoords="offset points", fontsize=7, ha="center", va="bottom")
            bubbles.append(b)
        scale = " ×10³" if cmp.convention == "paper" else ""
        ax.set_xlabel(f"LPIPS{scale} (lower is better)")
        ax.set_ylabel("SSIM (higher is better)")
        ax.set_title(f"{cmp.context_frames}→{f}", fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.margins(x=0.25, y=0.35)  # room for the labels above the bubbles
    fig.suptitle(f"SSIM vs LPIPS, bubble area ∝ parameters — {DATASET_NAMES.get(cmp.dataset, cmp.dataset)}, "
                 f"{cmp.convention} convention", fontsize=10)
    return fig, bubbles


def _colours() -> list[str]:
    return [f"tab:{c}" for c in ("blue", "orange", "green", "red", "purple", "brown", "pink", "gray", "olive", "cyan")]


def per_frame_figures(cmp: Any) -> dict[str, Any]:
    """One figure per metric: every measured model's per-frame curve at every shown horizon
    (x = frame index after the context), one line per model and horizon."""
    figures: dict[str, Any] = {}
    colours = _colours()
    for metric in cmp.metrics:
        if not any(r.per_frame.get(f, {}).get(metric) for r in cmp.measured for f in cmp.horizons):
            continue
        fig = _figure(6.0, 3.8)
        ax = fig.subplots()
        styles = ["-", "--", ":", "-."]
        for i, r in enumerate(cmp.measured):
            for j, f in enumerate(cmp.horizons):
                values = r.per_frame.get(f, {}).get(metric)
                if not values:
                    continue
                x = list(range(cmp.context_frames + 1, cmp.context_frames + len(values) + 1))
                label = r.label if len(cmp.horizons) == 1 else f"{r.label} ({cmp.context_frames}→{f})"
                ax.plot(x, values, styles[j % len(styles)], color=colours[i % len(colours)], label=label,
                        marker="o" if len(values) <= 12 else None, markersize=3)
        scale = " ×10³" if cmp.convention == "paper" and metric in ("mse", "mae", "lpips") else ""
        better = "higher is better" if metric in HIGHER_IS_BETTER else "lower is better"
        name = METRIC_TITLES.get(metric, metric)
        ax.set_title(f"{name}{scale} per frame ({better}), {cmp.convention} convention", fontsize=10)
        ax.set_xlabel("frame (after the context)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
        figures[metric] = fig
    return figures


def save_figure(fig: Any, path: Path) -> Path:
    """Write ``fig`` as a PNG to ``path`` atomically (a reader never sees half a file)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


__all__ = ["MAX_BUBBLE_AREA", "Bubble", "bubble_figure", "per_frame_figures", "plot_per_frame", "save_figure"]
