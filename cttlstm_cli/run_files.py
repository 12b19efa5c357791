"""The names of the files in a training run's folder, for everything that writes or finds them
(the trainer's :class:`~cttlstm_cli.training.run_folder.RunFolder`, ``evaluate``, ``predict``, the suite)."""

from __future__ import annotations

#: the checkpoint of the best validation loss: what a run folder stands for in evaluate, predict and compare
BEST_CHECKPOINT = "best.pt"
#: the newest checkpoint, which ``--resume`` continues from
LAST_CHECKPOINT = "last.pt"
#: the checkpoint ``last.pt`` replaced, kept until the next one is safely written
PREVIOUS_CHECKPOINT = "previous.pt"
#: the checkpoints of a run folder, in the order ``--resume`` tries them
CHECKPOINT_NAMES = (LAST_CHECKPOINT, PREVIOUS_CHECKPOINT, BEST_CHECKPOINT)
#: one JSON line per logged training step and per validation
METRICS_LOG = "metrics.jsonl"
#: the recipe a run was started with
RECIPE_FILE = "recipe.yaml"
