"""Predict the future of one clip with one or several models: the library behind ``cttlstm predict``.

The clip is either a file (any format :func:`cttlstm_cli.data.video.read_video` reads),
converted to the models' frame size and channels, or a clip of a prepared test split
(:func:`read_test_clip`). Which frames of a file are the context:

* ``start`` given: frames ``[start, start + context)``; the ground truth is the ``future_frames``
  frames that follow, when the clip has them all;
* otherwise, when the clip holds at least ``context + future_frames`` frames: the first ``context``
  frames, with the next ``future_frames`` frames as ground truth;
* otherwise (too short for ground truth): the last ``context`` frames, predictions only.

Several checkpoints predict from the same context frames (:func:`predict_models`); they must
agree on frame size and channels, and :func:`render` puts their predictions side by side.

A prediction is prepared first (:func:`prepare_prediction`: checkpoints loaded, clip read, window
chosen), then checked to fit in memory (:meth:`PredictionJob.check_memory`: the predicted frames
and the animation grow with ``future_frames``; a job that cannot fit is refused in one line saying how
many frames would), then run (:meth:`PredictionJob.run`), reporting each predicted frame to an
optional ``progress`` callback.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cttlstm_cli.errors import CttlstmError
from cttlstm_cli.models import VideoModel
from cttlstm_cli.models.interface import RecurrentVideoModel
from cttlstm_cli.recipe import Recipe
from cttlstm_cli.rendering import composed_shape, printable
from cttlstm_cli.training import memory
from cttlstm_cli.run_files import BEST_CHECKPOINT

#: ``progress(phase, done, total)``: which model is predicting and how many of its frames are done
ProgressCallback = Callable[[str, int, "int | None"], None]

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
    def future_frames(self) -> int:
        return int(self.predictions.shape[0])


@dataclass
class MultiPrediction:
    """One clip's context and ground truth with several models' predictions from that same context."""

    context: np.ndarray  # uint8 [I, H, W, C]
    labels: list[str]  # one panel label per model, unique, in the order the checkpoints were given
    predictions: list[np.ndarray]  # per model float32 [N, C, H, W], raw model output (not clamped)
    truth: np.ndarray | None  # uint8 [N, H, W, C], or None
    start: int  # clip index of the first context frame
    clip_frames: int  # frames in the (converted) clip
    checkpoints: list[Path]  # the checkpoint file of every model

    @property
    def future_frames(self) -> int:
        return int(self.predictions[0].shape[0])

    def single(self, index: int = 0) -> Prediction:
        """Model ``index``'s prediction alone, as :func:`predict_frames` returns it."""
        return Prediction(self.context, self.predictions[index], self.truth, self.start, self.clip_frames)

    def arrays(self) -> dict[str, np.ndarray]:
        """``{label: predictions}`` in the models' order (what ``--save-npy`` stores in the ``.npz``)."""
        return dict(zip(self.labels, self.predictions))


@dataclass
class LoadedModel:
    """A model loaded for prediction, with the recipe it was trained with and where it came from."""

    model: VideoModel
    recipe: Recipe | None
    checkpoint: Path
    summary: str = ""  # what the checkpoint is: its training step, epoch and validation loss (checkpoint_summary)


def checkpoint_summary(data: dict[str, Any]) -> str:
    """A few words on a checkpoint read by :func:`~cttlstm_cli.checkpoint.read_checkpoint`:
    ``step 2000, epoch 3, best validation loss 0.01234``, or what it is when training left no record."""
    from cttlstm_cli.checkpoint import CHECKPOINT_FORMAT

    if data.get("format") != CHECKPOINT_FORMAT:
        return "foreign format, no training record"
    parts = [f"{key} {data[key]}" for key in ("step", "epoch") if isinstance(data.get(key), int)]
    best = (data.get("schedule") or {}).get("best_loss") if isinstance(data.get("schedule"), dict) else None
    if isinstance(best, float) and np.isfinite(best):
        parts.append(f"best validation loss {best:.5f}")
    return ", ".join(parts) or "weights only, no training record"


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


def common_frame_format(
    models: Sequence[LoadedModel], size: tuple[int, int] | None = None
) -> tuple[tuple[int, int], int]:
    """The ``((H, W), channels)`` all ``models`` share; a model that differs from the first is one error naming both."""
    first = models[0]
    (h, w), c = frame_format(first.model, first.recipe, size)
    for other in models[1:]:
        (oh, ow), oc = frame_format(other.model, other.recipe, size)
        if (oh, ow, oc) != (h, w, c):
            raise CttlstmError(
                f"{other.checkpoint} takes {oh}x{ow} frames with {oc} channel(s) but {first.checkpoint} takes "
                f"{h}x{w} with {c}; all --checkpoint models must agree on frame size and channels"
            )
    return (h, w), c


def panel_labels(names: Sequence[str], checkpoints: Sequence[str | Path]) -> list[str]:
    """One unique label per model: its name, with the run directory's name (or the checkpoint file's stem)
    added where several models share a name, and a position ``#k`` where even that is not unique."""
    count = Counter(names)
    labels = []
    for name, ckpt in zip(names, checkpoints):
        path = Path(ckpt)
        tag = path.parent.name if path.name == BEST_CHECKPOINT and path.parent.name else path.stem
        # printable: a label names an array in the .npz (stored as UTF-8) and titles a panel
        labels.append(printable(f"{name} ({tag})") if count[name] > 1 else name)
    repeated = Counter(labels)
    return [f"{label} #{i + 1}" if repeated[label] > 1 else label for i, label in enumerate(labels)]


def choose_window(frames: int, context: int, future_frames: int, start: int | None = None) -> tuple[int, bool]:
    """``(start, has_truth)`` for a clip of ``frames`` frames (see the module doc)."""
    if context < 1 or future_frames < 1:
        raise CttlstmError(f"--context and --steps must be at least 1 (got {context} and {future_frames})")
    if start is not None:
        if start < 0:
            raise CttlstmError(f"--start must be >= 0, got {start}")
        if start + context > frames:
            raise CttlstmError(f"the clip has {frames} frames; --start {start} leaves fewer than the {context} context frames")
        return start, start + context + future_frames <= frames
    if frames < context:
        raise CttlstmError(f"the clip has {frames} frame(s), fewer than the {context} context frames (--context)")
    if frames >= context + future_frames:
        return 0, True
    return frames - context, False


@torch.no_grad()
def predict_free_running(
    model: VideoModel, context: torch.Tensor, future_frames: int, progress: Callable[[int], None] | None = None
) -> torch.Tensor:
    """The ``future_frames`` frames ``model`` predicts after ``context [1, I, C, H, W]``, ``[future_frames, C, H, W]``:
    what ``model(context, future_frames=future_frames)[0]`` returns.

    A recurrent model is advanced through its own ``prefix`` (the context) and ``step`` (each
    prediction fed back), the free-running path of its ``forward``, so that every frame lands in
    one preallocated buffer as it is made (collecting and stacking them would hold two copies)
    and ``progress(k)`` hears of each of the ``future_frames`` frames. Any other model predicts in one call.
    """
    if not isinstance(model, RecurrentVideoModel):
        out = model(context, future_frames=future_frames)[0]
        if progress is not None:
            progress(future_frames)
        return out
    _, frames, _, height, width = context.shape
    state = model.init_state(1, height, width, context.device, context.dtype)
    if frames > 1:
        outputs, state = model.prefix(context, state)
        frame = outputs[:, -1]
    else:
        frame, state = model.step(context[:, 0], state)
    out = torch.empty((future_frames, *frame.shape[1:]), dtype=frame.dtype, device=frame.device)
    for k in range(future_frames):
        if k:
            frame, state = model.step(frame, state)
        out[k] = frame[0]
        if progress is not None:
            progress(k + 1)
    return out


@torch.no_grad()
def predict_frames(
    model: VideoModel,
    frames: np.ndarray,
    context: int,
    future_frames: int,
    start: int | None = None,
    device: torch.device | str = "cpu",
    progress: Callable[[int], None] | None = None,
) -> Prediction:
    """Predict ``future_frames`` frames after a context taken from uint8 ``frames [T, H, W, C]``
    (``progress(k)`` after each predicted frame, see :func:`predict_free_running`)."""
    if not model.predicts_frames:
        raise CttlstmError(f"{model.name} classifies activities and predicts no frames; predict needs a frame-prediction model")
    start, has_truth = choose_window(int(frames.shape[0]), context, future_frames, start)
    ctx = frames[start : start + context]
    x = torch.from_numpy(np.array(ctx, copy=True)).permute(0, 3, 1, 2).float().div_(255.0)
    device = torch.device(device)
    pred = predict_free_running(model.to(device).eval(), x[None].to(device), future_frames, progress)
    truth = frames[start + context : start + context + future_frames] if has_truth else None
    return Prediction(ctx, pred.float().cpu().numpy(), truth, start, int(frames.shape[0]))


def predict_models(
    models: Sequence[LoadedModel],
    frames: np.ndarray,
    context: int,
    future_frames: int,
    start: int | None = None,
    device: torch.device | str = "cpu",
    progress: ProgressCallback | None = None,
) -> MultiPrediction:
    """Every model's ``future_frames`` predicted frames after the same context of uint8 ``frames [T, H, W, C]``
    (``progress("predicting with LABEL", k, future_frames)`` after each frame)."""
    _refuse_classifiers(models)
    labels = panel_labels([m.model.name for m in models], [m.checkpoint for m in models])
    results = []
    for m, label in zip(models, labels):
        phase = f"predicting with {label}"

        def report(done: int, phase: str = phase) -> None:
            if progress is not None:
                progress(phase, done, future_frames)

        results.append(predict_frames(m.model, frames, context, future_frames, start, device, report))
    first = results[0]
    return MultiPrediction(
        first.context, labels, [r.predictions for r in results], first.truth, first.start, first.clip_frames,
        [m.checkpoint for m in models],
    )


def _refuse_classifiers(models: Sequence[LoadedModel]) -> None:
    """Refuse a classifier-only model before any model runs (naming its checkpoint when there are several)."""
    for m in models:
        if not m.model.predicts_frames:
            where = f"{m.checkpoint}: " if len(models) > 1 else ""
            raise CttlstmError(
                f"{where}{m.model.name} classifies activities and predicts no frames; "
                "predict needs a frame-prediction model"
            )


def load_models(checkpoints: Sequence[str | Path], device: torch.device | str = "cpu") -> list[LoadedModel]:
    """Load every checkpoint (file or run directory, see :func:`resolve_checkpoint_path`)."""
    from cttlstm_cli.checkpoint import load_model_and_recipe, read_checkpoint, resolve_checkpoint_path

    paths = [resolve_checkpoint_path(c) for c in checkpoints]
    loaded = []
    for p in paths:
        model, recipe = load_model_and_recipe(p, device)
        # read again for the training record load_model_and_recipe does not return (a second read of a file just read)
        loaded.append(LoadedModel(model, recipe, p, checkpoint_summary(read_checkpoint(p))))
    return loaded


def read_test_clip(
    model: LoadedModel, index: int, context: int, future_frames: int, data: str | Path | None = None
) -> tuple[np.ndarray, int, str]:
    """Clip ``index`` (0-based) of the prepared test split of ``model``'s recipe (or of ``data``), cut as
    ``cttlstm evaluate --future N`` cuts it: non-overlapping windows of ``context + future_frames`` frames.

    Returns ``(frames, start, description)``: the whole stored video (uint8 ``[T, H, W, C]``) and the
    window's first frame in it, so that frame counters count frames of the video.
    """
    from cttlstm_cli.data.dataset import open_dataset
    from cttlstm_cli.evaluation.runner import data_config_for

    if index < 0:
        raise CttlstmError(f"--test-clip must be >= 0, got {index}")
    data_cfg = data_config_for(model.recipe, data, context, int(model.model.image_channels))
    dataset = open_dataset(data_cfg, "test", mode="sequential", clip_frames=context + future_frames)
    try:
        if index >= len(dataset):
            raise CttlstmError(
                f"the test split of {data_cfg.path} has {len(dataset)} clip(s) of {context}+{future_frames} frames; "
                f"--test-clip {index} is out of range"
            )
        video, start = dataset.window(index)
        # the whole video (h5py ends a slice at the last stored frame), so that t counts frames of the video
        frames = np.asarray(dataset.read(video, 0, sys.maxsize))
    finally:
        dataset.close()
    return frames, start, f"test clip {index} of {data_cfg.path} (video {video})"


@dataclass(frozen=True)
class RolloutMemory:
    """What predicting and rendering ``future_frames`` frames needs, in bytes: a part per frame of the
    animation (context and predictions) and a fixed part, in host memory and, for a model on a
    GPU, in GPU memory (see :meth:`PredictionJob.memory`)."""

    device: torch.device
    context: int
    host_per_frame: int
    host_fixed: int
    device_per_frame: int = 0
    device_fixed: int = 0

    def need(self, future_frames: int) -> tuple[int, int]:
        """``(host bytes, device bytes)`` for ``future_frames`` predicted frames."""
        frames = self.context + future_frames
        return self.host_fixed + frames * self.host_per_frame, self.device_fixed + frames * self.device_per_frame

    def max_future_frames(self, host_available: int, device_available: int | None = None) -> int:
        """The most future frames that fit in :func:`~cttlstm_cli.training.memory.budget` of the memory available (0: none)."""
        fits = [(memory.budget(host_available) - self.host_fixed) // max(self.host_per_frame, 1)]
        if self.device_per_frame and device_available is not None:
            fits.append((memory.budget(device_available) - self.device_fixed) // self.device_per_frame)
        return max(0, int(min(fits)) - self.context)

    def check(self, future_frames: int) -> None:
        """Refuse, in one line saying how many frames would fit, ``future_frames`` that cannot fit in memory."""
        host_free = memory.available_memory(torch.device("cpu"))
        device_free = memory.available_memory(self.device) if self.device_per_frame else None
        most = self.max_future_frames(host_free, device_free)
        if future_frames <= most:
            return
        host, dev = self.need(future_frames)
        hint = f"at most {most:,} steps fit" if most else "not even one step fits"
        if device_free is not None and dev > memory.budget(device_free):
            memory.require(f"--steps {future_frames:,}", dev, self.device, hint, device_free)
        memory.require(f"--steps {future_frames:,}", host, torch.device("cpu"), hint, host_free)


@dataclass
class PredictionJob:
    """One clip's context, ready to be predicted by every model (see :func:`prepare_prediction`)."""

    models: list[LoadedModel]
    frames: np.ndarray  # uint8 [T, H, W, C], the whole clip
    context: int
    future_frames: int
    start: int | None
    device: torch.device
    source: str  # a description of the clip

    @property
    def has_truth(self) -> bool:
        """Whether the clip holds the ``future_frames`` frames after the context (shown as ground truth)."""
        return choose_window(int(self.frames.shape[0]), self.context, self.future_frames, self.start)[1]

    def memory(self, scale: int | None = None, error_panel: bool = True) -> RolloutMemory:
        """The memory of predicting ``future_frames`` frames and rendering them as :func:`render` does at
        ``scale`` with ``error_panel``, per frame of the animation:

        * the predictions (float32 ``C x H x W`` per model), kept to the end, and on a GPU the one
          model's output buffer there;
        * the panels (uint8 RGB ``H x W`` each: ground truth, every model, every |error|), with the
          float and int16 copies made while converting, and one panel zoomed by ``scale``;
        * the composed animation frame, twice: the GIF and MP4 writers take a copy of the frames;

        plus, fixed, the largest model's step (its activations and recurrent state at ``H x W``,
        :func:`~cttlstm_cli.training.memory.step_activation_bytes`).
        """
        from cttlstm_cli.rendering import upscale_factor

        _, h, w, c = self.frames.shape
        n = len(self.models)
        prediction = c * h * w * 4
        rgb = h * w * 3
        panels = (1 + n + (n if error_panel else 0)) if self.has_truth else n
        zoom = scale or upscale_factor(h, w)
        ch, cw = composed_shape(h, w, panels, zoom)
        render = panels * rgb + 2 * prediction + 5 * rgb + zoom * zoom * rgb + 2 * ch * cw * 3
        step = max(memory.step_activation_bytes(m.model, h, w) for m in self.models)
        if self.device.type == "cuda":
            return RolloutMemory(self.device, self.context, n * prediction + render, 0, prediction, step)
        return RolloutMemory(self.device, self.context, n * prediction + render, step)

    def check_memory(self, scale: int | None = None, error_panel: bool = True) -> None:
        """Refuse, in one line, ``future_frames`` whose predictions and animation cannot fit (:meth:`memory`)."""
        self.memory(scale, error_panel).check(self.future_frames)

    def run(self, progress: ProgressCallback | None = None) -> MultiPrediction:
        """Every model's predictions (:func:`predict_models`)."""
        return predict_models(self.models, self.frames, self.context, self.future_frames, self.start, self.device, progress)


def prepare_prediction(
    clip: str | Path | None,
    checkpoints: Sequence[str | Path] | None = None,
    future_frames: int = 10,
    context: int | None = None,
    start: int | None = None,
    size: tuple[int, int] | None = None,
    device: torch.device | str = "cpu",
    test_clip: int | None = None,
    data: str | Path | None = None,
) -> PredictionJob:
    """Load every checkpoint (files or run directories; default :func:`newest_checkpoint`), read the
    clip and check the window: everything :func:`predict_clip_models` refuses, refused before any
    prediction runs.

    The clip is the file ``clip``, or with ``test_clip`` N clip N of the first checkpoint's prepared
    test split (its recipe's ``data.path``, or ``data``; see :func:`read_test_clip`). The context
    length is ``context``, default the first recipe's ``data.input_frames`` (10 without a recipe).
    """
    from cttlstm_cli.data.video import VideoError, read_video
    from cttlstm_cli.checkpoint import resolve_checkpoint_path

    if future_frames < 1:
        raise CttlstmError(f"--steps must be at least 1, got {future_frames}")
    if (clip is None) == (test_clip is None):
        both = clip is not None
        raise CttlstmError("give either a CLIP or --test-clip N, not both" if both else "give a CLIP or --test-clip N")
    if test_clip is not None and start is not None:
        raise CttlstmError("--start applies to a CLIP file; a --test-clip starts where its window does")
    paths = [resolve_checkpoint_path(c) for c in checkpoints] if checkpoints else [newest_checkpoint()]
    if clip is not None and not Path(clip).exists():
        raise CttlstmError(f"clip not found: {clip}")
    models = load_models(paths, device)
    _refuse_classifiers(models)
    (h, w), channels = common_frame_format(models, size)
    first_recipe = models[0].recipe
    context = int(context or (first_recipe.data.input_frames if first_recipe is not None else 10))
    for m in models:
        try:
            m.model.check_data(h, w, context)
        except CttlstmError as err:
            if len(models) == 1:
                raise
            raise CttlstmError(f"{m.checkpoint}: {err}") from None  # say which of the models refuses
    if test_clip is not None:
        frames, start, source = read_test_clip(models[0], test_clip, context, future_frames, data)
        if frames.shape[1:] != (h, w, channels):
            raise CttlstmError(
                f"the test split's frames are {frames.shape[1]}x{frames.shape[2]} with {frames.shape[3]} channel(s) "
                f"but the models take {h}x{w} with {channels}"
            )
    else:
        try:
            frames = read_video(Path(clip), size=(h, w), channels=channels)  # type: ignore[arg-type]
        except VideoError as err:
            raise CttlstmError(f"{clip}: {err}") from None
        source = str(clip)
    choose_window(int(frames.shape[0]), context, future_frames, start)  # refuses a clip too short for the context
    return PredictionJob(models, frames, context, future_frames, start, torch.device(device), source)


def predict_clip_models(
    clip: str | Path | None,
    checkpoints: Sequence[str | Path] | None = None,
    future_frames: int = 10,
    context: int | None = None,
    start: int | None = None,
    size: tuple[int, int] | None = None,
    device: torch.device | str = "cpu",
    test_clip: int | None = None,
    data: str | Path | None = None,
) -> tuple[MultiPrediction, str]:
    """Predict one clip with every checkpoint: :func:`prepare_prediction`, the memory check for
    :func:`render`'s default animation, then the predictions.

    Returns the predictions and a description of the clip.
    """
    job = prepare_prediction(clip, checkpoints, future_frames, context, start, size, device, test_clip, data)
    job.check_memory()
    return job.run(), job.source


def predict_clip(
    clip: str | Path,
    checkpoint: str | Path | None = None,
    future_frames: int = 10,
    context: int | None = None,
    start: int | None = None,
    size: tuple[int, int] | None = None,
    device: torch.device | str = "cpu",
) -> Prediction:
    """Read ``clip``, load ``checkpoint`` (file or run directory; default :func:`newest_checkpoint`), predict."""
    checkpoints = [checkpoint] if checkpoint is not None else None
    result, _ = predict_clip_models(clip, checkpoints, future_frames, context, start, size, device)
    return result.single(0)


def panel_titles(prediction: Prediction | MultiPrediction, error_panel: bool = True) -> list[str]:
    """The titles of :func:`render`'s panels, left to right."""
    single = isinstance(prediction, Prediction) or len(prediction.labels) == 1
    labels = ["prediction"] if isinstance(prediction, Prediction) else list(prediction.labels)
    if prediction.truth is None:
        return ["context -> prediction"] if single else labels
    errors = (["|error|"] if single else [f"|error| {label}" for label in labels]) if error_panel else []
    return ["ground truth", *(["prediction"] if single else labels), *errors]


def raw_path(animation: str | Path, models: int) -> Path:
    """Where :func:`save_raw` writes the raw predictions of ``models`` models beside ``animation``:
    ``.npy`` for one, ``.npz`` for several."""
    return Path(animation).with_suffix(".npz" if models > 1 else ".npy")


def save_raw(prediction: MultiPrediction, animation: str | Path) -> Path:
    """Write the raw predictions beside ``animation`` atomically; returns the file: one model's float32
    ``[N, C, H, W]`` as ``.npy``, several models' as one ``.npz`` with an array per label, in their order."""
    from cttlstm_cli.atomic import atomic_path

    several = len(prediction.labels) > 1
    path = raw_path(animation, len(prediction.labels))
    with atomic_path(path) as tmp:
        if several:
            with open(tmp, "wb") as f:  # a file object: given a path, np.savez appends .npz to it
                np.savez(f, **{k: v.astype(np.float32) for k, v in prediction.arrays().items()})
        else:
            np.save(tmp, prediction.predictions[0].astype(np.float32))
    return path


def render(prediction: Prediction | MultiPrediction, scale: int | None = None, error_panel: bool = True) -> np.ndarray:
    """The animation frames: context then predictions, beside ground truth (and |error|) when there is one.

    Panels, left to right: the ground truth (when the clip has it), every model's context + prediction
    in the models' order, then (with ground truth and ``error_panel``) every model's |error|. A single
    model's panels are titled ``ground truth | prediction | |error|``; several models' carry their labels.
    """
    from cttlstm_cli.rendering import compose, to_uint8_rgb

    preds = [prediction.predictions] if isinstance(prediction, Prediction) else list(prediction.predictions)
    titles = panel_titles(prediction, error_panel)
    ctx = to_uint8_rgb(prediction.context)
    views = [np.concatenate([ctx, to_uint8_rgb(p, channels_first=True)]) for p in preds]
    n_ctx, n_pred = len(ctx), len(views[0]) - len(ctx)
    first = prediction.start + 1
    captions = [f"t={first + i}  context {i + 1}/{n_ctx}" for i in range(n_ctx)]
    captions += [f"t={first + n_ctx + i}  predicted {i + 1}/{n_pred}" for i in range(n_pred)]
    if prediction.truth is None:
        return compose(views, titles, captions, scale)
    truth = np.concatenate([ctx, to_uint8_rgb(prediction.truth)])
    panels = [truth, *views]
    if error_panel:
        for view in views:
            err = np.abs(view.astype(np.int16) - truth.astype(np.int16)).astype(np.uint8)
            err[:n_ctx] = 0  # the context is given, not predicted
            panels.append(err)
    return compose(panels, titles, captions, scale)


__all__ = [
    "DEFAULT_AUTHORS_SIZE", "LoadedModel", "MultiPrediction", "Prediction", "PredictionJob", "RolloutMemory",
    "checkpoint_summary", "choose_window", "common_frame_format", "frame_format", "load_models", "newest_checkpoint",
    "panel_labels", "panel_titles", "raw_path", "predict_clip", "predict_clip_models", "predict_frames", "predict_models",
    "prepare_prediction", "read_test_clip", "predict_free_running", "render", "save_raw",
]
