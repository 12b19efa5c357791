"""Options and helpers shared by several commands."""

from __future__ import annotations

from pathlib import Path
from types import TracebackType

import typer
from rich.console import Console

from cttlstm_cli.errors import CttlstmError

console = Console()
err_console = Console(stderr=True)


SET_OPTION = typer.Option(
    None, "--set", metavar="KEY=VALUE", help="Override a recipe value, e.g. --set train.lr=1e-4 (repeatable)."
)
DEVICE_OPTION = typer.Option("auto", "--device", "-d", help="auto, cpu, cuda or cuda:N.")
THREADS_OPTION = typer.Option(
    None, "--threads", min=1, show_default=False,
    help="CPU threads (default: OMP_NUM_THREADS when set, else the cores that other work leaves free).",
)


def resolve_recipe_path(text: str) -> Path:
    """A recipe path, or the bare name of a bundled recipe (``mmnist`` -> recipes/mmnist.yaml)."""
    from cttlstm_cli.recipe import bundled_recipe

    path = Path(text)
    if path.is_file():
        return path
    bundled = bundled_recipe(text)
    if bundled is not None:
        return bundled
    raise CttlstmError(f"recipe not found: {text}")


class Progress:
    """What a long job is doing, on stderr, as a ``progress(phase, done, total)`` callback.

    On a terminal: a transient rich line (spinner, phase, a bar when ``total`` is known, elapsed
    and remaining time) that disappears when the job ends. Elsewhere (a log file, a pipe): a
    plain line when a phase starts and at every tenth of a counted phase, so that a long job
    is never silent while its stdout stays exactly what scripts read.
    """

    def __init__(self, target: Console | None = None, prefix: str = "") -> None:
        self.console = target or err_console
        self.prefix = prefix
        self._live = None
        self._task = None
        self._phase: str | None = None
        self._shown = 0  # tenths of the current phase already printed (off a terminal)

    def __enter__(self) -> Progress:
        if self.console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, SpinnerColumn, TextColumn
            from rich.progress import TimeElapsedColumn, TimeRemainingColumn

            self._live = Bar(
                SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), TimeRemainingColumn(), console=self.console, transient=True,
            )
            self._live.start()
            self._task = self._live.add_task("", total=None)
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def __call__(self, phase: str, done: int = 0, total: int | None = None) -> None:
        text = f"{self.prefix}{phase}"
        if self._live is not None:
            self._live.update(self._task, description=text, completed=done, total=total)
            if text != self._phase:  # draw every phase at once, however short (the bar itself redraws 10 times a second)
                self._phase = text
                self._live.refresh()
            return
        if text != self._phase:
            self._phase, self._shown = text, 0
            self._say(text + (f": {done}/{total}" if total and done else ""))
            return
        if total:
            tenth = done * 10 // total
            if tenth > self._shown:
                self._shown = tenth
                self._say(f"{text}: {done}/{total}")

    def note(self, phase: str) -> None:
        """Show a short phase on a terminal only: off a terminal its line would just clutter the log
        (and a refusal that follows it would no longer be the only line on stderr)."""
        if self._live is not None:
            self(phase)

    def _say(self, line: str) -> None:
        self.console.print(line, markup=False, highlight=False, soft_wrap=True)
