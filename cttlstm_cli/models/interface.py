"""The contract every model family implements, so that train, evaluate, predict and profile
run any spatio-temporal predictor without knowing which one it is.

A family is a :class:`VideoModel` subclass registered under a name (its ``arch``) with
:func:`~cttlstm_cli.models.registry.register_model`, and a :class:`ModelConfig` subclass
beside it that a recipe's ``model`` section validates into.

The forward contract (frames are ``[B, T, C, H, W]`` with values in [0, 1]):

* **prediction** — ``model(frames, future_frames=F)``: all T frames are context; returns the
  F predicted frames ``[B, F, C, H, W]``, unclamped;
* **training** — ``model(clips, future_frames=F, context_frames=I, teacher_forcing=p,
  generator=g)``: ``clips`` holds I context frames and the F ground-truth futures; returns
  all ``I + F - 1`` one-step outputs (output t predicts frame t + 1), each later input being
  the ground truth with probability ``p`` (scheduled sampling, :func:`teacher_mask`) and the
  previous prediction otherwise; a :class:`Sampling` in place of ``p`` also samples the context;
* ``classify=True`` (families with an activity classifier, ``num_classes`` set) adds the
  activity logits ``[B, num_classes]``: ``(outputs, logits)``.

A family may also be a classifier only (``predicts_frames`` False, such as the 3D-CNN of the
paper's Tables 1 and 3): it is called with ``classify=True`` only and returns ``(None, logits)``;
training then minimises the cross-entropy alone, evaluation reports accuracy alone, and
``predict`` refuses it.

:class:`RecurrentVideoModel` implements both forms for any family that advances one frame at
a time (``init_state`` + ``step``); a family only overrides :meth:`RecurrentVideoModel.prefix`
when it can run known inputs faster than step by step.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

import torch
from pydantic import AfterValidator, Field
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from cttlstm_cli.errors import CttlstmError
from cttlstm_cli.schema import StrictSection

State = Any


def _odd(value: int) -> int:
    if value % 2 != 1:
        raise ValueError(f"must be odd for 'same' padding, got {value}")
    return value


def _positive_entries(values: list[int]) -> list[int]:
    if any(x < 1 for x in values):
        raise ValueError(f"every entry must be >= 1, got {values}")
    return values


#: a kernel size for 'same' padding, for family configs
OddInt = Annotated[int, Field(ge=1), AfterValidator(_odd)]
#: channel widths or layer counts, every entry >= 1
PositiveInts = Annotated[list[int], AfterValidator(_positive_entries)]


class ModelConfig(StrictSection):
    """Base of every family's recipe ``model`` section: strict (:mod:`cttlstm_cli.schema`), with the
    family's name in ``arch``.

    A family's subclass declares ``arch: Literal["name"] = "name"`` and its own fields.
    """

    arch: str

    @property
    def display_name(self) -> str:
        """The model's name in tables and reports (a family may name its variants)."""
        return self.arch

    @property
    def num_classes(self) -> int | None:
        """Activity classes of the classifier the config asks for, or None (frame prediction only).
        Training and evaluation read labelled clips when it is set."""
        return None


class VideoModel(nn.Module, ABC):
    """A spatio-temporal predictor; see the module docstring for the forward contract."""

    #: the family's config class (set by each family)
    config_class: ClassVar[type[ModelConfig]]

    def __init__(self, config: ModelConfig, image_channels: int = 1) -> None:
        super().__init__()
        self.config = config
        self.image_channels = image_channels

    @property
    def name(self) -> str:
        """Display name of this model (``Conv-TT-LSTM``, ``PredRNN++``, ...)."""
        return self.config.display_name

    @property
    def downsampling(self) -> int:
        """Frame height and width must be multiples of this (2 per stride-2 encoder layer, patch size ...)."""
        return 1

    @property
    def num_classes(self) -> int | None:
        """Activity classes of the classifier head, or None for a frame predictor only."""
        return self.config.num_classes

    @property
    def predicts_frames(self) -> bool:
        """Whether the model predicts frames (False: an activity classifier only)."""
        return True

    #: the recipe key that sets :attr:`downsampling`, named when a frame size does not suit it
    downsampling_key: ClassVar[str] = "the model configuration"

    def check_data(self, height: int, width: int, context_frames: int) -> None:
        """Refuse, in one line naming the recipe key, data this model cannot take: frames of
        ``height`` x ``width`` and ``context_frames`` context frames. Families extend it."""
        self.check_frame_size(height, width)

    def check_frame_size(self, height: int, width: int) -> None:
        """Refuse, in one line, frames this model cannot take (not a multiple of :attr:`downsampling`)."""
        unit = self.downsampling
        if height % unit or width % unit:
            raise CttlstmError(
                f"data.frame_size {height}x{width} does not suit {self.name}: its frames must be multiples of "
                f"{unit}, set by {self.downsampling_key}; choose another data.frame_size or {self.downsampling_key}"
            )

    @property
    def fixed_context(self) -> int | None:
        """The number of context frames the model needs, when it cannot take any other (a model that
        reads all its context frames at once, such as SimVP); None for any number."""
        return None

    def training_targets(self, clips: Tensor, context_frames: int) -> Tensor:
        """The frames of ``clips`` that the training form's outputs predict: by default every frame
        after the first (output t predicts frame t + 1); a model that predicts only the future frames
        returns ``clips[:, context_frames:]``."""
        return clips[:, 1:]

    def teacher_forcing(self, step: int, ratio: float) -> float | Sampling:
        """The scheduled-sampling ratio (probability of feeding the ground truth) of the training forward
        at optimizer step ``step`` (0 for the first), given ``ratio``, the recipe's plateau schedule's
        (train.scheduled_sampling): by default ``ratio``; a family whose paper trains with its own
        iteration-driven schedule (PredRNN's linear decay) returns that instead, and one that also
        samples the context (PredRNN-V2) a :class:`Sampling`."""
        return ratio

    def loss(self, outputs: Tensor, targets: Tensor, kind: str = "l1+l2") -> Tensor:
        """The training objective for the training form's ``outputs`` against ``targets``
        (:meth:`training_targets`): the recipe's prediction loss ``kind`` (train.loss); a family
        adds the terms its paper trains with (TAU's differential divergence, say)."""
        from cttlstm_cli.models.losses import prediction_loss

        return prediction_loss(outputs.float(), targets.float(), kind)

    @abstractmethod
    def forward(
        self,
        frames: Tensor,
        future_frames: int = 10,
        context_frames: int | None = None,
        teacher_forcing: float | Tensor | Sampling = 0.0,
        generator: torch.Generator | None = None,
        classify: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """See the module docstring."""

    def predict(self, frames: Any, future_frames: int = 10) -> Tensor:
        """The ``future_frames`` frames that follow ``frames``, clamped to [0, 1], computed without an
        autograd graph and in eval mode (the model's mode is restored after).

        ``frames``: one clip ``[T, C, H, W]`` or a batch ``[B, T, C, H, W]`` of floats in [0, 1] (a
        :class:`~cttlstm_cli.data.dataset.ClipDataset` item), or uint8 ``[T, H, W, C]`` as
        :func:`~cttlstm_cli.data.video.read_video` returns it; a NumPy array or a tensor. Returns
        ``[future_frames, C, H, W]`` for one clip and ``[B, future_frames, C, H, W]`` for a batch, on
        the model's device. Anything else is refused in one line (:class:`CttlstmError`)."""
        clips, batched = self._clips(frames)
        if isinstance(future_frames, bool) or not isinstance(future_frames, int) or future_frames < 1:
            raise CttlstmError(f"future_frames must be a whole number of frames, at least 1; got {future_frames!r}")
        _, context, _, height, width = clips.shape
        self.check_data(height, width, context)
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                out = self(clips.to(**like_parameters(self)), future_frames=future_frames)
        finally:
            self.train(was_training)
        out = out.clamp(0.0, 1.0)
        return out if batched else out[0]

    def _clips(self, frames: Any) -> tuple[Tensor, bool]:
        """``frames`` as a float batch ``[B, T, C, H, W]`` in [0, 1], and whether it was a batch."""
        shape_help = "[frames, channels, height, width] or [batch, frames, channels, height, width] floats in [0, 1], or uint8 [frames, height, width, channels]"
        if not torch.is_tensor(frames):
            try:
                frames = torch.as_tensor(frames)
            except (TypeError, ValueError, RuntimeError):
                raise CttlstmError(f"frames must be an array of {shape_help}; got a {type(frames).__name__}") from None
        if frames.dtype == torch.uint8 and frames.ndim == 4:
            frames = frames.permute(0, 3, 1, 2).float().div(255.0)  # read_video's [T, H, W, C]
        elif not frames.is_floating_point():
            raise CttlstmError(f"frames must be {shape_help}; got {str(frames.dtype).removeprefix('torch.')} values")
        if frames.ndim not in (4, 5):
            raise CttlstmError(f"frames must be {shape_help}; got shape {list(frames.shape)}")
        batched = frames.ndim == 5
        clips = frames if batched else frames[None]
        if clips.shape[2] != self.image_channels:
            raise CttlstmError(
                f"frames have {clips.shape[2]} channel(s) (shape {list(frames.shape)}), but {self.name} takes {self.image_channels}; "
                f"frames are {shape_help}"
            )
        if not bool(clips.isfinite().all()):
            raise CttlstmError("frames hold NaN or infinite values")
        return clips, batched

    def analytic_macs(self, height: int, width: int) -> int | None:
        """Exact multiply-accumulates of one-step prediction for one sample, or None when the
        family has no analytic count (then :meth:`counted_macs` is the figure)."""
        return None

    def counted_macs(self, height: int, width: int) -> int:
        """Multiply-accumulates of one-step prediction for one sample, by torch's FLOP counter
        (2 FLOPs per MAC): one context frame in, one frame out (a classifier: one frame classified).
        A model with a :attr:`fixed_context` of T frames runs one forward of T frames in and T out,
        and the count is per predicted frame (a T-th of it)."""
        frames = self.fixed_context or 1
        clip = torch.zeros(1, frames, self.image_channels, height, width, **like_parameters(self))
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            self(clip, future_frames=frames, classify=not self.predicts_frames)
        return counter.get_total_flops() // 2 // frames

    def macs_per_step(self, height: int, width: int) -> int:
        """The paper's FLOPs figure (multiplications for one-step prediction per sample)."""
        analytic = self.analytic_macs(height, width)
        return self.counted_macs(height, width) if analytic is None else analytic


@dataclass(frozen=True)
class Sampling:
    """Scheduled sampling of the whole training rollout, for a family that also samples its context
    (PredRNN-V2's reverse scheduled sampling). ``future`` is what a plain ``teacher_forcing`` value is:
    the probability that each input after the context is the ground truth, or a ``[B, F-1]`` mask;
    ``context`` the probability that each context input after the first is the ground truth rather
    than the previous prediction, or a ``[B, I-1]`` mask. ``Sampling(p)`` rolls out exactly as ``p``."""

    future: float | Tensor
    context: float | Tensor = 1.0

    def __getitem__(self, part: slice) -> Sampling:
        """The choices of the clips ``part`` of the batch (masks are sliced; a probability fits any batch)."""
        return Sampling(*(v[part] if isinstance(v, Tensor) else v for v in (self.future, self.context)))

    def drawn(
        self,
        batch: int,
        frames: Tensor,
        input_frames: int,
        future_frames: int,
        generator: torch.Generator | None = None,
    ) -> Sampling:
        """The same sampling with its choices drawn for the whole batch, as a rollout of it would draw them
        (micro-batches then take their slices: the step equals one big batch's)."""
        future, context = sampling_masks(self, batch, frames, input_frames, future_frames, generator)
        return Sampling(0.0 if future is None else future, 1.0 if context is None else context)


def sampling_record(teacher_forcing: float | Sampling) -> dict[str, float]:
    """The metrics.jsonl fields of a step's scheduled sampling (:meth:`VideoModel.teacher_forcing`):
    ``teacher_forcing``, the future's probability, and ``context_truth`` where the context is sampled."""
    if not isinstance(teacher_forcing, Sampling):
        return {"teacher_forcing": teacher_forcing}
    record = {"teacher_forcing": float(teacher_forcing.future)}
    if teacher_forcing.context != 1.0:
        record["context_truth"] = float(teacher_forcing.context)
    return record


def _choices(
    probability: float, batch: int, steps: int, device: torch.device, generator: torch.Generator | None
) -> Tensor:
    """``[batch, steps]`` draws, each True with ``probability`` (all True from 1 on, drawing nothing)."""
    if probability >= 1.0:
        return torch.ones(batch, steps, dtype=torch.bool, device=device)
    draws = torch.rand(batch, steps, generator=generator, device=generator.device if generator else device)
    return (draws < probability).to(device)


def teacher_mask(
    teacher_forcing: float | Tensor,
    batch: int,
    steps: int,
    frames: Tensor,
    input_frames: int,
    generator: torch.Generator | None = None,
) -> Tensor | None:
    """Scheduled sampling's per-sample, per-step choices ``[batch, steps]`` (True: feed the
    ground truth), drawn with ``generator``; None when no step takes the ground truth."""
    if isinstance(teacher_forcing, Tensor):
        return teacher_forcing.to(device=frames.device, dtype=torch.bool)
    if teacher_forcing <= 0.0 or steps <= 0:
        return None
    if frames.shape[1] < input_frames + steps:
        raise ValueError("teacher forcing needs the ground-truth future frames in `frames`")
    return _choices(teacher_forcing, batch, steps, frames.device, generator)


def sampling_masks(
    teacher_forcing: float | Tensor | Sampling,
    batch: int,
    frames: Tensor,
    input_frames: int,
    future_frames: int,
    generator: torch.Generator | None = None,
) -> tuple[Tensor | None, Tensor | None]:
    """A rollout's choices (True: feed the ground truth), the future's first: ``[batch, F-1]`` or None
    when no future input is the ground truth (:func:`teacher_mask`), and ``[batch, I-1]`` for the context
    inputs after the first, or None when every one is the ground truth (any plain value)."""
    sampling = teacher_forcing if isinstance(teacher_forcing, Sampling) else Sampling(teacher_forcing)
    future = teacher_mask(sampling.future, batch, future_frames - 1, frames, input_frames, generator)
    context = sampling.context
    if isinstance(context, Tensor):
        return future, context.to(device=frames.device, dtype=torch.bool)
    if context >= 1.0 or input_frames <= 1:
        return future, None
    return future, _choices(context, batch, input_frames - 1, frames.device, generator)


class RecurrentVideoModel(VideoModel):
    """A model that advances one frame at a time; implements the whole forward contract.

    Subclasses give :meth:`init_state` and :meth:`step` (and :meth:`classify` when they have
    a classifier); :meth:`prefix` may run known inputs faster than :meth:`step` one by one.
    """

    @abstractmethod
    def init_state(
        self, batch: int, height: int, width: int, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> State:
        """The state before the first frame, for frames of ``height`` x ``width``."""

    @abstractmethod
    def step(self, frame: Tensor, state: State) -> tuple[Tensor, State]:
        """Advance by one frame ``[B, C, H, W]``: the next-frame prediction and the new state."""

    def prefix(self, frames: Tensor, state: State) -> tuple[Tensor, State]:
        """Run :meth:`step` over known inputs ``frames [B, P, C, H, W]``; outputs ``[B, P, C, H, W]``."""
        outputs = []
        for t in range(frames.shape[1]):
            y, state = self.step(frames[:, t], state)
            outputs.append(y)
        return torch.stack(outputs, dim=1), state

    def classify(self, state: State) -> Tensor:
        """Activity logits from the final state."""
        raise ValueError(f"{self.name} has no activity classifier")

    def rollout(
        self,
        frames: Tensor,
        input_frames: int,
        future_frames: int,
        teacher_forcing: float | Tensor | Sampling = 0.0,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, State]:
        """Run ``input_frames + future_frames - 1`` steps; output t predicts frame t+1.

        ``frames [B, T, C, H, W]`` holds at least the ``input_frames`` context frames;
        where it also holds ground-truth futures, each later input is, per sample and
        per step, the ground truth with probability ``teacher_forcing`` and the
        previous prediction otherwise (scheduled sampling). A ``[B, F-1]`` boolean
        tensor may be passed instead of a probability to fix the choices, and a
        :class:`Sampling` samples the context inputs after the first as well.
        Returns the outputs ``[B, I+F-1, C, H, W]`` and the final state.
        """
        batch, _, _, height, width = frames.shape
        steps = input_frames + future_frames - 1
        use_truth, context_truth = sampling_masks(
            teacher_forcing, batch, frames, input_frames, future_frames, generator
        )
        future = teacher_forcing.future if isinstance(teacher_forcing, Sampling) else teacher_forcing
        state = self.init_state(batch, height, width, frames.device, frames.dtype)
        outputs: list[Tensor] = []
        # Inputs are known in advance for the context and, under full teacher forcing,
        # for every step: that prefix goes through prefix(). A float of 1.0 says so
        # without reading the mask (a data-dependent branch would break a compiled graph).
        all_truth = isinstance(future, float | int) and future >= 1.0
        if use_truth is not None and not all_truth:
            all_truth = bool(use_truth.all())
        known = steps if use_truth is not None and all_truth else input_frames
        if context_truth is not None:
            # A sampled context is known only up to the first input some clip takes from its prediction.
            predicted = (~context_truth).any(dim=0).nonzero()
            if len(predicted):
                known = min(known, 1 + int(predicted[0]))
        start = 0
        if known > 1:
            prefix, state = self.prefix(frames[:, :known], state)
            outputs.extend(prefix.unbind(1))
            start = known
        for t in range(start, steps):
            if t < input_frames:
                x = frames[:, t]
                if context_truth is not None and t > 0:
                    x = torch.where(context_truth[:, t - 1, None, None, None], x, outputs[-1])
            else:
                prev = outputs[-1]
                x = prev if use_truth is None else torch.where(use_truth[:, t - input_frames, None, None, None], frames[:, t], prev)
            y, state = self.step(x, state)
            outputs.append(y)
        return torch.stack(outputs, dim=1), state

    def forward(
        self,
        frames: Tensor,
        future_frames: int = 10,
        context_frames: int | None = None,
        teacher_forcing: float | Tensor | Sampling = 0.0,
        generator: torch.Generator | None = None,
        classify: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """The forward contract (module docstring) by :meth:`rollout`.

        Training goes through ``forward`` (not ``rollout``) so that DDP's gradient hooks stay in play.
        """
        full = context_frames is not None
        context = context_frames if full else frames.shape[1]
        outputs, state = self.rollout(frames, context, future_frames, teacher_forcing if full else 0.0, generator)
        if not full:
            outputs = outputs[:, context - 1 :]
        if classify:
            return outputs, self.classify(state)
        return outputs


class NetworkReference(VideoModel):
    """Base of the literal reference implementations (each family's ``reference.py``): it runs
    ``network``'s own parameters (``self.network.*``, shared, not copied) with the same forward
    contract, so tests and benchmarks can hold the fast path against it. A recurrent family's reference
    is a :class:`ReferenceModel`; one that is not recurrent (SimVP's) writes its own ``forward``."""

    def __init__(self, network: VideoModel) -> None:
        super().__init__(network.config, network.image_channels)
        self.network = network

    @property
    def downsampling(self) -> int:
        return self.network.downsampling

    @property
    def num_classes(self) -> int | None:
        return self.network.num_classes

    @property
    def fixed_context(self) -> int | None:
        return self.network.fixed_context

    def training_targets(self, clips: Tensor, context_frames: int) -> Tensor:
        return self.network.training_targets(clips, context_frames)


class ReferenceModel(NetworkReference, RecurrentVideoModel):
    """Base of the literal per-step reference implementations of the recurrent families."""


def like_parameters(model: nn.Module) -> dict[str, Any]:
    """``device`` and floating ``dtype`` of ``model``'s parameters, as keyword arguments for a new tensor."""
    ref = next((p for p in model.parameters() if p.is_floating_point()), None)
    return {} if ref is None else {"device": ref.device, "dtype": ref.dtype}


def unwrap(model: nn.Module) -> VideoModel:
    """The model inside DDP / torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return model  # type: ignore[return-value]
        model = inner
