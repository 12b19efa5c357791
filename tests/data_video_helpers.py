"""Tiny test videos written with PyAV (shared by the data tests)."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np


def ramp_frames(t: int, h: int = 120, w: int = 160, base: int = 10, step: int = 20) -> np.ndarray:
    """uint8 [t, h, w]: frame i is the constant base + step * i (so any resize keeps the value)."""
    values = (base + step * np.arange(t)) % 256
    return np.broadcast_to(values[:, None, None], (t, h, w)).astype(np.uint8).copy()


def write_video(path: Path, frames: np.ndarray, codec: str = "ffv1", fps: int = 25) -> Path:
    """Write gray [T, H, W] or RGB [T, H, W, 3] uint8 frames; ffv1 is lossless, so values survive exactly."""
    path.parent.mkdir(parents=True, exist_ok=True)
    gray = frames.ndim == 3
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "gray" if gray and codec == "ffv1" else ("yuv420p" if codec != "ffv1" else "bgr0")
        for frame in frames:
            vf = av.VideoFrame.from_ndarray(frame, format="gray" if gray else "rgb24")
            for packet in stream.encode(vf):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
