"""A model against the trivial predictors of its report: where it wins, where it loses.

Reads one horizon of an evaluate report (``report.json``: ``metrics`` and ``baselines``). Used by
``cttlstm evaluate``'s verdict lines and by the suite's summary, so both say the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: the metrics where a larger value is the better one (the others are errors or distances)
HIGHER_IS_BETTER: frozenset[str] = frozenset({"psnr", "ssim"})
#: how the trivial predictors are named in sentences
TRIVIAL_LABELS = {"copy_last_frame": "copy last frame", "blank_frame": "blank frame"}


def is_better(metric: str, value: float, other: float) -> bool:
    """Whether ``value`` is strictly better than ``other`` under ``metric``."""
    return value > other if metric in HIGHER_IS_BETTER else value < other


@dataclass
class Verdict:
    """One horizon: the better trivial predictor by MSE and the model's change against it
    (negative: the model's MSE is lower), and every metric where some trivial predictor beats the
    model (``metric -> [(predictor, its value)]``)."""

    future_frames: int
    best_trivial: str | None = None
    mse_change: float | None = None
    loses_to: dict[str, list[tuple[str, float]]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"future_frames": self.future_frames, "best_trivial": self.best_trivial, "mse_change": self.mse_change,
                "loses_to": {m: [{"predictor": n, "value": v} for n, v in rows] for m, rows in self.loses_to.items()}}

    def losses_text(self, metrics: dict[str, float]) -> str:
        """``SSIM 0.612 < blank frame 0.701; PSNR ...``, or an empty string."""
        parts = []
        for metric, rows in self.loses_to.items():
            sign = "<" if metric in HIGHER_IS_BETTER else ">"
            beaten_by = ", ".join(f"{TRIVIAL_LABELS.get(n, n)} {v:.4g}" for n, v in rows)
            parts.append(f"{metric.upper()} {metrics[metric]:.4g} {sign} {beaten_by}")
        return "; ".join(parts)


def verdict(horizon: dict[str, Any]) -> Verdict:
    """The :class:`Verdict` of one report horizon (``{"future_frames", "metrics", "baselines"}``)."""
    metrics = horizon.get("metrics") or {}
    trivial = {name: b.get("metrics") or {} for name, b in (horizon.get("baselines") or {}).items()}
    out = Verdict(int(horizon["future_frames"]))
    mse = {n: m["mse"] for n, m in trivial.items() if "mse" in m}
    if "mse" in metrics and mse:
        out.best_trivial = min(mse, key=mse.__getitem__)
        best = mse[out.best_trivial]
        out.mse_change = (metrics["mse"] - best) / best if best > 0 else 0.0
    for metric, value in metrics.items():
        beaten_by = [(n, m[metric]) for n, m in trivial.items() if metric in m and is_better(metric, m[metric], value)]
        if beaten_by:
            out.loses_to[metric] = beaten_by
    return out


__all__ = ["HIGHER_IS_BETTER", "TRIVIAL_LABELS", "Verdict", "is_better", "verdict"]
