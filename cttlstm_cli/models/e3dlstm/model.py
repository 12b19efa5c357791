"""The E3D-LSTM network (``arch: e3dlstm``): patches, a 3D-conv encoder, stacked E3D-LSTM cells with
the zigzag spatio-temporal memory, a 3D-conv decoder and, optionally, an activity classifier.

One step reads one frame. The frame is cut into ``patch x patch`` patches (space to depth) and
appended to a sliding window of the last ``window`` frames, kept in the state; before ``window``
frames exist the window is padded with zero frames at the front. The encoder (a 3D conv with the
cells' kernel) maps the window to the first layer's width; each layer k takes H_t^{k-1} as X_t, and
M enters layer k as M_t^{k-1}, leaves the top as M_t^L and enters the bottom layer at t+1 (the
zigzag of PredRNN). The decoder, a 3D conv spanning the whole window ([D, 1, 1], stride D), turns
the top hidden state into the patches of the next frame, unclamped (no sigmoid).

State: ``(window, M, layers)``: the last ``window - 1`` patched frames ``[B, C*p*p, window-1, h, w]``,
M ``[B, ch, window, h, w]``, and per layer (H_{t-1}, (C_{t-tau}, ..., C_{t-1})). The memory starts
as the single zero cell state C_{-1} and grows to ``memory_steps`` entries.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from cttlstm_cli.errors import CttlstmError
from cttlstm_cli.models.e3dlstm.cells import E3DLSTMCell, LayerState, causal_conv3d, make_conv3d
from cttlstm_cli.models.e3dlstm.config import E3DLSTMConfig
from cttlstm_cli.models.e3dlstm.flops import analytic_macs
from cttlstm_cli.models.interface import RecurrentVideoModel, like_parameters
from cttlstm_cli.models.layers.heads import activity_classifier
from cttlstm_cli.models.layers.patches import depth_to_space, space_to_depth
from cttlstm_cli.models.registry import register_model

NetworkState = tuple[Tensor, Tensor, tuple[LayerState, ...]]


@register_model("e3dlstm")
class E3DLSTM(RecurrentVideoModel):
    """Eidetic 3D LSTM; see the module docstring and docs/models/e3dlstm.md."""

    config_class = E3DLSTMConfig
    config: E3DLSTMConfig
    #: named by :meth:`check_frame_size` when frames are not whole numbers of patches
    downsampling_key = "model.patch"

    def __init__(self, cfg: E3DLSTMConfig, image_channels: int = 1) -> None:
        super().__init__(cfg, image_channels)
        patched = image_channels * cfg.patch**2
        kernel = tuple(cfg.kernel)
        self.encoder = make_conv3d(patched, cfg.hidden[0], kernel, bias=True)
        inputs = [cfg.hidden[0], *cfg.hidden]  # the encoder gives the bottom layer hidden[0] channels
        self.cells = nn.ModuleList(E3DLSTMCell(i, ch, kernel, cfg.memory_steps) for i, ch in zip(inputs, cfg.hidden))
        # One output per window: a kernel over the whole depth, stride D.
        self.decoder = nn.Conv3d(cfg.hidden[-1], patched, (cfg.window, 1, 1), stride=(cfg.window, 1, 1))
        self.classifier = activity_classifier(cfg.hidden[-1], cfg.classes) if cfg.classes is not None else None

    @property
    def downsampling(self) -> int:
        """Frames are cut into ``patch x patch`` patches."""
        return self.config.patch

    def analytic_macs(self, height: int, width: int) -> int:
        """One step with a full memory (tau cell states), per sample: see :mod:`.flops`."""
        return analytic_macs(self.config, self.image_channels, height, width)

    def counted_macs(self, height: int, width: int) -> int:
        """torch's count of one step with a full memory (tau cell states), the steady state: the recall
        attention grows with the memory, so the first step (one memory) would under-count it."""
        frame = torch.zeros(1, self.image_channels, height, width, **like_parameters(self))
        with torch.no_grad():
            state = self.full_memory(self.init_state(1, height, width, frame.device, frame.dtype))
            with FlopCounterMode(display=False) as counter:
                self.step(frame, state)
        return counter.get_total_flops() // 2

    def full_memory(self, state: NetworkState) -> NetworkState:
        """``state`` with every layer's memory padded to tau entries by repeating its oldest (for counting)."""
        window, m, layers = state
        tau = self.config.memory_steps
        return window, m, tuple((h, (mem[0],) * (tau - len(mem)) + mem) for h, mem in layers)

    def init_state(
        self, batch: int, height: int, width: int, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> NetworkState:
        """Zero window, M, hidden states and the single zero memory C_{-1} of every layer."""
        self.check_frame_size(height, width)  # one line naming model.patch, for every caller (train asks first)
        cfg = self.config
        ref = self.encoder.weight
        kw = {"device": device or ref.device, "dtype": dtype or ref.dtype}
        h, w = height // cfg.patch, width // cfg.patch
        window = torch.zeros(batch, self.image_channels * cfg.patch**2, cfg.window - 1, h, w, **kw)
        zeros = [torch.zeros(batch, ch, cfg.window, h, w, **kw) for ch in cfg.hidden]
        return window, zeros[0], tuple((z, (z,)) for z in zeros)

    def check_data(self, height: int, width: int, context_frames: int) -> None:
        """Frames of whole patches, and a context at least one window long: prediction from a shorter
        context would work (the window is zero-padded), but a model so trained or evaluated never sees a
        full window of real frames before its first prediction."""
        super().check_data(height, width, context_frames)
        if context_frames < self.config.window:
            raise CttlstmError(
                f"model.window ({self.config.window}) is longer than the context (data.input_frames = {context_frames}); "
                "use a window of at most data.input_frames frames"
            )

    def stack(
        self, x: Tensor | None, m: Tensor, layers: tuple[LayerState, ...], gates_x: Tensor | None = None
    ) -> tuple[Tensor, Tensor, tuple[LayerState, ...]]:
        """Every cell, bottom to top, for one step: the top hidden state, M^L and the new layer states.
        ``gates_x``: the bottom cell's input gates, when already computed."""
        new_layers = []
        top = x
        for k, (cell, state) in enumerate(zip(self.cells, layers)):
            top, state, m = cell(top, state, m, gates_x if k == 0 else None)
            new_layers.append(state)
        assert top is not None  # at least one layer (model.hidden has min_length 1)
        return top, m, tuple(new_layers)

    def decode(self, top: Tensor) -> Tensor:
        """Top hidden state(s) ``[N, ch, D, h, w]`` -> next frame(s) ``[N, C, H, W]``."""
        return depth_to_space(self.decoder(top).squeeze(2), self.config.patch)

    def step(self, frame: Tensor, state: NetworkState) -> tuple[Tensor, NetworkState]:
        """Advance by one frame ``[B, C, H, W]``: slide the window, encode, run the stack, decode."""
        window, m, layers = state
        window = torch.cat([window, space_to_depth(frame, self.config.patch).unsqueeze(2)], dim=2)
        top, m, layers = self.stack(causal_conv3d(window, self.encoder), m, layers)
        return self.decode(top), (window[:, :, 1:], m, layers)

    def prefix(self, frames: Tensor, state: NetworkState) -> tuple[Tensor, NetworkState]:
        """Run :meth:`step` over known inputs ``frames [B, P, C, H, W]``.

        Equal to P calls of :meth:`step`, but what does not depend on the recurrence runs once for
        all P steps: the patches, the P windows, the encoder, the bottom cell's input convolution and
        the decoder. M's zigzag makes every cell of step t wait for the top of step t-1, so the cells
        themselves stay step by step.
        """
        batch, steps = frames.shape[:2]
        window, m, layers = state
        depth = self.config.window
        patched = space_to_depth(frames.flatten(0, 1), self.config.patch).unflatten(0, (batch, steps))
        sequence = torch.cat([window, patched.transpose(1, 2)], dim=2)  # [B, Cp, D-1+P, h, w]
        # Time-major [P*B, Cp, D, h, w]: window t is sequence[:, :, t : t+D], and each step is one slice.
        windows = sequence.unfold(2, depth, 1).permute(2, 0, 1, 5, 3, 4).flatten(0, 1)
        gates = self.cells[0].input_gates(causal_conv3d(windows, self.encoder)).split(batch)
        tops = []
        for gates_x in gates:
            top, m, layers = self.stack(None, m, layers, gates_x)
            tops.append(top)
        out = self.decode(torch.cat(tops)).unflatten(0, (steps, batch)).transpose(0, 1)
        return out, (sequence[:, :, steps:], m, layers)

    def classify(self, state: NetworkState) -> Tensor:
        """Activity logits from the top layer's newest hidden state, averaged over the window's depth."""
        if self.classifier is None:
            raise ValueError("this model has no classifier (model.classes is not set)")
        return self.classifier(state[2][-1][0].mean(dim=2))
