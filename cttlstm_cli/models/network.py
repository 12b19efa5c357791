"""The 12-layer video-prediction network (design §2) and its rollout.

For early activity recognition (paper §4) the same class adds a stride-2 conv
encoder and a mirrored transposed-conv decoder around the recurrent stack
(``encoder_channels``) and an activity classifier (``classes``): two stride-2 convs
and one fully-connected layer on the last recurrent layer's output.

Layers are named ``b{block}l{layer}``. With the default ``skip_stride=2`` and four
blocks, block 3's first layer takes ``[block 2 ; block 0]`` and the 1x1 output head
takes ``[block 3 ; block 1]``. The head has no sigmoid: raw outputs are fed back
and clamping to [0, 1] is left to metrics and rendering.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from cttlstm_cli.models.cells import CellState, ConvLSTMCell, ConvTTLSTMCell, TTDConvLSTMCell
from cttlstm_cli.recipe import ModelConfig

NetworkState = tuple[CellState, ...]


def skip_source(position: int, skip_stride: int | None) -> int | None:
    """Block whose output joins the input of block ``position`` (the head is position B)."""
    if skip_stride is None or position < skip_stride + 1:
        return None
    return position - 1 - skip_stride


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
    if teacher_forcing >= 1.0:
        return torch.ones(batch, steps, dtype=torch.bool, device=frames.device)
    draws = torch.rand(batch, steps, generator=generator, device=generator.device if generator else frames.device)
    return (draws < teacher_forcing).to(frames.device)


def make_cell(cfg: ModelConfig, in_channels: int, hidden_channels: int) -> nn.Module:
    """Build one recurrent cell of the configured type."""
    if cfg.cell == "convlstm":
        return ConvLSTMCell(in_channels, hidden_channels, cfg.kernel)
    if cfg.cell == "convlstm_ttd":
        return TTDConvLSTMCell(in_channels, hidden_channels, cfg.kernel, cfg.rank, cfg.order)
    form = "parallel" if cfg.ctt_form == "parallel" else "sequential"
    return ConvTTLSTMCell(in_channels, hidden_channels, cfg.order, cfg.steps, cfg.rank, cfg.kernel, cfg.tt_padding, form)


class VideoPredictionNetwork(nn.Module):
    """Stacked recurrent blocks with skips and a 1x1 head; see the module docstring.

    ``model(frames, future_frames=F)`` takes context frames ``[B, T, C, H, W]``
    (values in [0, 1]) and returns the ``F`` predicted frames, unclamped.
    """

    def __init__(self, cfg: ModelConfig, image_channels: int = 1) -> None:
        super().__init__()
        self.config = cfg
        self.image_channels = image_channels
        self.cells = nn.ModuleDict()
        widths = cfg.channels
        enc = cfg.encoder_channels
        self.encoder = nn.Sequential(
            *(
                layer
                for c_in, c_out in zip([image_channels, *enc], enc)
                for layer in (nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.LeakyReLU(0.2))
            )
        )
        stack_in = enc[-1] if enc else image_channels
        for b, (layers, width) in enumerate(zip(cfg.blocks, widths)):
            for l in range(layers):
                if l > 0:
                    in_ch = width
                else:
                    in_ch = stack_in if b == 0 else widths[b - 1]
                    src = skip_source(b, cfg.skip_stride)
                    if src is not None:
                        in_ch += widths[src]
                self.cells[f"b{b}l{l}"] = make_cell(cfg, in_ch, width)
        head_in = widths[-1]
        src = skip_source(len(widths), cfg.skip_stride)
        if src is not None:
            head_in += widths[src]
        dec = list(reversed(enc))
        self.decoder = nn.Sequential(
            *(
                layer
                for c_in, c_out in zip([head_in, *dec], dec)
                for layer in (nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1), nn.LeakyReLU(0.2))
            )
        )
        self.head = nn.Conv2d(dec[-1] if dec else head_in, image_channels, 1)
        self.classifier: nn.Module | None = None
        if cfg.classes is not None:
            self.classifier = nn.Sequential(
                nn.Conv2d(widths[-1], 64, 3, stride=2, padding=1),
                nn.ReLU(),
                nn.Conv2d(64, 128, 3, stride=2, padding=1),
                nn.ReLU(),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(),
                nn.Linear(128, cfg.classes),
            )

    @property
    def downsampling(self) -> int:
        """Frame size / recurrent-state size (2 per encoder layer)."""
        return 2 ** len(self.config.encoder_channels)

    #: run the literal per-step algorithm (the oracle) instead of the fast path
    reference: bool = False

    def use_reference(self, reference: bool = True) -> VideoPredictionNetwork:
        """Select the plain per-step implementation (``True``) or the fast path (default)."""
        self.reference = reference
        return self

    def set_ctt_form(self, form: Literal["sequential", "parallel"]) -> None:
        """Switch every Conv-TT-LSTM cell between Algorithm 2 and Algorithm 1 (results are equal)."""
        for cell in self.cells.values():
            if isinstance(cell, ConvTTLSTMCell):
                cell.tt.set_form(form)

    def init_state(
        self, batch: int, height: int, width: int, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> NetworkState:
        """Zero state for every layer (``height``/``width`` of the frames)."""
        ref = self.head.weight
        device = device or ref.device
        dtype = dtype or ref.dtype
        height, width = height // self.downsampling, width // self.downsampling
        return tuple(cell.init_state(batch, height, width, device, dtype, self.reference) for cell in self.cells.values())

    def step(self, frame: Tensor, state: NetworkState) -> tuple[Tensor, NetworkState]:
        """Advance all layers by one time step: ``frame [B, C, H, W]`` -> next-frame prediction."""
        cfg = self.config
        cells = iter(self.cells.values())
        states = iter(state)
        new_state: list[CellState] = []
        block_outputs: list[Tensor] = []
        x = self.encoder(frame)
        for b, layers in enumerate(cfg.blocks):
            src = skip_source(b, cfg.skip_stride) if b > 0 else None
            if src is not None:
                x = torch.cat([x, block_outputs[src]], dim=1)
            for _ in range(layers):
                cell = next(cells)
                x, s = cell.reference_step(x, next(states)) if self.reference else cell(x, next(states))
                new_state.append(s)
            block_outputs.append(x)
        src = skip_source(len(cfg.blocks), cfg.skip_stride)
        if src is not None:
            x = torch.cat([x, block_outputs[src]], dim=1)
        return self.head(self.decoder(x)), tuple(new_state)

    def sequence(self, frames: Tensor, state: NetworkState) -> tuple[Tensor, NetworkState]:
        """Run :meth:`step` over known inputs ``frames [B, P, C, H, W]``, layer by layer.

        Equal to P calls of :meth:`step`, but each layer's input convolutions for all P
        steps run as one batched convolution, and so do the encoder, decoder and head;
        only the state part of each step stays sequential.
        """
        cfg = self.config
        batch, steps = frames.shape[:2]
        cells = iter(self.cells.values())
        states = iter(state)
        new_state: list[CellState] = []
        block_outputs: list[Tensor] = []
        # Time-major [P*B, ...]: each step is one contiguous slice, so splitting the batched
        # gates costs nothing and its backward is a plain concatenation in any memory format.
        x = self.encoder(frames.transpose(0, 1).flatten(0, 1))
        for b, layers in enumerate(cfg.blocks):
            src = skip_source(b, cfg.skip_stride) if b > 0 else None
            if src is not None:
                x = torch.cat([x, block_outputs[src]], dim=1)
            for _ in range(layers):
                cell, s = next(cells), next(states)
                hidden = []
                for gates in cell.input_gates(x).split(batch):
                    h, s = cell.recurrent_step(gates, s)
                    hidden.append(h)
                x = torch.cat(hidden)
                new_state.append(s)
            block_outputs.append(x)
        src = skip_source(len(cfg.blocks), cfg.skip_stride)
        if src is not None:
            x = torch.cat([x, block_outputs[src]], dim=1)
        return self.head(self.decoder(x)).unflatten(0, (steps, batch)).transpose(0, 1), tuple(new_state)

    def classify(self, state: NetworkState) -> Tensor:
        """Activity logits from the last recurrent layer's newest hidden state."""
        if self.classifier is None:
            raise ValueError("this model has no classifier (model.classes is not set)")
        return self.classifier(state[-1][-1])

    def rollout(
        self,
        frames: Tensor,
        input_frames: int,
        future_frames: int,
        teacher_forcing: float | Tensor = 0.0,
        generator: torch.Generator | None = None,
        return_state: bool = False,
    ) -> Tensor | tuple[Tensor, NetworkState]:
        """Run ``input_frames + future_frames - 1`` steps; output t predicts frame t+1.

        ``frames [B, T, C, H, W]`` holds at least the ``input_frames`` context frames;
        where it also holds ground-truth futures, each later input is, per sample and
        per step, the ground truth with probability ``teacher_forcing`` and the
        previous prediction otherwise (scheduled sampling). A ``[B, F-1]`` boolean
        tensor may be passed instead of a probability to fix the choices.
        """
        batch, _, _, height, width = frames.shape
        steps = input_frames + future_frames - 1
        use_truth = teacher_mask(teacher_forcing, batch, future_frames - 1, frames, input_frames, generator)
        state = self.init_state(batch, height, width, frames.device, frames.dtype)
        outputs: list[Tensor] = []
        # Inputs are known in advance for the context and, under full teacher forcing,
        # for every step: the fast path runs that prefix layer-major. A float of 1.0 says so
        # without reading the mask (a data-dependent branch would break a compiled graph).
        all_truth = isinstance(teacher_forcing, float | int) and teacher_forcing >= 1.0
        if use_truth is not None and not all_truth:
            all_truth = bool(use_truth.all())
        known = steps if use_truth is not None and all_truth else input_frames
        start = 0
        if not self.reference and known > 1:
            prefix, state = self.sequence(frames[:, :known], state)
            outputs.extend(prefix.unbind(1))
            start = known
        for t in range(start, steps):
            if t < input_frames:
                x = frames[:, t]
            else:
                prev = outputs[-1]
                x = prev if use_truth is None else torch.where(use_truth[:, t - input_frames, None, None, None], frames[:, t], prev)
            y, state = self.step(x, state)
            outputs.append(y)
        if return_state:
            return torch.stack(outputs, dim=1), state
        return torch.stack(outputs, dim=1)

    def forward(
        self,
        frames: Tensor,
        future_frames: int = 10,
        context_frames: int | None = None,
        teacher_forcing: float | Tensor = 0.0,
        generator: torch.Generator | None = None,
        classify: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Predict ``future_frames`` frames after the context in ``frames [B, T, C, H, W]``.

        By default all T frames are context and the result is ``[B, F, C, H, W]``.
        Training passes ``context_frames`` (I) and clips holding the future ground
        truth; it then gets all ``I+F-1`` one-step outputs of :meth:`rollout`
        (going through ``forward`` keeps DDP's gradient hooks in play). With
        ``classify=True`` the activity logits of the final state come along:
        ``(outputs, logits)``.
        """
        full = context_frames is not None
        context = context_frames if full else frames.shape[1]
        outputs, state = self.rollout(frames, context, future_frames, teacher_forcing if full else 0.0, generator, return_state=True)
        if not full:
            outputs = outputs[:, context - 1 :]
        if classify:
            return outputs, self.classify(state)
        return outputs
