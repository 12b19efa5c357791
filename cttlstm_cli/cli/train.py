"""``cttlstm train``: the paper's training on one CPU, one GPU or many GPUs (torchrun)."""

from __future__ import annotations

import os
import shlex
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.panel import Panel
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TextColumn
from rich.table import Column
from rich.text import Text

from cttlstm_cli.cli.app import app
from cttlstm_cli.cli.common import DEVICE_OPTION, SET_OPTION, THREADS_OPTION, console, err_console, resolve_recipe_path
from cttlstm_cli.timing import format_duration
from cttlstm_cli.training.events import EpochFinished, FitEnded, FitStarted, RunOpened, RunState, StepFinished, TrainingEvent, ValidationBatch
from cttlstm_cli.run_files import BEST_CHECKPOINT, LAST_CHECKPOINT, METRICS_LOG


def clock_text(seconds: float) -> str:
    """A clock for the bar: ``0:04:07``, ``19:40:00``; from a day on, days and hours (``416 d 03 h``),
    so that the row stays short enough for an 80-column terminal."""
    whole = max(0, int(seconds))
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    return f"{days} d {hours:02d} h" if days else f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


class ElapsedColumn(ProgressColumn):
    """Time since the row (re)started, in :func:`clock_text`'s form."""

    def render(self, task: Task) -> Text:
        return Text(clock_text(task.elapsed or 0.0), style="progress.elapsed")


class CountdownColumn(ProgressColumn):
    """The time left, counting down between updates from a deadline the trainer's estimate sets.

    rich's own TimeRemainingColumn needs several updates within 30 s to estimate a speed: with
    steps of minutes (a paper recipe on a CPU) it never shows one."""

    def render(self, task: Task) -> Text:
        deadline = task.fields.get("deadline")
        if deadline is None:
            return Text("ETA -:--:--", style="progress.remaining")
        return Text(f"ETA {clock_text(deadline - task.get_time())}", style="progress.remaining")


class FittedProgress(Progress):
    """A Progress whose bar takes the width that its texts leave on the console.

    rich shares an overflow out among all the columns: on an 80-column terminal the old bar
    cut its clock to ``0:…`` (it looked frozen) and its ETA to ``-:--…``. Here the bar shrinks
    first, then the last column (loss, lr, ...); the clocks are never cut."""

    def __init__(self, *args: Any, bar: BarColumn, stretch: Column, **kwargs: Any) -> None:
        self._bar, self._stretch = bar, stretch  # before rich's __init__, which renders once
        self._width_of = kwargs["console"]
        super().__init__(*args, **kwargs)

    def get_renderables(self) -> Iterator[Any]:
        tasks = [t for t in self.tasks if t.visible]
        fixed = len(self.columns) - 1  # the spaces between columns
        wanted = 0
        for column in self.columns:
            widths = [column.render(t).cell_len for t in tasks] if column is not self._bar else [0]
            # A column's min_width keeps the bar from jumping as its texts change ("epoch 1/3" / "val 1/3").
            width = max(max(widths, default=0), column.get_table_column().min_width or 0)
            if column.get_table_column() is self._stretch:
                wanted = width
            else:
                fixed += width
        room = self._width_of.width - fixed
        self._bar.bar_width = max(8, min(40, room - wanted))
        self._stretch.max_width = max(1, room - self._bar.bar_width)
        yield from super().get_renderables()


class TrainProgress:
    """What a training run shows while it runs: one row for this epoch (its steps, or its validation
    batches), with its clock, ETA, the recent loss and clips/s, and one row for the whole run (its
    clock, ETA, learning rate and teacher forcing); plus one line per finished epoch.

    A listener of the trainer's :mod:`~cttlstm_cli.training.events`: everything it shows comes from
    them, the ETAs from the trainer's measured step time, counting down live between events. Off a
    terminal rich draws no live display: only the epoch lines and the final rows are printed."""

    def __init__(self) -> None:
        self.progress: FittedProgress | None = None

    def __call__(self, event: TrainingEvent) -> None:
        if isinstance(event, FitStarted):
            self._start(event.state)
        elif self.progress is None:
            return
        elif isinstance(event, StepFinished):
            self._show(event.state)
        elif isinstance(event, ValidationBatch):
            self._validating(event)
        elif isinstance(event, EpochFinished):
            self._epoch_done(event.state, event.record)
        elif isinstance(event, FitEnded):
            self.progress.stop()

    def _start(self, state: RunState) -> None:
        self.per_epoch, self.epochs = state.steps_per_epoch, state.epochs
        bar = BarColumn(bar_width=20)
        stretch = Column(no_wrap=True, overflow="ellipsis", min_width=len("loss 0.1234  12.3 clips/s"))
        self.progress = FittedProgress(
            TextColumn("[bold]{task.description}", table_column=Column(no_wrap=True, min_width=len(f"epoch {self.epochs}/{self.epochs}"))),
            bar,
            TextColumn("{task.fields[count]}", justify="right",
                       table_column=Column(no_wrap=True, min_width=len(f"{self.per_epoch:,}/{self.per_epoch:,}"))),
            ElapsedColumn(table_column=Column(no_wrap=True)),
            CountdownColumn(table_column=Column(no_wrap=True)),
            TextColumn("{task.fields[stats]}", markup=False, table_column=stretch),
            bar=bar,
            stretch=stretch,
            console=console,
            transient=False,
            auto_refresh=True,  # the clocks move while a step of minutes runs (in rich's own thread)
            refresh_per_second=4,  # a clock of seconds needs no more; the CPU is busy training
        )
        self.epoch_task = self.progress.add_task("", total=self.per_epoch, count="", stats="", deadline=None)
        self.run_task = self.progress.add_task("overall", total=self.per_epoch * self.epochs, count="", stats="", deadline=None)
        self._epoch = state.epoch
        self._epoch_started = self._validation_started = time.monotonic()
        self._show_epoch(state)
        self._show(state)
        self.progress.start()

    def _restart_epoch_row(self, description: str, total: int, completed: int, **fields: Any) -> None:
        # reset() replaces all of the row's fields: the others are carried over, so that no
        # refresh in between draws the row without them.
        assert self.progress is not None
        row = next(t for t in self.progress.tasks if t.id == self.epoch_task)
        self.progress.reset(self.epoch_task, total=total, completed=completed, description=description, **{**row.fields, **fields})

    def _show_epoch(self, state: RunState) -> None:
        self._epoch = state.epoch
        self._epoch_started = time.monotonic()
        self._restart_epoch_row(f"epoch {state.epoch + 1}/{self.epochs}", self.per_epoch, state.position,
                                count=f"{state.position:,}/{self.per_epoch:,}", deadline=None)

    def _show(self, state: RunState) -> None:
        assert self.progress is not None
        now = time.monotonic()
        if state.epoch < self.epochs:  # after the last epoch the row keeps showing its validation
            if state.epoch != self._epoch:
                self._show_epoch(state)
            speed = f"{state.clips_per_s:.3g} clips/s" if state.clips_per_s else "- clips/s"
            loss = f"{state.loss:.4f}" if state.loss is not None else "-"
            left = state.epoch_seconds_left
            self.progress.update(self.epoch_task, completed=state.position, count=f"{state.position:,}/{self.per_epoch:,}",
                                 stats=f"loss {loss}  {speed}", deadline=None if left is None else now + left)
        left = state.run_seconds_left
        self.progress.update(self.run_task, completed=state.step, count=f"{100 * state.step / state.total_steps:.1f}%",
                             stats=f"lr {state.lr:.2e}  tf {state.teacher_forcing:.2f}",
                             deadline=None if left is None else now + left)

    def _validating(self, event: ValidationBatch) -> None:
        """Before the first validation batch (``done`` 0) and after each: the epoch row shows the validation."""
        assert self.progress is not None
        now, done, total = time.monotonic(), event.done, event.total
        if done == 0:
            self._validation_started = now
            self._restart_epoch_row(f"val {event.epoch + 1}/{self.epochs}", total, 0, count=f"0/{total:,}", stats="", deadline=None)
            return
        left = (now - self._validation_started) / done * (total - done)
        self.progress.update(self.epoch_task, completed=done, count=f"{done:,}/{total:,}", deadline=now + left)

    def _epoch_done(self, state: RunState, record: dict[str, Any]) -> None:
        best = " (best so far)" if record["val_loss"] <= record["best_val_loss"] else ""
        took = format_duration(time.monotonic() - self._epoch_started)
        run_left = state.run_seconds_left
        left = f", about {format_duration(run_left)} left" if run_left is not None and state.epoch < self.epochs else ""
        line = f"epoch {record['epoch'] + 1}/{self.epochs}: validation loss {record['val_loss']:.5f}{best}; {took} for the epoch{left}"
        console.print(line, markup=False, highlight=False, soft_wrap=True)
        if state.epoch < self.epochs:
            self._show_epoch(state)
        self._show(state)


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
    threads: int | None = THREADS_OPTION,
    max_steps: int | None = typer.Option(None, "--max-steps", min=1, help="Stop after this many optimizer steps (for trials)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar and no progress lines."),
    overrides: list[str] = SET_OPTION,
) -> None:
    """Train a model: predict data.future_frames frames from data.input_frames context frames
    (10 -> 10 on 20-frame clips in the paper's recipes), train.loss over all predictions
    (L1 + MSE in the paper's recipes).

    Adam(W) with gradient-norm clipping, scheduled sampling with the paper's plateau
    schedule (or train.lr_schedule: onecycle), validation every epoch, best.pt chosen on
    validation loss. Seconds after the start, a probe of a clip (and, for a quick model, of a
    micro-batch) estimates how long an epoch and the whole run will take; the first optimizer
    step is timed and says it again. Checkpoints (last.pt, best.pt) are written atomically;
    Ctrl-C saves and exits (before the first step has finished it exits at once, saving
    nothing), --resume continues exactly. Under torchrun every process trains a shard (DDP); only rank 0
    writes files.
    """
    from cttlstm_cli.recipe import load_recipe
    from cttlstm_cli.training.run import resolve_run_dir, run_training

    cfg = load_recipe(resolve_recipe_path(recipe), overrides or [])
    out = resolve_run_dir(cfg, out, resume)
    main_rank = int(os.environ.get("RANK", "0")) == 0

    def say(line: str) -> None:
        # The trainer's lines name paths, which rich would read as markup where they hold brackets,
        # and each stays one line (not wrapped at the terminal's width), like the error lines.
        console.print(line, markup=False, highlight=False, soft_wrap=True)

    bar = None if quiet else TrainProgress()

    def show(event: TrainingEvent) -> None:
        if isinstance(event, RunOpened):
            where = f"resuming {event.resumed_from} at step {event.step}" if event.resumed_from else f"run directory {event.run_dir}"
            console.print(f"[bold]{escape(cfg.name)}[/]: {escape(where)}; {event.train_clips:,} clips/epoch, "
                          f"{event.val_clips:,} validation clips, device {event.device}", soft_wrap=True)
        elif bar is not None:
            bar(event)

    result = run_training(cfg, out, resume=resume, device=device, threads=threads, max_steps=max_steps, events=show, log=say,
                          status=None if quiet or not main_rank else say, console=None if quiet else console)
    if not main_rank:
        return
    if result.interrupted:
        same = train_command(recipe, out, resume, device, max_steps, quiet, overrides, threads)
        go_on = train_command(recipe, out, True, device, max_steps, quiet, overrides, threads)
        err_console.print(interrupted_line(out, same, go_on, result), markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(130)
    run_dir = result.run_dir
    best, last = run_dir / BEST_CHECKPOINT, run_dir / LAST_CHECKPOINT
    saved = [f"{path} ({label})" for path, label in ((best, "best"), (last, "last")) if path.is_file()]
    lines = [
        f"epochs {result.epochs}, optimizer steps {result.steps}",
        f"best validation loss {result.best_val_loss:.5f} (epoch {result.best_epoch + 1})" if result.best_epoch >= 0 else "no validation yet",
        f"checkpoints: {', '.join(saved) or 'none'}",
        f"log: {run_dir / METRICS_LOG}",
    ]
    console.print(Panel(escape("\n".join(lines)), title=escape(f"trained {cfg.name}"), expand=False))
    # Outside the panel and never wrapped, so that it copies and pastes as one command.
    console.print(f"next: {next_command(run_dir, best.is_file())}", soft_wrap=True, markup=False, highlight=False)


def train_command(
    recipe: str, out: Path, resume: bool, device: str, max_steps: int | None, quiet: bool, overrides: list[str] | None,
    threads: int | None = None,
) -> str:
    """This ``cttlstm train`` command, quoted for a POSIX shell, with the run directory spelt out
    (a default one is named after the time it was made) and ``--resume`` when ``resume``."""
    args = ["cttlstm", "train", recipe, "--out", str(out)]
    if resume:
        args.append("--resume")
    if device != "auto":
        args += ["--device", device]
    if threads is not None:
        args += ["--threads", str(threads)]
    if max_steps is not None:
        args += ["--max-steps", str(max_steps)]
    if quiet:
        args.append("--quiet")
    for override in overrides or []:
        args += ["--set", override]
    return shlex.join(args)


def interrupted_line(out: Path, command: str, go_on: str, result: Any) -> str:
    """The one line a Ctrl-C ends with: what was saved, and the command that goes on from there.

    ``command`` is the interrupted command and ``go_on`` the same with ``--resume``
    (:func:`train_command`); ``result`` the interrupted run's
    :class:`~cttlstm_cli.training.trainer.TrainResult`."""
    if result.preparing is not None:
        return (f"interrupted while preparing the data in {result.preparing}: nothing saved in {out}; the finished parts "
                f"of the data are kept, and the same command goes on from them: {command}")
    if result.saved is not None:
        return f"interrupted: saved {result.saved} at step {result.steps}; continue with: {go_on}"
    when = "before the first optimizer step" if result.session_steps == 0 else f"after optimizer step {result.steps}"
    if result.kept_step is not None:
        return f"interrupted {when}: nothing new saved; {out / 'last.pt'} (step {result.kept_step}) is kept; continue with: {go_on}"
    if command == go_on:  # --resume, interrupted before the trainer changed anything in the run
        return f"interrupted {when}: nothing saved; {out} is as it was; continue with: {command}"
    return f"interrupted {when}: nothing saved; {out} can be restarted with the same command: {command}"


def next_command(run_dir: Path, has_best: bool) -> str:
    """The command that evaluates a finished run on its validation split, quoted for a POSIX shell: the run
    directory (its best.pt), or its last.pt when no validation has run yet (``--max-steps``) and there is no best.pt."""
    target = run_dir if has_best else run_dir / LAST_CHECKPOINT
    # the validation split: the test split is kept for the final comparison (as the README's tutorial does)
    return f"cttlstm evaluate {shlex.quote(str(target))} --split val"
