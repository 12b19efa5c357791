"""The per-frame metric curves of one or more evaluations as a PNG (matplotlib, no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cttlstm_cli.evaluation.verdict import HIGHER_IS_BETTER
from cttlstm_cli.atomic import atomic_path

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


__all__ = ["plot_per_frame"]
