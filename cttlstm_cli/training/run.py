"""``cttlstm train`` as library calls: :func:`run_training` does all that the command does (the
run folder, the device, first-use data, the trainer, the loop), and :func:`open_trainer` everything
before the first optimizer step, for a caller that drives :meth:`Trainer.fit` itself.

The command only parses its options, calls :func:`run_training` and prints; ``cttlstm suite``
opens its runs with :func:`open_trainer`. In a notebook::

    from cttlstm_cli.recipe import load_recipe
    from cttlstm_cli.training.run import run_training

    result = run_training(load_recipe("recipes/tutorial.yaml"), out=Path("runs/tutorial"))
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from cttlstm_cli.distributed import launched_world, restart_count
from cttlstm_cli.errors import CttlstmError
from cttlstm_cli.recipe import Recipe
from cttlstm_cli.training.events import Listener, RunOpened
from cttlstm_cli.training.run_folder import begun_by_this_launch, default_run_dir, newest_run_dir, refuse_new_run_over

#: ``phase(name, data_path)`` before each slow phase: "preparing" (Moving-MNIST's first use),
#: "opening" (the datasets), "building" (the model and the trainer), "ready" (the trainer exists)
PhaseFn = Callable[[str, Path], None]

#: what ``status`` hears as each slow phase of :func:`run_training` begins
PHASE_LINES = {
    "preparing": "preparing Moving-MNIST in {path} (first use; once only)…",
    "opening": "opening the datasets in {path}…",
    "building": "building the model…",
}


def resolve_run_dir(recipe: Recipe, out: Path | None, resume: bool, root: Path = Path("runs")) -> Path:
    """The run folder: ``out`` when given; else, to resume, the newest run of the recipe under
    ``root``, and for a new run ``root/<recipe>-<timestamp>``."""
    if out is not None:
        return out
    if launched_world() > 1:
        # Each rank would name its own timestamped folder, and a group torchrun restarts another one.
        raise CttlstmError("under torchrun, pass --out DIR: every rank, and a worker group torchrun restarts, must name the same run folder")
    if not resume:
        return default_run_dir(recipe, root)
    newest = newest_run_dir(recipe, root)
    if newest is None:
        raise CttlstmError(f"--resume: no run of recipe '{recipe.name}' under {root}/; pass --out DIR")
    return newest


def open_trainer(
    recipe: Recipe,
    out: Path,
    device: torch.device,
    *,
    resume: bool = False,
    events: Listener | None = None,
    log: Callable[[str], None] = print,
    status: Callable[[str], None] | None = None,
    phase: PhaseFn | None = None,
    console: Any = None,
) -> Any:
    """A :class:`~cttlstm_cli.training.trainer.Trainer` for ``recipe`` in run directory ``out``,
    ready to :meth:`~cttlstm_cli.training.trainer.Trainer.fit`.

    ``events``, ``log`` and ``status`` go to the trainer (see its docstring); ``console`` (a rich
    console) shows Moving-MNIST's preparation; ``phase`` hears of each slow phase (:data:`PhaseFn`).
    Raises :class:`~cttlstm_cli.errors.CttlstmError` for a run directory in use, frames the model
    cannot take and everything the trainer refuses, before anything is written.
    """
    from cttlstm_cli.atomic import require_output_folder
    from cttlstm_cli.data import shards
    from cttlstm_cli.models import create_model
    from cttlstm_cli.training.data import open_training_data
    from cttlstm_cli.training.trainer import Trainer

    tell = phase or (lambda _name, _path: None)
    require_output_folder(out)
    if launched_world() <= 1:  # under torchrun rank 0 alone locks, in the trainer
        from cttlstm_cli.locking import check_unlocked

        check_unlocked(out)  # refuse a run directory in use before preparing or loading any data
    if not resume:
        refuse_new_run_over(out)  # before the data is opened (seconds); the trainer checks again, holding the lock
    # A model family that breaks the contract, or frames it cannot take, stop here, before any data
    # is prepared or written.
    create_model(recipe.model, recipe.data.channels).check_data(*recipe.data.frame_size, recipe.data.input_frames)
    data_path = Path(recipe.data.path)
    first_use = recipe.data.dataset == "mmnist" and not (data_path / shards.MANIFEST_NAME).is_file()
    tell("preparing" if first_use else "opening", data_path)  # open_training_data prepares Moving-MNIST on first use
    train_set, val_set = open_training_data(recipe, console=console)
    tell("building", data_path)
    trainer = Trainer(recipe, out, device, train_set, val_set, resume=resume, events=events, log=log, status=status)
    tell("ready", data_path)
    return trainer


def precision_note(precision: str, device: torch.device) -> str:
    """What the run line adds after the device: nothing for fp32, the autocast precision otherwise,
    and what ``auto`` chose."""
    from cttlstm_cli.training.step import resolve_precision

    resolved = resolve_precision(precision, device)
    if precision == "auto":
        return f", precision {resolved} (auto: {'native' if resolved == 'bf16' else 'no native bf16'} on this device)"
    return "" if resolved == "fp32" else f", precision {resolved}"


def run_training(
    recipe: Recipe,
    out: Path | None = None,
    *,
    resume: bool = False,
    device: str | torch.device = "auto",
    threads: int | None = None,
    max_steps: int | None = None,
    events: Listener | None = None,
    log: Callable[[str], None] = print,
    status: Callable[[str], None] | None = None,
    console: Any = None,
) -> Any:
    """Train ``recipe`` into ``out`` (default: :func:`resolve_run_dir`) and return the
    :class:`~cttlstm_cli.training.trainer.TrainResult`.

    ``device``: a torch device or a ``--device`` name ("auto", "cpu", "cuda:1", ...); ``threads``: torch's
    CPU threads (default: :func:`~cttlstm_cli.devices.use_cpu_threads`'s choice by load). ``events``
    hears :class:`~cttlstm_cli.training.events.RunOpened` once the run is open, then the trainer's
    events; ``status`` a line as each slow phase begins (:data:`PHASE_LINES`) and the trainer's
    status lines; ``log`` its notes and warnings. A Ctrl-C anywhere returns a result with
    ``interrupted`` set (what was saved, or what is kept: see its fields) instead of raising.
    Everything refused is a :class:`~cttlstm_cli.errors.CttlstmError`, raised before anything is written.
    """
    from cttlstm_cli.devices import cpu_threads, open_device, use_cpu_threads
    from cttlstm_cli.training.trainer import TrainResult

    run_dir = resolve_run_dir(recipe, out, resume)
    if not resume and begun_by_this_launch(run_dir):
        # torchrun --max-restarts brought the worker group back after a failure: continue where it saved.
        resume = True
        if launched_world() <= 1 or os.environ.get("RANK") == "0":
            log(f"note: torchrun restarted the workers (restart {restart_count()}); resuming {run_dir} from its last checkpoint")
    trainer: Any = None
    preparing: Path | None = None

    def phase(name: str, data_path: Path) -> None:
        nonlocal preparing
        preparing = data_path if name == "preparing" else None
        if status is not None and name in PHASE_LINES:
            status(PHASE_LINES[name].format(path=data_path))

    try:
        dev = device if isinstance(device, torch.device) else open_device(device, threads)
        if dev.type == "cpu" and isinstance(device, torch.device):
            use_cpu_threads(threads)
        trainer = open_trainer(recipe, run_dir, dev, resume=resume, events=events, log=log, status=status, phase=phase, console=console)
        if events is not None and trainer.dist.is_main:
            shown = f"cpu ({cpu_threads().describe()})" if trainer.device.type == "cpu" else str(trainer.device)
            shown += precision_note(recipe.train.precision, trainer.device)
            events(RunOpened(run_dir, trainer.resumed_from, trainer.step, len(trainer.train_set), len(trainer.val_set), shown))
        return trainer.fit(max_steps=max_steps)
    except KeyboardInterrupt:
        if trainer is None:
            return TrainResult(run_dir=run_dir, epochs=0, steps=0, best_val_loss=math.inf, best_epoch=-1, interrupted=True, preparing=preparing)
        trainer.close()
        return trainer.result(interrupted=True)


__all__ = ["PHASE_LINES", "PhaseFn", "open_trainer", "precision_note", "resolve_run_dir", "run_training"]
