"""The datasets a training run reads, from its recipe."""

from __future__ import annotations

from typing import Any

from torch.utils.data import Dataset, Subset

from cttlstm_cli.data.dataset import EarlyActivityDataset, ensure_mmnist, open_dataset
from cttlstm_cli.recipe import Recipe


def open_training_data(recipe: Recipe, console: Any = None) -> tuple[Dataset, Dataset]:
    """``(train, val)`` for ``recipe``: Moving-MNIST is prepared on first use.

    Training draws ``train.epoch_clips`` random clips per epoch; validation reads the
    ``val`` split's non-overlapping clips (the first ``train.val_clips`` of them when set).
    Classifier recipes read one labelled clip per video from its observed beginning.
    """
    data, train = recipe.data, recipe.train
    if data.dataset == "mmnist":
        ensure_mmnist(data, progress=console is not None)
    if recipe.model.num_classes is not None:
        train_set: Dataset = EarlyActivityDataset.from_recipe(data, "train", clips_per_epoch=train.epoch_clips, seed=train.seed)
        val_set: Dataset = EarlyActivityDataset.from_recipe(data, "val")
    else:
        train_set = open_dataset(data, "train", clips_per_epoch=train.epoch_clips, seed=train.seed)
        val_set = open_dataset(data, "val")
    if train.val_clips is not None and train.val_clips < len(val_set):  # type: ignore[arg-type]
        val_set = Subset(val_set, range(train.val_clips))
    return train_set, val_set
