"""Checkpoint I/O for every model family: this project's checkpoints and foreign ones.

Every file is read with ``torch.load(weights_only=True)``, so a checkpoint can
never run code. Our checkpoints are dicts with ``format``, ``model`` (state dict),
``recipe`` (plain data, whose ``model.arch`` names the family) and ``image_channels``;
training adds optimizer and schedule state. Each read checks every field against the schema
(:mod:`cttlstm_cli.checkpoint_schema`, :func:`validate_checkpoint`) before anything uses it.
Other formats (the authors' released Conv-TT-LSTM files, design §7) are read by the importers
the families register (:func:`~cttlstm_cli.models.registry.register_importer`).

Writes go to a temporary name and are renamed when complete; a full disk (or a file-size
limit) is one :class:`~cttlstm_cli.atomic.NoSpaceError` line, with the temporary file removed and every file
that was there before left as it was.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from cttlstm_cli.atomic import atomic_path, no_space_as_error, write_bytes_durably
from cttlstm_cli.errors import CttlstmError
from cttlstm_cli.checkpoint_schema import CHECKPOINT_FORMAT, Checkpoint, is_own_format, shown, validate_payload, weight_problem
from cttlstm_cli.checkpoint_schema import stored_recipe  # noqa: F401 - where the trainer and the tests import it
from cttlstm_cli.models.interface import VideoModel, unwrap
from cttlstm_cli.models.registry import create_model, importers
from cttlstm_cli.recipe import Recipe
from cttlstm_cli.run_files import BEST_CHECKPOINT

class CheckpointRefusedError(CttlstmError):
    """A checkpoint references code (a pickled class or function); it is refused, never run."""


def atomic_save(obj: Any, path: str | Path, keep_previous_as: str | Path | None = None) -> None:
    """``torch.save`` to a temporary name beside ``path``, then rename: readers never see half a file.

    With ``keep_previous_as``, an existing ``path`` is renamed to it once the new file is
    complete, so a failed write (a full disk: :class:`~cttlstm_cli.atomic.NoSpaceError`) leaves both files as
    they were and removes the temporary one.
    """
    path = Path(path)
    # Serialized in memory first: torch's zip writer reports a failed write as an untyped
    # RuntimeError ("unexpected pos ...") that cannot be told from a bug, and ordinary file
    # writes give the errno. The copy costs the checkpoint's size in host memory, briefly.
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with no_space_as_error(path), atomic_path(path) as tmp:
        write_bytes_durably(tmp, buffer.getbuffer())
        if keep_previous_as is not None and path.exists():
            _keep_copy(path, Path(keep_previous_as))


def _keep_copy(path: Path, previous: Path) -> None:
    """Make ``previous`` hold what ``path`` holds, while ``path`` stays in place: a hard link (or, on a
    file system without them, a copy) under a temporary name, renamed onto ``previous``. Renaming
    ``path`` itself would leave a moment without it, and a kill in that moment a run without ``last.pt``."""
    import shutil

    with atomic_path(previous) as tmp:
        try:
            os.link(path, tmp)
        except OSError:
            shutil.copyfile(path, tmp)


def save_checkpoint(path: str | Path, model: torch.nn.Module, recipe: Recipe, keep_previous_as: str | Path | None = None, **extra: Any) -> None:
    """Write a checkpoint that :func:`load_model` reads back into the same network; ``extra``
    entries join the dict (training state). ``keep_previous_as``: see :func:`atomic_save`."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "model": {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()},
        "recipe": recipe.to_dict(),
        "image_channels": unwrap(model).image_channels,
        **extra,
    }
    atomic_save(payload, path, keep_previous_as)


#: what torch's weights-only unpickler says when a file names a class or function (torch 2.4 .. 2.13)
_CODE_REFERENCE = (
    re.compile(r"GLOBAL (\S+)"),  # "Unsupported global: GLOBAL x.y ..." / "unsupported GLOBAL x.y whose module x is blocked"
    re.compile(r"unrecognized function (.+?)(?: which belongs|$)", re.MULTILINE),
    re.compile(r"(?:create new object for|Can only build) .*? but got (.+?)$", re.MULTILINE),
)


def code_reference(message: str) -> str | None:
    """The class or function a refused pickle names, or None when the failure is something else."""
    for pattern in _CODE_REFERENCE:
        found = pattern.search(message)
        if found:
            return found.group(1).rstrip(".")
    return None


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint file safely (tensors and plain data only) onto the CPU."""
    path = Path(path)
    if not path.is_file():
        raise CttlstmError(f"checkpoint not found: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        code = code_reference(str(err))
        if code is not None:
            raise CheckpointRefusedError(
                f"{path}: refused to load: it references code ({code}), and checkpoints may hold only tensors and plain data"
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
        best = path / BEST_CHECKPOINT
        if not best.is_file():
            raise CttlstmError(f"{path} is a directory without best.pt (not a run directory?)")
        return best
    if not path.exists():
        raise CttlstmError(f"checkpoint not found: {path}")
    return path


def validate_checkpoint(data: Mapping[str, Any], path: str | Path, training: bool = False) -> Checkpoint:
    """``data`` (read from ``path`` by :func:`read_checkpoint`) checked field by field against the
    schema, as a :class:`Checkpoint` (with ``training``, a :class:`TrainingCheckpoint`, which ``--resume``
    needs); the first problem is one line naming the file and the field, e.g.
    ``runs/x/last.pt: step: expected a non-negative integer, found 'abc'``."""
    try:
        return validate_payload(data, training)
    except ValueError as err:
        raise CttlstmError(f"{path}: {err}") from None


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
    if is_own_format(data):
        payload = validate_checkpoint(data, path)
        recipe = payload.recipe
        cfg, channels, state = recipe.model, payload.image_channels, _strip_prefix(payload.model)
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
            raise CttlstmError(f"{path}: not a cttlstm or Conv-TT-LSTM checkpoint (keys: {', '.join(map(str, list(data)[:5]))})")
        # The importers map names and shapes; what the tensors hold is checked as for our own files.
        for name, tensor in state.items():
            if (problem := weight_problem(name, tensor)) is not None:
                raise CttlstmError(f"{path}: {name}: {problem}")
    if any(t.is_floating_point() and not bool(t.isfinite().all()) for t in state.values()):
        raise CttlstmError(f"{path}: holds non-finite weights (NaN or infinity), as a diverged run leaves; use an earlier checkpoint")
    try:
        model = create_model(cfg, channels)
    except (RuntimeError, ValueError, OverflowError, MemoryError) as err:  # a valid recipe torch cannot build (absurd sizes)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        what = f"a {model_description(cfg.model_dump())} model for {channels}-channel frames"
        raise CttlstmError(f"{path}: its recipe describes {what} that cannot be built ({first})") from None
    problem = state_dict_mismatch(model, state)
    if problem is None:
        try:
            model.load_state_dict(state)
        except (RuntimeError, ValueError, TypeError) as err:  # trouble the key/shape check cannot see
            problem = str(err).strip().splitlines()[-1].strip() or type(err).__name__
    if problem is not None:
        described = f"the {model_description(cfg.model_dump())} model its recipe describes" if recipe is not None else f"a {cfg.arch} model"
        raise CttlstmError(f"{path}: the weights do not fit {described}: {problem}")
    return model.to(device).eval(), recipe


def model_description(model: Mapping[str, Any]) -> str:
    """A recipe's ``model`` section in a few words: the family, and the cell for the conv-RNN family."""
    arch = str(model.get("arch") or "convrnn")
    cell = model.get("cell")
    return f"{arch} ({cell})" if cell else arch


def state_dict_mismatch(model: torch.nn.Module, state: Mapping[str, Any]) -> str | None:
    """How ``state`` fails to fit ``model`` in one line (counts and a first example), or None if it fits.

    ``load_state_dict`` would say it in a line per tensor, which for a checkpoint of another
    width or family is dozens of lines.
    """
    own = unwrap(model).state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    reshaped = [k for k in own if k in state and tuple(getattr(state[k], "shape", ())) != tuple(own[k].shape)]
    parts = []
    if reshaped:
        k = reshaped[0]
        parts.append(f"{len(reshaped)} tensor(s) of another shape (e.g. {k}: {list(state[k].shape)} in the file, {list(own[k].shape)} in the model)")
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    return "; ".join(parts) or None


def _strip_prefix(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {k.removeprefix("module."): v for k, v in state.items()}


def optimizer_state_mismatch(optimizer: torch.optim.Optimizer, fresh: Sequence[Mapping[str, Any]], required: Sequence[str] = ()) -> str | None:
    """How the state just loaded into ``optimizer`` fails to fit it, in one line, or None.

    ``load_state_dict`` checks only the number of groups and of parameters in each; a hyper-parameter
    of another kind (a flag where ``betas`` belongs), one missing, or a moment of another shape would
    fail at the first optimizer step, in the middle of a run. ``fresh``: the param groups the optimizer
    had before the load (what this torch version expects of every group; keys a newer torch added are
    filled in by the load itself); ``required``: keys the groups must also hold (those a learning-rate
    schedule keeps there to resume).
    """
    for i, (group, expected) in enumerate(zip(optimizer.param_groups, fresh)):
        kept = {key: value for key, value in expected.items() if key != "params"}
        for key in [*kept, *required]:
            if key not in group:
                return f"param group {i} lacks {key!r}"
        for key, value in kept.items():
            if not _same_kind(group[key], value):
                return f"param group {i} holds {key!r} = {shown(group[key])} where the optimizer keeps {shown(value)}"
        for key in required:
            if not _same_kind(group[key], 0.0):
                return f"param group {i} holds {key!r} = {shown(group[key])} where a learning-rate schedule keeps a number"
    keys: set[str] | None = None
    for param, state in optimizer.state.items():
        if keys is None:
            keys = set(state)
        if set(state) != keys:  # Adam's moments exist for all of them or for none
            return f"the state of one parameter holds {sorted(state)}, of another {sorted(keys)}"
        for key, value in state.items():
            scalar = key == "step"  # the only scalar of torch's optimizers; the rest are per-weight moments
            shape = [] if scalar else list(param.shape)
            if torch.is_tensor(value) and list(value.shape) != shape and not (scalar and value.numel() == 1):
                return f"a state {key!r} of shape {list(value.shape)} for a parameter of shape {list(param.shape)}"
            if not torch.is_tensor(value) and not scalar:
                return f"a state {key!r} of {shown(value)} where a tensor belongs"
    return None


def _same_kind(value: Any, expected: Any) -> bool:
    """Whether a loaded hyper-parameter can stand where the optimizer keeps ``expected``: a number for a
    number, a flag for a flag (or for None, an option left to torch), numbers for numbers."""
    if isinstance(expected, bool) or expected is None:
        return value is None or isinstance(value, bool)
    if isinstance(expected, (int, float)) or torch.is_tensor(expected):
        return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)) or torch.is_tensor(value)
    if isinstance(expected, (tuple, list)):
        return isinstance(value, (tuple, list)) and len(value) == len(expected) and all(_same_kind(v, e) for v, e in zip(value, expected))
    return type(value) is type(expected)
