"""The blocks of the SimVP line of models (SimVP, SimVP v2 / gSTA, TAU): the per-frame convolutional
encoder and decoder, the MetaFormer wrapper the translators are built of, its MLP, and the large-kernel
convolution their attentions share.

Written from Gao et al., "SimVP: Simpler yet Better Video Prediction" (CVPR 2022), Tan et al., "SimVP:
Towards Simple yet Powerful Spatiotemporal Predictive Learning" (arXiv 2211.12509) and Tan et al.,
"Temporal Attention Unit" (CVPR 2023).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def sampling_pattern(blocks: int) -> list[bool]:
    """Which of the encoder's blocks stride by 2: every second one (the 2nd and 4th of four), so that
    ``blocks`` = 4 works at a quarter of the frame's height and width."""
    return [i % 2 == 1 for i in range(blocks)]


class ConvBlock(nn.Module):
    """3x3 convolution, GroupNorm of 2 groups, SiLU; stride 2 down, or 2x up by PixelShuffle."""

    def __init__(self, channels_in: int, channels_out: int, kernel: int = 3, down: bool = False, up: bool = False) -> None:
        super().__init__()
        # PixelShuffle(2) folds 4 channels into one doubled pixel: the conv makes 4x the output channels.
        out = channels_out * 4 if up else channels_out
        self.conv = nn.Conv2d(channels_in, out, kernel, stride=2 if down else 1, padding=kernel // 2)
        self.shuffle = nn.PixelShuffle(2) if up else nn.Identity()
        self.norm = nn.GroupNorm(2, channels_out)
        self.act = nn.SiLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.norm(self.shuffle(self.conv(x))))


class FrameEncoder(nn.Module):
    """Encode every frame on its own: ``blocks`` :class:`ConvBlock` of ``hidden`` channels; returns the
    features at ``1 / 2**(blocks // 2)`` of the frame size and the first block's output (the skip)."""

    def __init__(self, channels: int, hidden: int, blocks: int, kernel: int = 3) -> None:
        super().__init__()
        down = sampling_pattern(blocks)
        self.blocks = nn.ModuleList(ConvBlock(channels if i == 0 else hidden, hidden, kernel, down=d) for i, d in enumerate(down))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        skip = x = self.blocks[0](x)
        for block in self.blocks[1:]:
            x = block(x)
        return x, skip


class FrameDecoder(nn.Module):
    """Mirror of :class:`FrameEncoder`: up-sampling where it strided, the skip added before the last
    block, then a 1x1 convolution to the frame's channels."""

    def __init__(self, hidden: int, channels: int, blocks: int, kernel: int = 3) -> None:
        super().__init__()
        up = list(reversed(sampling_pattern(blocks)))
        self.blocks = nn.ModuleList(ConvBlock(hidden, hidden, kernel, up=u) for u in up)
        self.readout = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        for block in self.blocks[:-1]:
            x = block(x)
        return self.readout(self.blocks[-1](x + skip))


def large_kernel_sizes(kernel: int, dilation: int = 3) -> tuple[int, int]:
    """The kernels of :class:`LargeKernelConv` for a receptive field of ``kernel``: the local depthwise
    one (``2 * dilation - 1``) and the dilated one (the odd size nearest ``kernel / dilation``); 5 and 7
    for 21. The analytic FLOP count reads them from here too."""
    far = kernel // dilation + ((kernel // dilation) % 2 - 1)
    return 2 * dilation - 1, far


class LargeKernelConv(nn.Module):
    """A large receptive field of depthwise convolutions: 5x5, then 7x7 dilated by 3 (21x21 in all,
    as in the papers' kernel of 21)."""

    def __init__(self, channels: int, kernel: int = 21, dilation: int = 3) -> None:
        super().__init__()
        local, far = large_kernel_sizes(kernel, dilation)
        self.local = nn.Conv2d(channels, channels, local, padding=local // 2, groups=channels)
        self.far = nn.Conv2d(channels, channels, far, padding=dilation * (far - 1) // 2, groups=channels, dilation=dilation)

    def forward(self, x: Tensor) -> Tensor:
        return self.far(self.local(x))


class ConvMlp(nn.Module):
    """The MetaFormer MLP of 1x1 convolutions: expand by ``ratio``, depthwise 3x3, GELU, project back."""

    def __init__(self, channels: int, ratio: float) -> None:
        super().__init__()
        hidden = int(channels * ratio)
        self.expand = nn.Conv2d(channels, hidden, 1)
        self.depthwise = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.act = nn.GELU()
        self.project = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.project(self.act(self.depthwise(self.expand(x))))


class DropPath(nn.Module):
    """Stochastic depth: during training, a residual branch is dropped for a whole sample with
    probability ``p`` (and the kept ones scaled by 1 / (1 - p))."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = torch.rand(x.shape[0], *([1] * (x.dim() - 1)), device=x.device, dtype=x.dtype) >= self.p
        return x * keep / (1.0 - self.p)


class MetaFormerBlock(nn.Module):
    """``x + DropPath(γ1 ⊙ mixer(BN(x)))``, then ``x + DropPath(γ2 ⊙ MLP(BN(x)))``; the layer scales γ
    start at ``init_scale``. ``mixer`` is the translator's attention (gSTA's or TAU's)."""

    def __init__(self, channels: int, mixer: nn.Module, mlp_ratio: float, drop_path: float, init_scale: float = 1e-2) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(channels)
        self.mixer = mixer
        self.norm2 = nn.BatchNorm2d(channels)
        self.mlp = ConvMlp(channels, mlp_ratio)
        self.drop_path = DropPath(drop_path)
        self.scale1 = nn.Parameter(torch.full((channels,), init_scale))
        self.scale2 = nn.Parameter(torch.full((channels,), init_scale))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.scale1[:, None, None] * self.mixer(self.norm1(x)))
        return x + self.drop_path(self.scale2[:, None, None] * self.mlp(self.norm2(x)))


def translator_widths(channels_in: int, hidden: int, blocks: int) -> list[tuple[int, int]]:
    """Each translator block's width and the width after it: the first block works at ``channels_in``
    and hands ``hidden`` on, the last works at ``hidden`` and hands ``channels_in`` back (a 1x1
    reduction wherever the two differ). The analytic FLOP count reads them from here too."""
    widths = [channels_in] + [hidden] * (blocks - 1)
    return list(zip(widths, [hidden] * (blocks - 1) + [channels_in]))


class Translator(nn.Module):
    """``blocks`` MetaFormer blocks over the stacked frames' features (``channels_in`` = T · hid_S):
    the first block works at ``channels_in`` and reduces to ``hidden`` by a 1x1 convolution, the last
    works at ``hidden`` and widens back to ``channels_in``. ``block(channels, drop_path)`` makes one block."""

    def __init__(self, channels_in: int, hidden: int, blocks: int, make_block, drop_path: float) -> None:  # noqa: ANN001 - a factory
        super().__init__()
        if blocks < 2:
            raise ValueError("the translator needs at least 2 blocks")
        rates = torch.linspace(0.0, drop_path, blocks, device="cpu").tolist()  # stochastic depth grows with depth; 0: none
        shapes = translator_widths(channels_in, hidden, blocks)
        self.blocks = nn.ModuleList(make_block(w, r) for (w, _), r in zip(shapes, rates))
        self.reductions = nn.ModuleList(nn.Conv2d(w, o, 1) if w != o else nn.Identity() for w, o in shapes)

    def forward(self, x: Tensor) -> Tensor:
        for block, reduce in zip(self.blocks, self.reductions):
            x = reduce(block(x))
        return x


__all__ = [
    "ConvBlock", "ConvMlp", "DropPath", "FrameDecoder", "FrameEncoder", "LargeKernelConv", "MetaFormerBlock",
    "Translator", "large_kernel_sizes", "sampling_pattern", "translator_widths",
]
