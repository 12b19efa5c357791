"""Checkpoint I/O for every model family: this project's checkpoints and foreign ones.

Every file is read with ``torch.load(weights_only=True)``, so a checkpoint can
never run code. Our checkpoints are dicts with ``format``, ``model`` (state dict),
``recipe`` (plain data, whose ``model.arch`` names the family) and ``image_channels``;
training adds optimizer and schedule state. Other formats (the authors' released
Conv-TT-LSTM files, design §7) are read by the importers the families register
(:func:`~cttlstm_cli.models.registry.register_importer`).
"""

from __future__ import annotations

import pickle
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from cttlstm_cli.atomic import atomic_path
from cttlstm_cli.errors import CttlstmError, RecipeNotice
from cttlstm_cli.models.interface import VideoModel, unwrap
from cttlstm_cli.models.registry import create_model, importers
from cttlstm_cli.recipe import Recipe, recipe_from_dict

CHECKPOINT_FORMAT = "cttlstm-checkpoint-v1"


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary name beside ``path``, then rename: readers never see half a file."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def save_checkpoint(path: str | Path, model: torch.nn.Module, recipe: Recipe, **extra: Any) -> None:
    """Write a checkpoint that :func:`load_model` reads back into the same network."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "model": {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()},
        "recipe": recipe.to_dict(),
        "image_channels": unwrap(model).image_channels,
        **extra,
    }
    atomic_save(payload, path)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint file safely (tensors and plain data only) onto the CPU."""
    path = Path(path)
    if not path.is_file():
        raise CttlstmError(f"checkpoint not found: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if found:
            raise CttlstmError(
                f"{path}: refused to load: it references code ({found.group(1)}), and checkpoints may hold only tensors and plain data"
            ) from None
        raise CttlstmError(f"{path}: not a readable PyTorch checkpoint (corrupt or not a checkpoint)") from None
    except Exception as err:  # noqa: BLE001 - a corrupt file can fail anywhere inside the unpickler
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CttlstmError(f"{path}: not a readable PyTorch checkpoint ({first})") from None
    if not isinstance(data, dict):
        raise CttlstmError(f"{path}: expected a checkpoint dict, found {type(data).__name__}")
    return data


def resolve_checkpoint_path(path: str | Path) -> Path:
    """A checkpoint file, or a run directory's ``best.pt``; a missing one is a CttlstmError."""
    path = Path(path)
    if path.is_dir():
        best = path / "best.pt"
        if not best.is_file():
            raise CttlstmError(f"{path} is a directory without best.pt (not a run directory?)")
        return best
    if not path.exists():
        raise CttlstmError(f"checkpoint not found: {path}")
    return path


def stored_recipe(raw: Any, source: str) -> Recipe:
    """The recipe a checkpoint or run directory stored, read quietly: renamed keys of older
    versions are expected there, and the user cannot edit them away."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RecipeNotice)
        return recipe_from_dict(raw, source)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> VideoModel:
    """Load a checkpoint (this project's, or a foreign format a family imports) as an eval-mode model.

    ``path`` may also be a run directory, in which case its ``best.pt`` is used.
    """
    model, _ = load_model_and_recipe(resolve_checkpoint_path(path), device)
    return model


def load_model_and_recipe(path: str | Path, device: str | torch.device = "cpu") -> tuple[VideoModel, Recipe | None]:
    """Like :func:`load_model`, also returning the stored recipe (``None`` for foreign files)."""
    data = read_checkpoint(path)
    recipe: Recipe | None = None
    if data.get("format") == CHECKPOINT_FORMAT:
        recipe = stored_recipe(data["recipe"], f"{path} (stored recipe)")
        cfg, channels, state = recipe.model, int(data["image_channels"]), _strip_prefix(data["model"])
    else:
        for importer in importers():
            try:
                found = importer(data)
            except CttlstmError as err:
                raise CttlstmError(f"{path}: {err}") from None
            if found is not None:
                cfg, channels, state = found
                break
        else:
            raise CttlstmError(f"{path}: not a cttlstm or Conv-TT-LSTM checkpoint (keys: {', '.join(list(data)[:5])})")
    if any(torch.is_tensor(t) and t.is_floating_point() and not bool(t.isfinite().all()) for t in state.values()):
        raise CttlstmError(f"{path}: holds non-finite weights (NaN or infinity), as a diverged run leaves; use an earlier checkpoint")
    model = create_model(cfg, channels)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        lines = str(err).splitlines()
        raise CttlstmError(f"{path}: weights do not fit the model ({lines[1].strip() if len(lines) > 1 else err})") from None
    return model.to(device).eval(), recipe


def _strip_prefix(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {k.removeprefix("module."): v for k, v in state.items()}
