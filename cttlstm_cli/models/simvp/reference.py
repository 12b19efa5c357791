"""The literal SimVP (gSTA): the oracle for the fast path.

:class:`ReferenceSimVP` runs a :class:`~cttlstm_cli.models.simvp.model.SimVPBase`'s own parameters (shared,
not copied) the way the papers write the network, not through its modules:

* every frame is encoded, and later decoded, on its own in a Python loop; the frames' features are stacked
  on channels by concatenation;
* GroupNorm, BatchNorm (training: the batch's statistics, and the running statistics updated as
  ``nn.BatchNorm2d`` updates them; evaluation: the running statistics), SiLU, GELU (the exact, erf form),
  the sigmoid and PixelShuffle are tensor arithmetic; 1x1 convolutions are per-pixel matrix products
  (``einsum``) and only the spatial ones are ``F.conv2d`` calls on the weights;
* gSTA's mixer is ``proj_out(σ(g) ⊙ f) + x`` with ``[f, g] = W_gate · LK(GELU(proj_in(x)))``, the MetaFormer
  residuals ``x + γ ⊙ branch(BN(x))`` with their layer scales, and stochastic depth drawn in the fast path's
  order (the same seed drops the same branches);
* 10 -> 30 feeds each block of T predicted frames back in as the next block's context.

:class:`ReferenceSimVP` takes the token mixer from :meth:`ReferenceSimVP.mixer`; TAU's reference
(:mod:`cttlstm_cli.models.tau.reference`) overrides that and nothing else of the network.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cttlstm_cli.models.interface import NetworkReference
from cttlstm_cli.models.layers.simvp import (
    ConvBlock, ConvMlp, FrameDecoder, FrameEncoder, LargeKernelConv, MetaFormerBlock,
)
from cttlstm_cli.models.simvp.model import GatedAttention, SimVPBase


def sigmoid(x: Tensor) -> Tensor:
    return 1.0 / (1.0 + torch.exp(-x))


def silu(x: Tensor) -> Tensor:
    return x * sigmoid(x)


def gelu(x: Tensor) -> Tensor:
    """The exact GELU, x · Φ(x) with Φ the standard normal's distribution function."""
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def pointwise(x: Tensor, conv: nn.Conv2d) -> Tensor:
    """A 1x1 convolution as what it is: the same matrix applied to every pixel's channel vector, plus the bias."""
    y = torch.einsum("oc,bchw->bohw", conv.weight[:, :, 0, 0], x)
    return y if conv.bias is None else y + conv.bias[None, :, None, None]


def spatial(x: Tensor, conv: nn.Conv2d) -> Tensor:
    """A convolution with a spatial kernel (strided, dilated or depthwise as the module says), on its weights."""
    return F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)


def group_norm(x: Tensor, norm: nn.GroupNorm) -> Tensor:
    """Each sample's channels in ``num_groups`` groups, each group normalised over its channels and pixels
    (biased variance), then the per-channel scale and shift."""
    b, c, h, w = x.shape
    groups = x.reshape(b, norm.num_groups, -1)
    mean = groups.mean(dim=2, keepdim=True)
    var = ((groups - mean) ** 2).mean(dim=2, keepdim=True)
    normed = ((groups - mean) / torch.sqrt(var + norm.eps)).reshape(b, c, h, w)
    return normed * norm.weight[None, :, None, None] + norm.bias[None, :, None, None]


def batch_norm(x: Tensor, norm: nn.BatchNorm2d) -> Tensor:
    """Each channel normalised over the batch and the pixels: in training by the batch's mean and biased
    variance, folding them into the running statistics (the variance unbiased, by ``momentum``, or the
    cumulative mean when it is None); in evaluation by the running statistics."""
    if norm.training:
        mean = x.mean(dim=(0, 2, 3))
        var = ((x - mean[None, :, None, None]) ** 2).mean(dim=(0, 2, 3))
        with torch.no_grad():
            norm.num_batches_tracked += 1
            m = norm.momentum if norm.momentum is not None else 1.0 / float(norm.num_batches_tracked)
            n = x.numel() // x.shape[1]
            norm.running_mean.copy_((1 - m) * norm.running_mean + m * mean)
            norm.running_var.copy_((1 - m) * norm.running_var + m * var * n / (n - 1))
    else:
        mean, var = norm.running_mean, norm.running_var
    normed = (x - mean[None, :, None, None]) / torch.sqrt(var[None, :, None, None] + norm.eps)
    return normed * norm.weight[None, :, None, None] + norm.bias[None, :, None, None]


def pixel_shuffle(x: Tensor, factor: int) -> Tensor:
    """``[B, C·r², H, W] -> [B, C, H·r, W·r]``: channel ``c·r² + i·r + j`` becomes sub-pixel (i, j) of
    channel c."""
    b, crr, h, w = x.shape
    c = crr // (factor * factor)
    return x.reshape(b, c, factor, factor, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, c, h * factor, w * factor)


def drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    """Stochastic depth: in training, each sample's branch kept with probability 1 - p and scaled by 1 / (1 - p)."""
    if p == 0.0 or not training:
        return x
    keep = torch.rand(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype) >= p
    return x * keep / (1.0 - p)


def conv_block(x: Tensor, block: ConvBlock) -> Tensor:
    """Convolution (4x the channels folded into 2x the pixels where it up-samples), GroupNorm, SiLU."""
    y = spatial(x, block.conv)
    if isinstance(block.shuffle, nn.PixelShuffle):
        y = pixel_shuffle(y, block.shuffle.upscale_factor)
    return silu(group_norm(y, block.norm))


def encode_frame(frame: Tensor, encoder: FrameEncoder) -> tuple[Tensor, Tensor]:
    """One frame ``[B, C, H, W]`` through the encoder's blocks: its features and the first block's output."""
    skip = conv_block(frame, encoder.blocks[0])
    x = skip
    for block in encoder.blocks[1:]:
        x = conv_block(x, block)
    return x, skip


def decode_frame(features: Tensor, skip: Tensor, decoder: FrameDecoder) -> Tensor:
    """One frame's translated features back to a frame; the skip joins before the last block."""
    *body, last = decoder.blocks
    for block in body:
        features = conv_block(features, block)
    return pointwise(conv_block(features + skip, last), decoder.readout)


def large_kernel(x: Tensor, attention: LargeKernelConv) -> Tensor:
    """The large receptive field: the local depthwise convolution, then the dilated depthwise one."""
    return spatial(spatial(x, attention.local), attention.far)


def gated_attention(x: Tensor, mixer: GatedAttention) -> Tensor:
    """gSTA: ``proj_out(σ(g) ⊙ f) + x``, ``[f, g]`` the gate map of the large-kernel view of GELU(proj_in(x))."""
    y = gelu(pointwise(x, mixer.proj_in))
    fg = pointwise(large_kernel(y, mixer.spatial), mixer.gate)
    d = x.shape[1]
    f, g = fg[:, :d], fg[:, d:]
    return pointwise(sigmoid(g) * f, mixer.proj_out) + x


def conv_mlp(x: Tensor, mlp: ConvMlp) -> Tensor:
    """1x1 expansion, depthwise 3x3, GELU, 1x1 projection."""
    return pointwise(gelu(spatial(pointwise(x, mlp.expand), mlp.depthwise)), mlp.project)


class ReferenceSimVP(NetworkReference):
    """A :class:`SimVPBase` run by the literal equations, over its own parameters."""

    network: SimVPBase

    def mixer(self, x: Tensor, mixer: nn.Module) -> Tensor:
        """The translator block's token mixer on ``x`` (gSTA's; TAU's reference overrides it)."""
        return gated_attention(x, mixer)

    def metaformer(self, x: Tensor, block: MetaFormerBlock) -> Tensor:
        """``x + DropPath(γ1 ⊙ mixer(BN1(x)))``, then ``x + DropPath(γ2 ⊙ MLP(BN2(x)))``."""
        p, training = block.drop_path.p, block.drop_path.training
        mixed = self.mixer(batch_norm(x, block.norm1), block.mixer)
        x = x + drop_path(block.scale1[None, :, None, None] * mixed, p, training)
        return x + drop_path(block.scale2[None, :, None, None] * conv_mlp(batch_norm(x, block.norm2), block.mlp), p, training)

    def translate(self, x: Tensor) -> Tensor:
        """The translator: each block, then the 1x1 reduction where the width changes."""
        for block, reduce in zip(self.network.translator.blocks, self.network.translator.reductions):
            x = self.metaformer(x, block)
            if isinstance(reduce, nn.Conv2d):
                x = pointwise(x, reduce)
        return x

    def block(self, frames: Tensor) -> Tensor:
        """T frames ``[B, T, C, H, W]`` in, the T frames after them out."""
        net = self.network
        encoded = [encode_frame(frames[:, t], net.encoder) for t in range(frames.shape[1])]
        mixed = self.translate(torch.cat([features for features, _ in encoded], dim=1))
        width = mixed.shape[1] // len(encoded)
        decoded = [
            decode_frame(mixed[:, t * width : (t + 1) * width], skip, net.decoder) for t, (_, skip) in enumerate(encoded)
        ]
        return torch.stack(decoded, dim=1)

    def forward(
        self,
        frames: Tensor,
        future_frames: int = 10,
        context_frames: int | None = None,
        teacher_forcing: float | Tensor = 0.0,
        generator: torch.Generator | None = None,
        classify: bool = False,
    ) -> Tensor:
        """The last T context frames predict the next T; each block of predictions is the next block's
        context until ``future_frames`` are made; the first ``future_frames`` are returned. The training
        form returns the same frames: no ground-truth future is ever an input."""
        if classify:
            raise ValueError(f"{self.name} has no activity classifier")
        known = frames if context_frames is None else frames[:, :context_frames]
        x = known[:, known.shape[1] - self.config.frames :]
        predicted: list[Tensor] = []
        while len(predicted) < future_frames:
            x = self.block(x)
            predicted.extend(x.unbind(dim=1))
        return torch.stack(predicted[:future_frames], dim=1)


def reference_model(network: SimVPBase) -> ReferenceSimVP:
    """The reference implementation over ``network``'s parameters (for tests and benchmarks)."""
    return ReferenceSimVP(network)


__all__ = ["ReferenceSimVP", "reference_model"]
