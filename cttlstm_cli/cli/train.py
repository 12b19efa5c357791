"""``cttlstm train``: the paper's training on one CPU, one GPU or many GPUs (torchrun)."""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from cttlstm_cli.cli import app
from cttlstm_cli.cli.common import DEVICE_OPTION, SET_OPTION, console, resolve_recipe_path


class TrainProgress:
    """A rich progress bar over all optimizer steps of the run, with loss, lr, clips/s and ETA."""

    def __init__(self, trainer: Any) -> None:
        per_epoch = trainer.steps_per_epoch()
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}  lr {task.fields[lr]}  tf {task.fields[tf]}  {task.fields[speed]} clips/s"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.task = self.progress.add_task(
            f"epoch {trainer.epoch + 1}/{trainer.recipe.train.epochs}",
            total=per_epoch * trainer.recipe.train.epochs,
            completed=trainer.step,
            loss="-",
            lr=f"{trainer.recipe.train.lr * trainer.schedule.lr_scale:.2e}",
            tf=f"{trainer.schedule.ratio:.2f}",
            speed="-",
        )
        self.progress.start()

    def update(self, trainer: Any, record: dict[str, Any] | None) -> None:
        fields: dict[str, Any] = {"description": f"epoch {trainer.epoch + 1}/{trainer.recipe.train.epochs}"}
        if record is not None:
            fields.update(
                loss=f"{record['loss']:.4f}",
                lr=f"{record['lr']:.2e}",
                tf=f"{record['teacher_forcing']:.2f}",
                speed=f"{record['clips_per_s']:.1f}" if record.get("clips_per_s") else "-",
            )
        self.progress.update(self.task, completed=trainer.step, **fields)

    def close(self) -> None:
        self.progress.stop()


@app.command(
    epilog=(
        "Examples:\n\n"
        "  cttlstm train recipes/mmnist.yaml                  (prepares Moving-MNIST on first use)\n\n"
        "  cttlstm train smoke --out runs/smoke --device cpu\n\n"
        "  cttlstm train kth --set train.precision=bf16 --set train.batch_size=16\n\n"
        "  cttlstm train mmnist --out runs/mmnist-1 --resume\n\n"
        "  torchrun --nproc-per-node 8 -m cttlstm_cli train recipes/kth.yaml --out runs/kth-ddp"
    )
)
def train(
    recipe: str = typer.Argument(..., help="Recipe file or bundled name (mmnist, kth, smoke, ...)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Run directory (default: runs/<recipe>-<timestamp>)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out (default: the newest run of this recipe)."),
    device: str = DEVICE_OPTION,
    max_steps: int | None = typer.Option(None, "--max-steps", min=1, help="Stop after this many optimizer steps (for trials)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    overrides: list[str] = SET_OPTION,
) -> None:
    """Train a model: 10 -> 10 prediction on 20-frame clips, L1 + MSE over all predictions.

    Adam(W) with gradient-norm clipping, scheduled sampling with the paper's plateau
    schedule, validation every epoch, best.pt chosen on validation loss. Checkpoints
    (last.pt, best.pt) are written atomically; Ctrl-C saves and exits, --resume
    continues exactly. Under torchrun every process trains a shard (DDP); only rank 0
    writes files.
    """
    from cttlstm_cli.training.data import open_training_data
    from cttlstm_cli.devices import open_device
    from cttlstm_cli.models import create_model
    from cttlstm_cli.recipe import load_recipe
    from cttlstm_cli.training.trainer import Trainer, default_run_dir, newest_run_dir

    cfg = load_recipe(resolve_recipe_path(recipe), overrides or [])
    if out is None:
        out = newest_run_dir(cfg) if resume else default_run_dir(cfg)
        if out is None:
            from cttlstm_cli.errors import CttlstmError

            raise CttlstmError(f"--resume: no run of recipe '{cfg.name}' under runs/; pass --out DIR")
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:  # under torchrun rank 0 alone locks, in the trainer
        from cttlstm_cli.training.runlock import check_unlocked

        check_unlocked(out)  # refuse a run directory in use before preparing or loading any data
    dev = open_device(device)
    # A model family that breaks the contract, or frames it cannot take, stop here, before any data
    # is prepared or written.
    create_model(cfg.model, cfg.data.channels).check_data(*cfg.data.frame_size, cfg.data.input_frames)
    train_set, val_set = open_training_data(cfg, console=console)

    def log(line: str) -> None:
        # The trainer's lines name paths, which rich would read as markup where they hold brackets,
        # and each stays one line (not wrapped at the terminal's width), like the error lines.
        console.print(line, markup=False, highlight=False, soft_wrap=True)

    trainer = Trainer(cfg, out, dev, train_set, val_set, resume=resume, progress=None if quiet else TrainProgress, log=log)
    if trainer.dist.is_main:
        where = f"resuming {trainer.resumed_from} at step {trainer.step}" if trainer.resumed_from else f"run directory {out}"
        console.print(f"[bold]{escape(cfg.name)}[/]: {escape(where)}; {len(train_set):,} clips/epoch, {len(val_set):,} validation clips, device {trainer.device}", soft_wrap=True)
    result = trainer.fit(max_steps=max_steps)
    if not trainer.dist.is_main:
        return
    if result.interrupted:
        raise typer.Exit(130)
    run = trainer.run
    saved = [f"{path} ({label})" for path, label in ((run.best, "best"), (run.last, "last")) if path.is_file()]
    lines = [
        f"epochs {result.epochs}, optimizer steps {result.steps}",
        f"best validation loss {result.best_val_loss:.5f} (epoch {result.best_epoch + 1})" if result.best_epoch >= 0 else "no validation yet",
        f"checkpoints: {', '.join(saved) or 'none'}",
        f"log: {run.metrics}",
    ]
    console.print(Panel(escape("\n".join(lines)), title=escape(f"trained {cfg.name}"), expand=False))
    # Outside the panel and never wrapped, so that it copies and pastes as one command.
    console.print(f"next: {next_command(run.root, run.best.is_file())}", soft_wrap=True, markup=False, highlight=False)


def next_command(run_dir: Path, has_best: bool) -> str:
    """The command that evaluates a finished run, quoted for a POSIX shell: the run directory
    (its best.pt), or its last.pt when no validation has run yet (``--max-steps``) and there is no best.pt."""
    target = run_dir if has_best else run_dir / "last.pt"
    return f"cttlstm evaluate {shlex.quote(str(target))}"
