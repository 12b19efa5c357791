"""What a training run tells its display while it runs: a few frozen events, each carrying a
:class:`RunState` snapshot, so that a progress bar, a suite's status line or a notebook's own
callback reads what it shows from the event and never from the trainer's fields.

A listener is any ``Callable[[TrainingEvent], None]``; the trainer calls it on rank 0 only, in this
order: :class:`RunOpened` (from :func:`~cttlstm_cli.training.run.run_training`), :class:`FitStarted`, then per optimizer step :class:`StepFinished`, per epoch end
:class:`ValidationBatch` (before the first batch and after each) and :class:`EpochFinished`, and
:class:`FitEnded` last, also when the run stops on an error or a Ctrl-C. Torch-free, like the
display that imports it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class RunState:
    """Where a run stands after an event, and how fast it goes."""

    #: epochs finished, and the recipe's train.epochs
    epoch: int
    epochs: int
    #: optimizer steps done in the current epoch, and in a whole one (on this process)
    position: int
    steps_per_epoch: int
    #: optimizer steps done by the run, resumed ones included
    step: int
    #: the latest training loss known to the host (None before the first)
    loss: float | None
    #: the learning rate and the teacher-forcing ratio of the next optimizer step
    lr: float
    teacher_forcing: float
    #: training clips per second over all processes, from the measured step time (None until measured)
    clips_per_s: float | None
    #: seconds left of this epoch's training steps and of the whole run (None until measured)
    epoch_seconds_left: float | None
    run_seconds_left: float | None

    @property
    def total_steps(self) -> int:
        """Optimizer steps of the whole run."""
        return self.steps_per_epoch * self.epochs


@dataclass(frozen=True)
class RunOpened:
    """:func:`~cttlstm_cli.training.run.run_training` opened the run: its data is open, its model
    built and, on ``--resume``, its checkpoint loaded (``resumed_from``, at optimizer step ``step``)."""

    run_dir: Path
    resumed_from: Path | None
    step: int
    train_clips: int
    val_clips: int
    device: str


@dataclass(frozen=True)
class FitStarted:
    """The loop is about to run its first step (of this session: a resumed run starts mid-way)."""

    state: RunState


@dataclass(frozen=True)
class StepFinished:
    """An optimizer step finished; ``record`` is the metrics line written at it, if one was."""

    state: RunState
    record: dict[str, Any] | None


@dataclass(frozen=True)
class ValidationBatch:
    """The end-of-epoch validation of epoch ``epoch`` (0-based) has done ``done`` of ``total`` batches."""

    epoch: int
    done: int
    total: int


@dataclass(frozen=True)
class EpochFinished:
    """An epoch and its validation finished and were saved; ``record`` is its ``kind: val`` metrics line."""

    state: RunState
    record: dict[str, Any]


@dataclass(frozen=True)
class FitEnded:
    """The loop ended: finished, interrupted or failed."""

    state: RunState


TrainingEvent = RunOpened | FitStarted | StepFinished | ValidationBatch | EpochFinished | FitEnded
Listener = Callable[[TrainingEvent], None]

__all__ = ["EpochFinished", "FitEnded", "FitStarted", "Listener", "RunOpened", "RunState", "StepFinished", "TrainingEvent", "ValidationBatch"]
