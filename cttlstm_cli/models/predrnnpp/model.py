"""PredRNN++ (``arch: predrnnpp``; Wang et al., ICML 2018, paper §3-4).

Per time step, with L causal LSTM layers (paper Eq. 3)::

    X_t                 = space_to_depth(frame_t, p)                        [B, C*p*p, H/p, W/p]
    H^1_t, C^1_t, M^1_t = CausalLSTM_1(X_t,  H^1_{t-1}, C^1_{t-1}, M^L_{t-1})
    Z_t                 = GHU(H^1_t, Z_{t-1})
    H^2_t, C^2_t, M^2_t = CausalLSTM_2(Z_t,  H^2_{t-1}, C^2_{t-1}, M^1_t)
    H^k_t, C^k_t, M^k_t = CausalLSTM_k(H^{k-1}_t, H^k_{t-1}, C^k_{t-1}, M^{k-1}_t)     k = 3 .. L
    prediction          = depth_to_space(head(H^L_t), p)                    (1x1 conv, no sigmoid)

The spatio-temporal memory M zigzags: up through the layers within a step, and from the top
layer at t-1 into the bottom layer at t. Every state starts at zero. The state is one flat
tuple of tensors ``(H^1 .. H^L, C^1 .. C^L, M^L, Z)`` and is never stored on the module, so a
training loop, a compiled graph or a streaming predictor can drive :meth:`PredRNNPP.step`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from cttlstm_cli.models.interface import RecurrentVideoModel
from cttlstm_cli.models.layers import apply_conv
from cttlstm_cli.models.layers.patches import depth_to_space, patch_channels, patched_prefix, space_to_depth
from cttlstm_cli.models.predrnnpp.cells import CausalLSTMCell, GradientHighwayUnit
from cttlstm_cli.models.predrnnpp.config import PredRNNPPConfig
from cttlstm_cli.models.predrnnpp.flops import analytic_macs, layer_shapes
from cttlstm_cli.models.registry import register_model

NetworkState = tuple[Tensor, ...]
#: ``cell_fn(cell, x, h, c, m_below) -> (h, c, m)``: how one causal LSTM layer is run
CellFn = Callable[[CausalLSTMCell, Tensor, Tensor, Tensor, Tensor], tuple[Tensor, Tensor, Tensor]]
#: ``highway_fn(ghu, x, z) -> z``: how the gradient highway unit is run
HighwayFn = Callable[[GradientHighwayUnit, Tensor, Tensor], Tensor]


def _fast_cell(cell: CausalLSTMCell, x: Tensor, h: Tensor, c: Tensor, m: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    return cell(cell.input_gates(x), h, c, m)


def _fast_highway(ghu: GradientHighwayUnit, x: Tensor, z: Tensor) -> Tensor:
    return ghu(x, z)


@register_model("predrnnpp")
class PredRNNPP(RecurrentVideoModel):
    """Causal LSTMs with a gradient highway and space-to-depth patches; see the module docstring."""

    config_class = PredRNNPPConfig
    config: PredRNNPPConfig

    def __init__(self, cfg: PredRNNPPConfig, image_channels: int = 1) -> None:
        super().__init__(cfg, image_channels)
        self.cells = nn.ModuleList(
            CausalLSTMCell(c_in, n, m_in, cfg.kernel, cfg.layer_norm)
            for c_in, n, m_in in layer_shapes(cfg, image_channels)
        )
        self.highway = GradientHighwayUnit(cfg.hidden[0], cfg.hidden[0], cfg.kernel, cfg.layer_norm)
        self.head = nn.Conv2d(cfg.hidden[-1], patch_channels(image_channels, cfg.patch), 1)

    downsampling_key = "model.patch"

    @property
    def downsampling(self) -> int:
        """Frame height and width must be multiples of the patch size."""
        return self.config.patch

    def analytic_macs(self, height: int, width: int) -> int:
        return analytic_macs(self.config, self.image_channels, height, width)

    def init_state(
        self, batch: int, height: int, width: int, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> NetworkState:
        """Zero ``(H^1 .. H^L, C^1 .. C^L, M^L, Z)`` at the patched size of ``height`` x ``width`` frames."""
        patch = self.config.patch
        self.check_frame_size(height, width)
        ref = self.head.weight
        like = {"device": device or ref.device, "dtype": dtype or ref.dtype}
        size = (height // patch, width // patch)
        widths = self.config.hidden
        hidden = tuple(torch.zeros(batch, n, *size, **like) for n in widths)
        cells = tuple(torch.zeros(batch, n, *size, **like) for n in widths)
        memory, highway = torch.zeros(batch, widths[-1], *size, **like), torch.zeros(batch, widths[0], *size, **like)
        return (*hidden, *cells, memory, highway)

    def through_stack(
        self, x: Tensor, state: NetworkState, cell_fn: CellFn, highway_fn: HighwayFn
    ) -> tuple[Tensor, NetworkState]:
        """Advance every layer by one step from the patched input ``x``; returns the top hidden state
        and the new state. The one place that wires the network (the zigzag of M, the highway
        between layers 1 and 2): :meth:`step`, :meth:`prefix` and the reference differ only in how a
        layer and the highway are run."""
        layers = len(self.cells)
        hidden, cells = state[:layers], state[layers : 2 * layers]
        m, z = state[2 * layers], state[2 * layers + 1]  # M^L_{t-1} enters layer 1: the zigzag
        new_hidden: list[Tensor] = []
        new_cells: list[Tensor] = []
        for k, cell in enumerate(self.cells):
            h, c, m = cell_fn(cell, x, hidden[k], cells[k], m)
            new_hidden.append(h)
            new_cells.append(c)
            if k == 0:
                z = highway_fn(self.highway, h, z)
                x = z
            else:
                x = h
        return x, (*new_hidden, *new_cells, m, z)

    def step(self, frame: Tensor, state: NetworkState) -> tuple[Tensor, NetworkState]:
        """Advance by one frame ``[B, C, H, W]``: the next-frame prediction and the new state."""
        patch = self.config.patch
        top, state = self.through_stack(space_to_depth(frame, patch), state, _fast_cell, _fast_highway)
        return depth_to_space(apply_conv(self.head, top), patch), state

    def prefix(self, frames: Tensor, state: NetworkState) -> tuple[Tensor, NetworkState]:
        """Run :meth:`step` over known inputs ``frames [B, P, C, H, W]``.

        Equal to P calls of :meth:`step`, but the patch reshape and layer 1's input convolutions
        (X's share of W1, W2 and W4) for all P steps run as one batched convolution, and so do the
        head and the inverse reshape (:func:`patched_prefix`). Everything else is sequential: layer
        k >= 2 reads the layer below at the same step, and layer 1 reads the top layer's M of the
        previous step.
        """
        first = self.cells[0]

        def advance(gates: Tensor, state: NetworkState) -> tuple[Tensor, NetworkState]:
            def cell_fn(cell: CausalLSTMCell, x: Tensor, h: Tensor, c: Tensor, m: Tensor) -> tuple[Tensor, Tensor, Tensor]:
                return cell(gates if cell is first else cell.input_gates(x), h, c, m)

            return self.through_stack(gates, state, cell_fn, _fast_highway)  # layer 1 reads its gates, not x

        return patched_prefix(frames, state, self.config.patch, first.input_gates, advance, self.head)
