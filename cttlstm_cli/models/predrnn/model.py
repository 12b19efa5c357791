"""PredRNN (``arch: predrnn``; Wang et al., NeurIPS 2017, paper §3).

Per time step, with L spatio-temporal LSTM layers (:mod:`.cells`)::

    X_t                 = space_to_depth(frame_t, p)
    H^1_t, C^1_t, M^1_t = ST-LSTM_1(X_t,       H^1_{t-1}, C^1_{t-1}, M^L_{t-1})
    H^k_t, C^k_t, M^k_t = ST-LSTM_k(H^{k-1}_t, H^k_{t-1}, C^k_{t-1}, M^{k-1}_t)     k = 2 .. L
    prediction          = depth_to_space(head(H^L_t), p)              (1x1 conv, no bias, no sigmoid)

The spatio-temporal memory M zigzags: up through the layers within a step, then from the top layer
into the bottom one at the next step. Every state starts at zero; the state is the flat tuple
``(H^1 .. H^L, C^1 .. C^L, M)``, never stored on the module.

Training uses the paper's scheduled sampling: the ground-truth ratio falls linearly from 1 to 0 over
``sampling_steps`` optimizer steps (:meth:`PredRNN.teacher_forcing`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from cttlstm_cli.models.interface import RecurrentVideoModel
from cttlstm_cli.models.layers import apply_conv
from cttlstm_cli.models.layers.patches import depth_to_space, patch_channels, patched_prefix, space_to_depth
from cttlstm_cli.models.predrnn.cells import SpatioTemporalLSTMCell
from cttlstm_cli.models.predrnn.config import PredRNNConfig
from cttlstm_cli.models.predrnn.flops import analytic_macs, layer_inputs
from cttlstm_cli.models.registry import register_model

NetworkState = tuple[Tensor, ...]
#: ``cell_fn(cell, x, h, c, m) -> (h, c, m, ΔC, ΔM)``: how one ST-LSTM layer is run
CellFn = Callable[[SpatioTemporalLSTMCell, Tensor, Tensor, Tensor, Tensor], tuple[Tensor, Tensor, Tensor, Tensor, Tensor]]
#: ``increments(k, ΔC, ΔM)``: receives each layer's memory increments (PredRNN-V2's decoupling loss)
IncrementSink = Callable[[int, Tensor, Tensor], None]


def _fast_cell(cell: SpatioTemporalLSTMCell, x: Tensor, h: Tensor, c: Tensor, m: Tensor) -> tuple[Tensor, ...]:
    return cell(cell.input_gates(x), h, c, m)


@register_model("predrnn")
class PredRNN(RecurrentVideoModel):
    """Stacked ST-LSTMs with the zigzag memory and space-to-depth patches; see the module docstring."""

    config_class = PredRNNConfig
    config: PredRNNConfig

    def __init__(self, cfg: PredRNNConfig, image_channels: int = 1) -> None:
        super().__init__(cfg, image_channels)
        self.cells = nn.ModuleList(
            SpatioTemporalLSTMCell(c_in, n, cfg.kernel, cfg.forget_bias)
            for c_in, n in zip(layer_inputs(cfg, image_channels), cfg.hidden)
        )
        self.head = nn.Conv2d(cfg.hidden[-1], patch_channels(image_channels, cfg.patch), 1, bias=False)
        #: where :meth:`through_stack` reports the memory increments (set while a subclass's loss needs them)
        self.increments: IncrementSink | None = None

    downsampling_key = "model.patch"

    @property
    def downsampling(self) -> int:
        return self.config.patch

    def analytic_macs(self, height: int, width: int) -> int:
        return analytic_macs(self.config, self.image_channels, height, width)

    def teacher_forcing(self, step: int, ratio: float) -> float:
        """The paper's schedule: 1 - step / sampling_steps, down to 0 (the recipe's ``ratio`` when unset)."""
        steps = self.config.sampling_steps
        return ratio if steps is None else max(0.0, 1.0 - step / steps)

    def init_state(
        self, batch: int, height: int, width: int, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> NetworkState:
        """Zero ``(H^1 .. H^L, C^1 .. C^L, M)`` at the patched size of ``height`` x ``width`` frames."""
        patch = self.config.patch
        self.check_frame_size(height, width)
        ref = self.head.weight
        like = {"device": device or ref.device, "dtype": dtype or ref.dtype}
        size = (height // patch, width // patch)
        zeros = [torch.zeros(batch, n, *size, **like) for n in self.config.hidden]
        return (*zeros, *(torch.zeros_like(z) for z in zeros), torch.zeros_like(zeros[-1]))

    def through_stack(self, x: Tensor, state: NetworkState, cell_fn: CellFn) -> tuple[Tensor, NetworkState]:
        """Advance every layer by one step from the patched input ``x``; returns the top H and the new
        state. The one place that wires the network (the zigzag of M): the fast path, :meth:`prefix`
        and the reference differ only in how a layer is run."""
        layers = len(self.cells)
        hidden, cells, m = state[:layers], state[layers : 2 * layers], state[2 * layers]
        new_hidden: list[Tensor] = []
        new_cells: list[Tensor] = []
        for k, cell in enumerate(self.cells):
            x, c, m, delta_c, delta_m = cell_fn(cell, x, hidden[k], cells[k], m)
            new_hidden.append(x)
            new_cells.append(c)
            if self.increments is not None:
                self.increments(k, delta_c, delta_m)
        return x, (*new_hidden, *new_cells, m)

    def step(self, frame: Tensor, state: NetworkState) -> tuple[Tensor, NetworkState]:
        """Advance by one frame ``[B, C, H, W]``: the next-frame prediction and the new state."""
        patch = self.config.patch
        top, state = self.through_stack(space_to_depth(frame, patch), state, _fast_cell)
        return depth_to_space(apply_conv(self.head, top), patch), state

    def prefix(self, frames: Tensor, state: NetworkState) -> tuple[Tensor, NetworkState]:
        """Equal to P calls of :meth:`step`, but layer 1's input convolution and the head run once over
        all P steps (their inputs are known; :func:`patched_prefix`); the rest is sequential."""
        first = self.cells[0]

        def advance(gates: Tensor, state: NetworkState) -> tuple[Tensor, NetworkState]:
            def cell_fn(cell: SpatioTemporalLSTMCell, x: Tensor, h: Tensor, c: Tensor, m: Tensor) -> tuple[Tensor, ...]:
                return cell(gates if cell is first else cell.input_gates(x), h, c, m)

            return self.through_stack(gates, state, cell_fn)  # layer 1 reads its gates, not x

        return patched_prefix(frames, state, self.config.patch, first.input_gates, advance, self.head)
