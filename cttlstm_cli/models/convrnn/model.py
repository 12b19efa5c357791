"""The conv-RNN family (``arch: convrnn``): Conv-TT-LSTM, ConvLSTM and the classic-TTD ConvLSTM
in the paper's 12-layer video-prediction network (design §2).

For early activity recognition (paper §4) the same network adds a stride-2 conv
encoder and a mirrored transposed-conv decoder around the recurrent stack
(``encoder_channels``) and an activity classifier (``classes``): two stride-2 convs
and one fully-connected layer on the last recurrent layer's output.

Layers are named ``b{block}l{layer}``. With the default ``skip_stride=2`` and four
blocks, block 3's first layer takes ``[block 2 ; block 0]`` and the 1x1 output head
takes ``[block 3 ; block 1]``. The head has no sigmoid: raw outputs are fed back
and clamping to [0, 1] is left to metrics and rendering.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn

from cttlstm_cli.models.convrnn.cells import CellState, ConvLSTMCell, ConvTTLSTMCell, RecurrentCell, TTDConvLSTMCell
from cttlstm_cli.models.convrnn.config import ConvRNNConfig, skip_source
from cttlstm_cli.models.convrnn.flops import analytic_macs
from cttlstm_cli.models.interface import RecurrentVideoModel
from cttlstm_cli.models.layers.heads import activity_classifier
from cttlstm_cli.models.registry import register_model

NetworkState = tuple[CellState, ...]
#: ``layer(cell, x, state) -> (hidden, state)``: how one recurrent layer is run
LayerFn = Callable[[RecurrentCell, Tensor, CellState], tuple[Tensor, CellState]]


def make_cell(cfg: ConvRNNConfig, in_channels: int, hidden_channels: int) -> RecurrentCell:
    """Build one recurrent cell of the configured type."""
    if cfg.cell == "convlstm":
        return ConvLSTMCell(in_channels, hidden_channels, cfg.kernel)
    if cfg.cell == "convlstm_ttd":
        return TTDConvLSTMCell(in_channels, hidden_channels, cfg.kernel, cfg.rank, cfg.ttd_order)
    form = "parallel" if cfg.ctt_form == "parallel" else "sequential"
    return ConvTTLSTMCell(
        in_channels, hidden_channels, cfg.ctt_order, cfg.history, cfg.rank, cfg.kernel, cfg.tt_padding, form, cfg.ctt_kernel
    )


@register_model("convrnn")
class ConvRNN(RecurrentVideoModel):
    """Stacked recurrent blocks with skips and a 1x1 head; see the module docstring.

    ``model(frames, future_frames=F)`` takes context frames ``[B, T, C, H, W]``
    (values in [0, 1]) and returns the ``F`` predicted frames, unclamped.
    """

    config_class = ConvRNNConfig
    config: ConvRNNConfig

    def __init__(self, cfg: ConvRNNConfig, image_channels: int = 1) -> None:
        super().__init__(cfg, image_channels)
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
            self.classifier = activity_classifier(widths[-1], cfg.classes)

    downsampling_key = "model.encoder_channels"

    @property
    def downsampling(self) -> int:
        """Frame size / recurrent-state size (2 per encoder layer)."""
        return 2 ** len(self.config.encoder_channels)

    def analytic_macs(self, height: int, width: int) -> int:
        return analytic_macs(self.config, self.image_channels, height, width)

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
        return tuple(cell.init_state(batch, height, width, device, dtype) for cell in self.cells.values())

    def through_stack(self, x: Tensor, state: NetworkState, layer: LayerFn) -> tuple[Tensor, NetworkState]:
        """Encoder, every recurrent layer (run by ``layer``) with the skips between blocks, decoder
        and head. The one place that wires the network: :meth:`step`, :meth:`prefix` and the
        reference implementation differ only in how a layer is run."""
        cfg = self.config
        cells = iter(self.cells.values())
        states = iter(state)
        new_state: list[CellState] = []
        block_outputs: list[Tensor] = []
        x = self.encoder(x)
        for b, layers in enumerate(cfg.blocks):
            src = skip_source(b, cfg.skip_stride) if b > 0 else None
            if src is not None:
                x = torch.cat([x, block_outputs[src]], dim=1)
            for _ in range(layers):
                x, s = layer(next(cells), x, next(states))
                new_state.append(s)
            block_outputs.append(x)
        src = skip_source(len(cfg.blocks), cfg.skip_stride)
        if src is not None:
            x = torch.cat([x, block_outputs[src]], dim=1)
        return self.head(self.decoder(x)), tuple(new_state)

    def step(self, frame: Tensor, state: NetworkState) -> tuple[Tensor, NetworkState]:
        """Advance all layers by one time step: ``frame [B, C, H, W]`` -> next-frame prediction."""
        return self.through_stack(frame, state, lambda cell, x, s: cell(x, s))

    def prefix(self, frames: Tensor, state: NetworkState) -> tuple[Tensor, NetworkState]:
        """Run :meth:`step` over known inputs ``frames [B, P, C, H, W]``, layer by layer.

        Equal to P calls of :meth:`step`, but each layer's input convolutions for all P
        steps run as one batched convolution, and so do the encoder, decoder and head;
        only the state part of each step stays sequential.
        """
        batch, steps = frames.shape[:2]

        def layer(cell: RecurrentCell, x: Tensor, s: CellState) -> tuple[Tensor, CellState]:
            hidden = []
            for gates in cell.input_gates(x).split(batch):
                h, s = cell.recurrent_step(gates, s)
                hidden.append(h)
            return torch.cat(hidden), s

        # Time-major [P*B, ...]: each step is one contiguous slice, so splitting the batched
        # gates costs nothing and its backward is a plain concatenation in any memory format.
        out, state = self.through_stack(frames.transpose(0, 1).flatten(0, 1), state, layer)
        return out.unflatten(0, (steps, batch)).transpose(0, 1), state

    def classify(self, state: NetworkState) -> Tensor:
        """Activity logits from the last recurrent layer's newest hidden state."""
        if self.classifier is None:
            raise ValueError("this model has no classifier (model.classes is not set)")
        return self.classifier(state[-1][-1])
