"""Everything ``cttlstm train`` does before the first optimizer step, as one library call.

:func:`open_trainer` is shared by the ``train`` command and ``cttlstm suite``: it refuses a run
directory in use before any data is touched, checks that the model family takes the recipe's
frames, prepares Moving-MNIST on first use, opens the datasets and builds the :class:`Trainer`
(which loads ``last.pt`` when resuming). The caller then runs :meth:`Trainer.fit`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from cttlstm_cli.recipe import Recipe

#: ``phase(name, data_path)`` before each slow phase: "preparing" (Moving-MNIST's first use),
#: "opening" (the datasets), "building" (the model and the trainer), "ready" (the trainer exists)
PhaseFn = Callable[[str, Path], None]


def open_trainer(
    recipe: Recipe,
    out: Path,
    device: torch.device,
    *,
    resume: bool = False,
    progress: Callable[[Any], Any] | None = None,
    log: Callable[[str], None] = print,
    status: Callable[[str], None] | None = None,
    phase: PhaseFn | None = None,
    console: Any = None,
) -> Any:
    """A :class:`~cttlstm_cli.training.trainer.Trainer` for ``recipe`` in run directory ``out``,
    ready to :meth:`~cttlstm_cli.training.trainer.Trainer.fit`.

    ``progress``, ``log`` and ``status`` go to the trainer (see its docstring); ``console`` (a rich
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
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:  # under torchrun rank 0 alone locks, in the trainer
        from cttlstm_cli.locking import check_unlocked

        check_unlocked(out)  # refuse a run directory in use before preparing or loading any data
    # A model family that breaks the contract, or frames it cannot take, stop here, before any data
    # is prepared or written.
    create_model(recipe.model, recipe.data.channels).check_data(*recipe.data.frame_size, recipe.data.input_frames)
    data_path = Path(recipe.data.path)
    first_use = recipe.data.dataset == "mmnist" and not (data_path / shards.MANIFEST_NAME).is_file()
    tell("preparing" if first_use else "opening", data_path)  # open_training_data prepares Moving-MNIST on first use
    train_set, val_set = open_training_data(recipe, console=console)
    tell("building", data_path)
    trainer = Trainer(recipe, out, device, train_set, val_set, resume=resume, progress=progress, log=log, status=status)
    tell("ready", data_path)
    return trainer


__all__ = ["PhaseFn", "open_trainer"]
