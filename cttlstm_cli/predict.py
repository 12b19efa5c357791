"""Predict the future of one clip: the library behind ``cttlstm predict``.

A clip (any format :func:`cttlstm_cli.data.video.read_video` reads) is converted to the
model's frame size and channels. Which frames are the context:

* ``start`` given: frames ``[start, start + context)``; the ground truth is the ``steps``
  frames that follow, when the clip has them all;
* otherwise, when the clip holds at least ``context + steps`` frames: the first ``context``
  frames, with the next ``steps`` frames as ground truth;
* otherwise (too short for ground truth): the last ``context`` frames, predictions only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cttlstm_cli.errors import CttlstmError
from cttlstm_cli.models import VideoModel
from cttlstm_cli.recipe import Recipe

#: frame size assumed for checkpoints without a recipe (the authors' Moving-MNIST models)
DEFAULT_AUTHORS_SIZE = (64, 64)


@dataclass
class Prediction:
    """One clip's context, the model's predictions and (when available) the ground truth."""

    context: np.ndarray  # uint8 [I, H, W, C]
    predictions: np.ndarray  # float32 [N, C, H, W], raw model output (not clamped)
    truth: np.ndarray | None  # uint8 [N, H, W, C], or None
    start: int  # clip index of the first context frame
    clip_frames: int  # frames in the (converted) clip

    @property
    def steps(self) -> int:
        return int(self.predictions.shape[0])


def newest_checkpoint(root: str | Path = "runs") -> Path:
    """The newest ``runs/*/best.pt`` (by modification time)."""
    root = Path(root)
    found = [p for p in root.glob("*/best.pt") if p.is_file()]
    if not found:
        raise CttlstmError(f"no checkpoint given and no {root}/*/best.pt found; pass --checkpoint FILE_OR_RUN_DIR")
    return max(found, key=lambda p: p.stat().st_mtime)


def frame_format(model: VideoModel, recipe: Recipe | None, size: tuple[int, int] | None = None) -> tuple[tuple[int, int], int]:
    """``((H, W), channels)`` the model expects: the stored recipe's, or ``size`` (default 64×64) for the authors' files."""
    channels = int(model.image_channels)
    if size is not None:
        return (int(size[0]), int(size[1])), channels
    if recipe is not None:
        return tuple(int(x) for x in recipe.data.frame_size), channels  # type: ignore[return-value]
    return DEFAULT_AUTHORS_SIZE, channels


def choose_window(frames: int, context: int, steps: int, start: int | None = None) -> tuple[int, bool]:
    """``(start, has_truth)`` for a clip of ``frames`` frames (see the module doc)."""
    if context < 1 or steps < 1:
        raise CttlstmError(f"--context and --steps must be at least 1 (got {context} and {steps})")
    if start is not None:
        if start < 0:
            raise CttlstmError(f"--start must be >= 0, got {start}")
        if start + context > frames:
            raise CttlstmError(f"the clip has {frames} frames; --start {start} leaves fewer than the {context} context frames")
        return start, start + context + steps <= frames
    if frames < context:
        raise CttlstmError(f"the clip has {frames} frame(s), fewer than the {context} context frames (--context)")
    if frames >= context + steps:
        return 0, True
    return frames - context, False


@torch.no_grad()
def predict_frames(
    model: VideoModel,
    frames: np.ndarray,
    context: int,
    steps: int,
    start: int | None = None,
    device: torch.device | str = "cpu",
) -> Prediction:
    """Predict ``steps`` frames after a context taken from uint8 ``frames [T, H, W, C]``."""
    if not model.predicts_frames:
        raise CttlstmError(f"{model.name} classifies activities and predicts no frames; predict needs a frame-prediction model")
    start, has_truth = choose_window(int(frames.shape[0]), context, steps, start)
    ctx = frames[start : start + context]
    x = torch.from_numpy(np.array(ctx, copy=True)).permute(0, 3, 1, 2).float().div_(255.0)
    device = torch.device(device)
    pred = model.to(device).eval()(x[None].to(device), future_frames=steps)[0]
    truth = frames[start + context : start + context + steps] if has_truth else None
    return Prediction(ctx, pred.float().cpu().numpy(), truth, start, int(frames.shape[0]))


def predict_clip(
    clip: str | Path,
    checkpoint: str | Path | None = None,
    steps: int = 10,
    context: int | None = None,
    start: int | None = None,
    size: tuple[int, int] | None = None,
    device: torch.device | str = "cpu",
) -> Prediction:
    """Read ``clip``, load ``checkpoint`` (file or run directory; default :func:`newest_checkpoint`), predict."""
    from cttlstm_cli.data.video import VideoError, read_video
    from cttlstm_cli.models.checkpoint import load_model_and_recipe, resolve_checkpoint_path

    if steps < 1:
        raise CttlstmError(f"--steps must be at least 1, got {steps}")
    path = resolve_checkpoint_path(checkpoint) if checkpoint is not None else newest_checkpoint()
    clip = Path(clip)
    if not clip.exists():
        raise CttlstmError(f"clip not found: {clip}")
    model, recipe = load_model_and_recipe(path, device)
    (h, w), channels = frame_format(model, recipe, size)
    context = int(context or (recipe.data.input_frames if recipe is not None else 10))
    model.check_data(h, w, context)
    try:
        frames = read_video(clip, size=(h, w), channels=channels)
    except VideoError as err:
        raise CttlstmError(f"{clip}: {err}") from None
    return predict_frames(model, frames, context, steps, start, device)


def render(prediction: Prediction, scale: int | None = None, error_panel: bool = True) -> np.ndarray:
    """The animation frames: context then predictions, beside ground truth (and |error|) when there is one."""
    from cttlstm_cli.rendering import compose, to_uint8_rgb

    ctx = to_uint8_rgb(prediction.context)
    pred = to_uint8_rgb(prediction.predictions, channels_first=True)
    n_ctx, n_pred = len(ctx), len(pred)
    first = prediction.start + 1
    captions = [f"t={first + i}  context {i + 1}/{n_ctx}" for i in range(n_ctx)]
    captions += [f"t={first + n_ctx + i}  predicted {i + 1}/{n_pred}" for i in range(n_pred)]
    model_view = np.concatenate([ctx, pred])
    if prediction.truth is None:
        return compose([model_view], ["context -> prediction"], captions, scale)
    truth = np.concatenate([ctx, to_uint8_rgb(prediction.truth)])
    panels, titles = [truth, model_view], ["ground truth", "prediction"]
    if error_panel:
        err = np.abs(model_view.astype(np.int16) - truth.astype(np.int16)).astype(np.uint8)
        err[:n_ctx] = 0
        panels.append(err)
        titles.append("|error|")
    return compose(panels, titles, captions, scale)


__all__ = ["DEFAULT_AUTHORS_SIZE", "Prediction", "choose_window", "frame_format", "newest_checkpoint", "predict_clip", "predict_frames", "render"]
