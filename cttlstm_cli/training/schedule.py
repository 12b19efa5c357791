"""The learning-rate and scheduled-sampling schedules.

:class:`PlateauSchedule`: the paper's plateau-driven schedule for scheduled sampling and the learning
rate (design §3). :func:`one_cycle`: the one-cycle learning rate SimVP and TAU are published with
(``train.lr_schedule: onecycle``), which replaces the plateau schedule's learning rate only.

Phase 0 (teacher forcing): the ground-truth ratio stays at ``start``. Once validation
loss has not improved for ``scheduled_sampling.patience`` epochs, phase 1 begins: the
ratio drops by ``decay`` every epoch until it reaches 0. After a further plateau of
``lr_decay.patience`` epochs (counted from the start of phase 1 or the last
improvement, whichever is later), phase 2 begins: the learning rate is multiplied by
``lr_decay.factor`` every ``lr_decay.every`` epochs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch.optim.lr_scheduler import OneCycleLR

from cttlstm_cli.errors import CttlstmError
from cttlstm_cli.recipe import TrainConfig


@dataclass
class PlateauSchedule:
    """Schedule state; everything needed to resume is in :meth:`state_dict`."""

    ratio: float
    lr_scale: float = 1.0
    phase: int = 0
    best_loss: float = math.inf
    best_epoch: int = -1
    stale: int = 0  # epochs without improvement, reset on improvement and on each phase change
    epochs_in_phase: int = 0

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> PlateauSchedule:
        return cls(ratio=cfg.scheduled_sampling.start)

    def end_epoch(self, epoch: int, val_loss: float, cfg: TrainConfig) -> bool:
        """Record an epoch's validation loss and advance the schedule; True if it is a new best."""
        improved = val_loss < self.best_loss
        if improved:
            self.best_loss, self.best_epoch, self.stale = val_loss, epoch, 0
        else:
            self.stale += 1
        if self.phase == 0 and self.stale >= cfg.scheduled_sampling.patience:
            self._enter(1)
        elif self.phase == 1 and self.stale >= cfg.lr_decay.patience:
            self._enter(2)
        if self.phase >= 1:
            self.ratio = max(0.0, self.ratio - cfg.scheduled_sampling.decay)
        self.epochs_in_phase += 1
        if self.phase == 2 and self.epochs_in_phase % cfg.lr_decay.every == 0:
            self.lr_scale *= cfg.lr_decay.factor
        return improved

    def _enter(self, phase: int) -> None:
        self.phase, self.stale, self.epochs_in_phase = phase, 0, 0

    def state_dict(self) -> dict[str, float | int]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, float | int]) -> None:
        for key, value in state.items():
            setattr(self, key, type(getattr(self, key))(value))


def one_cycle(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int, step: int) -> OneCycleLR | None:
    """torch's ``OneCycleLR`` over the run's ``total_steps`` optimizer steps, positioned so that the
    optimizer holds the learning rate (and Adam's beta1, which torch cycles inversely) of optimizer
    step ``step`` (0-based); the caller steps it after every optimizer step. None under the plateau schedule.

    Its whole state is ``step``: ``last_epoch = step - 1`` is how torch resumes a schedule, and on a
    resumed run the optimizer's loaded param groups already hold the cycle's ``initial_lr``,
    ``max_lr`` and ``min_lr``, so a resumed run sets exactly the values an uninterrupted one would.
    """
    if cfg.lr_schedule != "onecycle":
        return None
    warmup = cfg.one_cycle.warmup
    if warmup * total_steps == 1.0:  # torch's warm-up then spans zero steps and divides by zero
        raise CttlstmError(
            f"train.one_cycle.warmup: {warmup:g} of {total_steps} steps is a warm-up of exactly one step, "
            "which torch's OneCycleLR cannot take; choose another warm-up fraction"
        )
    return OneCycleLR(
        optimizer,
        max_lr=cfg.lr,
        total_steps=total_steps,
        pct_start=warmup,
        div_factor=cfg.one_cycle.div_factor,
        final_div_factor=cfg.one_cycle.final_div_factor,
        # A finished run (or one past its total: train.epochs lowered on --resume) takes no step and
        # keeps the last step's lr, as the loop leaves it; torch would refuse a position past the end.
        last_epoch=min(step, total_steps - 1) - 1,
    )
