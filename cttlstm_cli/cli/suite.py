"""``cttlstm suite``: train, evaluate and compare several models under one protocol."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from cttlstm_cli.cli.app import app
from cttlstm_cli.cli.common import DEVICE_OPTION, console, err_console

suite_app = typer.Typer(
    help="Train, evaluate and compare several models under one protocol (the paper's Table 2).",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(suite_app, name="suite")

_PHASES = {"data": "preparing the data", "probe": "timing a step", "train": "training", "evaluate": "evaluating",
           "compare": "comparing", "pictures": "rendering the predict grid", "done": "done"}


class SuiteProgress:
    """The suite's progress: which model, which phase, how far, and the ETA of the whole suite.

    On a terminal one live row (rich) redrawn as events come; elsewhere a line when a phase starts
    and at every tenth of it, so that a log shows where a long suite is."""

    def __init__(self) -> None:
        self.live = None
        self._key: tuple[Any, ...] | None = None
        self._tenth = -1
        self._started = time.monotonic()
        if err_console.is_terminal:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self.live = Progress(TextColumn("{task.description}"), BarColumn(bar_width=20), TextColumn("{task.fields[count]}"),
                                 TimeElapsedColumn(), TextColumn("{task.fields[eta]}"), console=err_console, transient=True)
            self.task = self.live.add_task("", total=None, count="", eta="")
            self.live.start()

    def __call__(self, event: Any) -> None:
        from cttlstm_cli.cli.train import clock_text

        if event.line:
            err_console.print(event.line, markup=False, highlight=False, soft_wrap=True)
        where = f"[{event.index}/{event.count}] {event.model}: " if event.model else ""
        text = f"{where}{_PHASES.get(event.phase, event.phase)}"
        count = f"{event.done:,}/{event.total:,}" if event.total else ""
        eta = f"suite ETA {clock_text(event.eta)}" if event.eta is not None else "suite ETA -:--:--"
        if self.live is not None:
            self.live.update(self.task, description=text, completed=event.done, total=event.total, count=count, eta=eta)
            return
        key = (event.model, event.phase)
        tenth = int(10 * event.done / event.total) if event.total else 0
        if key != self._key or tenth > self._tenth:
            self._key, self._tenth = key, tenth
            err_console.print(f"{text} {count}  {eta}".rstrip(), markup=False, highlight=False, soft_wrap=True)

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()


@suite_app.command(
    "run",
    epilog=(
        "Examples:\n\n"
        "  cttlstm suite run suites/table2-cpu.yaml --out runs/table2-cpu      (every family, about an hour on 2 cores)\n\n"
        "  cttlstm suite run suites/smoke.yaml --out runs/suite-smoke          (two tiny models, a minute)\n\n"
        "  cttlstm suite run suites/table2-paper.yaml --out runs/table2 --device cuda\n\n"
        "  torchrun --nproc-per-node 8 -m cttlstm_cli suite run suites/table2-paper.yaml --out runs/table2 --device cuda\n\n"
        "  cttlstm suite status runs/table2-cpu"
    ),
)
def run(
    suite: Path = typer.Argument(..., metavar="SUITE.yaml", help="The suite file (see docs/suite.md)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the runs, reports and comparison (restartable)."),
    device: str = DEVICE_OPTION,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress."),
) -> None:
    """Train every model of a suite on the same budget, evaluate each on the same clips, and compare them.

    Writes, into --out: a run folder per model, its evaluate report, comparison/ (Table 2 as
    comparison.md/.csv/.json, bubbles.png, per_frame_<metric>.png), predictions.gif (every model
    continuing one clip) and summary.md/.json (each model against the trivial predictors).
    Restartable: the same command again skips what is done and resumes a training exactly where
    it stopped, so a killed suite ends with the numbers of an uninterrupted one. A suite whose
    models differ in data, budget or evaluation is refused before anything trains.
    """
    from cttlstm_cli.devices import open_device
    from cttlstm_cli.distributed import setup_distributed
    from cttlstm_cli.suite import SuiteInterrupted, SuiteRun, load_suite

    spec = load_suite(suite)
    group = setup_distributed(open_device(device))  # under torchrun: DDP trainings, the test clips shared
    quiet = quiet or not group.is_main  # rank 0 alone speaks
    progress = None if quiet else SuiteProgress()
    try:
        runner = SuiteRun(spec, suite, out, group.device, progress)
        if not quiet:
            names = ", ".join(m.name for m in runner.models)
            console.print(f"suite {spec.name}: {len(runner.models)} models ({names}), {spec.budget.steps:,} steps of "
                          f"{spec.budget.batch_size} clips each, into {out}", markup=False, highlight=False, soft_wrap=True)
        runner.run()
    except SuiteInterrupted as stop:
        err_console.print(f"interrupted: {stop}; continue with the same command: cttlstm suite run {suite} --out {out}",
                          markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(130) from None
    except KeyboardInterrupt:
        err_console.print(f"interrupted: what was finished in {out} is kept; continue with the same command", markup=False,
                          highlight=False, soft_wrap=True)
        raise typer.Exit(130) from None
    finally:
        if progress is not None:
            progress.close()
    if not group.is_main:
        return
    console.print((out / "summary.md").read_text(), markup=False, highlight=False, soft_wrap=True)
    console.print(f"wrote {out / 'comparison'}, {out / 'predictions.gif'}, {out / 'summary.md'}", markup=False,
                  highlight=False, soft_wrap=True)


@suite_app.command("status", epilog="Example:\n\n  cttlstm suite status runs/table2-cpu --json")
def status(
    folder: Path = typer.Argument(..., metavar="DIR", help="A suite's --out folder."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Show what is done in a suite's folder: per model its training step and evaluation."""
    from cttlstm_cli.timing import format_duration
    from cttlstm_cli.suite import suite_status

    info = suite_status(folder)
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    table = Table(title=f"suite {info['suite']} in {folder}", title_justify="left")
    for col in ("model", "training", "time", "evaluated"):
        table.add_column(col)
    for m in info["models"]:
        trained = "done" if m["trained"] else f"step {m['step']:,}/{m['steps']:,}"
        table.add_row(m["name"], trained, format_duration(m["train_seconds"]) if m["train_seconds"] else "-",
                      "yes" if m["evaluated"] else "no")
    console.print(table)
    state = "done" if info["done"] else "not finished: the same 'cttlstm suite run' command goes on"
    console.print(f"comparison {'written' if info['compared'] else 'not yet'}; predict grid "
                  f"{'written' if info['pictures'] else 'not yet'}; {state}", markup=False, highlight=False)
