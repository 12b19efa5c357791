"""Decode videos, GIFs, frame folders and ``.npy`` arrays into uint8 ``[T, H, W, C]``.

One place for decoding, resizing and gray conversion, so prepared data and the
clips a user hands to ``cttlstm predict`` go through exactly the same pixels path.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np

from cttlstm_cli.errors import CttlstmError

VIDEO_EXTENSIONS = {".mp4", ".avi", ".webm", ".mov", ".mkv", ".m4v", ".mpg", ".mpeg", ".gif"}
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
#: a container that promises N frames but yields fewer than this share is called truncated
_TRUNCATED_SHARE = 0.9


#: the largest frame decoded: 8K video is 7680x4320; a header promising more is refused before
#: decoding (a "decompression bomb": a small file that expands to gigabytes)
MAX_FRAME_PIXELS = 8192 * 8192


class VideoError(CttlstmError):
    """A file that cannot be read as a video (empty, truncated, corrupt, not a video)."""


def _check_frame_size(width: int, height: int) -> None:
    if width * height > MAX_FRAME_PIXELS:
        raise VideoError(f"frames of {width}x{height} pixels, more than the {MAX_FRAME_PIXELS:,} a frame may have (8192x8192)")


class _DecodeBudget:
    """Stops a decode whose frames would take more than half of the memory available when it began
    (a long high-resolution video, a folder of thousands of huge images) with one line, instead of
    the machine swapping or the process being killed."""

    def __init__(self) -> None:
        import torch

        from cttlstm_cli.devices import available_memory

        self.limit = available_memory(torch.device("cpu")) // 2
        self.used = 0

    def add(self, frame: np.ndarray, count: int) -> None:
        self.used += frame.nbytes
        if self.used > self.limit:
            raise VideoError(
                f"decodes to more than {self.limit / 1e9:,.1f} GB after {count} frames (half the memory available); "
                "cut the clip shorter or smaller (prepare: --max-frames)"
            )


def to_gray(frames: np.ndarray) -> np.ndarray:
    """RGB(A) ``[T, H, W, 3|4]`` uint8 -> ``[T, H, W, 1]`` with ITU-R BT.601 luma weights."""
    if frames.shape[-1] == 1:
        return frames
    rgb = frames[..., :3].astype(np.float32)
    y = rgb @ np.asarray([0.299, 0.587, 0.114], dtype=np.float32)
    return np.clip(np.rint(y), 0, 255).astype(np.uint8)[..., None]


def to_rgb(frames: np.ndarray) -> np.ndarray:
    """``[T, H, W, 1|3|4]`` -> ``[T, H, W, 3]``."""
    if frames.shape[-1] == 1:
        return np.repeat(frames, 3, axis=-1)
    return frames[..., :3]


def center_crop(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Crop ``[T, H, W, C]`` to ``size`` (H, W) around the center."""
    h, w = frames.shape[1:3]
    th, tw = size
    if th > h or tw > w:
        raise ValueError(f"cannot crop {h}x{w} to {th}x{tw}")
    top, left = (h - th) // 2, (w - tw) // 2
    return frames[:, top : top + th, left : left + tw]


def resize(frames: np.ndarray, size: tuple[int, int], antialias: bool = False, batch: int = 256) -> np.ndarray:
    """Bilinear resize of uint8 ``[T, H, W, C]`` to ``size`` (H, W), rounding back to uint8.

    torch ``interpolate(mode="bilinear", align_corners=False)``; ``antialias`` stays off
    by default because that is what the KTH protocols (OpenSTL/PredRNN) use.
    """
    if tuple(frames.shape[1:3]) == tuple(size):
        return frames
    import torch
    import torch.nn.functional as F

    out = np.empty((frames.shape[0], size[0], size[1], frames.shape[3]), dtype=np.uint8)
    for start in range(0, frames.shape[0], batch):  # bounded memory for long videos
        x = torch.from_numpy(np.ascontiguousarray(frames[start : start + batch])).permute(0, 3, 1, 2).float()
        y = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False, antialias=antialias)
        out[start : start + batch] = y.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return out


def _decode_av(source: str | BinaryIO, max_frames: int | None) -> np.ndarray:
    """Decode with PyAV (FFmpeg); raises VideoError on anything unreadable."""
    import av

    frames: list[np.ndarray] = []
    expected = 0
    try:
        with av.open(source, mode="r") as container:
            if not container.streams.video:
                raise VideoError("no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            expected = int(stream.frames or 0)
            _check_frame_size(int(stream.codec_context.width or 0), int(stream.codec_context.height or 0))
            budget = _DecodeBudget()
            for frame in container.decode(stream):
                _check_frame_size(frame.width, frame.height)  # a stream may change size mid-way
                frames.append(frame.to_ndarray(format="rgb24"))
                budget.add(frames[-1], len(frames))
                if max_frames is not None and len(frames) >= max_frames:
                    break
    except VideoError:
        raise
    except (av.error.FFmpegError, OSError, ValueError, EOFError) as err:
        if not frames:
            raise VideoError(f"not a readable video ({type(err).__name__}: {err})") from None
        raise VideoError(f"truncated or corrupt after {len(frames)} frames ({type(err).__name__})") from None
    if not frames:
        raise VideoError("no frames decoded")
    if max_frames is None and expected > 0 and len(frames) < _TRUNCATED_SHARE * expected:
        raise VideoError(f"truncated: decoded {len(frames)} of {expected} frames")
    return np.stack(frames)


def _read_image_folder(path: Path, max_frames: int | None) -> np.ndarray:
    from PIL import Image

    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise VideoError("folder holds no frame images")
    files = files[:max_frames] if max_frames else files
    frames = []
    budget = _DecodeBudget()
    for f in files:
        try:
            with warnings.catch_warnings():  # PIL warns of sizes our own check refuses in one line
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                im = Image.open(f)  # reads the header only: the size is known before any pixel is decoded
            with im:
                try:
                    _check_frame_size(*im.size)
                except VideoError as err:
                    raise VideoError(f"frame {f.name}: {err}") from None
                frames.append(np.asarray(im.convert("RGB")))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:  # PIL raises all of these for damaged or odd headers
            raise VideoError(f"unreadable frame {f.name}: {err}") from None
        budget.add(frames[-1], len(frames))
    if len({fr.shape for fr in frames}) != 1:
        raise VideoError("frame images differ in size")
    return np.stack(frames)


def _read_npy(path: Path, max_frames: int | None) -> np.ndarray:
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as err:
        raise VideoError(f"unreadable .npy ({err})") from None
    if arr.ndim == 3:  # [T, H, W]
        arr = arr[..., None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3, 4):
        raise VideoError(f".npy must be [T, H, W] or [T, H, W, C], got shape {arr.shape}")
    _check_frame_size(arr.shape[2], arr.shape[1])
    if arr.dtype.kind not in "uifb":  # complex, text, dates, records: no pixel value to take from them
        raise VideoError(f".npy holds {arr.dtype} values; frames are integers (0-255), floats (0-1) or booleans")
    arr = np.asarray(arr[:max_frames] if max_frames else arr)
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise VideoError(".npy holds NaN or infinite values; frames are floats from 0 to 1")
    if arr.dtype.kind == "b":
        return arr.astype(np.uint8) * np.uint8(255)
    if arr.dtype != np.uint8:
        # floats in [0, 1] (what the model produces) or any other integer range
        arr = np.clip(np.rint(arr * 255.0), 0, 255) if arr.dtype.kind == "f" else np.clip(arr, 0, 255)
        arr = arr.astype(np.uint8)
    return arr


def decode(source: str | Path | bytes, max_frames: int | None = None) -> np.ndarray:
    """Decode without any conversion: uint8 ``[T, H, W, 3]`` (``[T, H, W, C]`` for .npy).

    ``source`` is a path (video, GIF, ``.npy`` or a folder of frame images) or the raw
    bytes of a video file (e.g. a member of a zip archive). A clip without frames, or with
    frames of no pixels (a ``[0, H, W]`` or ``[T, 0, 0]`` array), is a :class:`VideoError`:
    there is nothing to resize, store or predict from.
    """
    return _not_empty(_decode_any(source, max_frames))


def _not_empty(frames: np.ndarray) -> np.ndarray:
    if frames.shape[0] == 0:
        raise VideoError("no frames (a clip of length 0)")
    if frames.shape[1] == 0 or frames.shape[2] == 0:
        raise VideoError(f"frames of {frames.shape[1]}x{frames.shape[2]} pixels")
    return frames


def _decode_any(source: str | Path | bytes, max_frames: int | None) -> np.ndarray:
    if isinstance(source, (bytes, bytearray)):
        if not source:
            raise VideoError("empty file")
        return _decode_av(io.BytesIO(source), max_frames)
    path = Path(source)
    if path.is_dir():
        return _read_image_folder(path, max_frames)
    if not path.is_file():
        raise VideoError(f"no such file: {path}")
    if path.stat().st_size == 0:
        raise VideoError("empty file (0 bytes)")
    if path.suffix.lower() == ".npy":
        return _read_npy(path, max_frames)
    return _decode_av(str(path), max_frames)


def convert(
    frames: np.ndarray,
    size: tuple[int, int] | None = None,
    channels: int | None = None,
    crop: tuple[int, int] | None = None,
) -> np.ndarray:
    """Optional center ``crop``, then channel conversion (1 or 3), then bilinear resize to ``size``."""
    if crop is not None:
        frames = center_crop(frames, crop)
    if channels == 1:
        frames = to_gray(frames)
    elif channels == 3:
        frames = to_rgb(frames)
    elif channels is not None:
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if size is not None:
        frames = resize(frames, (int(size[0]), int(size[1])))
    return np.ascontiguousarray(frames)


def read_video(
    path: str | Path | bytes,
    size: tuple[int, int] | None = None,
    channels: int | None = None,
    max_frames: int | None = None,
    crop: tuple[int, int] | None = None,
) -> np.ndarray:
    """Read a video, GIF, frame-image folder or ``.npy`` as uint8 ``[T, H, W, C]``.

    ``size`` (H, W) resizes bilinearly; ``channels`` 1 converts to gray (BT.601), 3 to
    RGB, None keeps what the file has; ``max_frames`` stops decoding early; ``crop``
    (H, W) center-crops before resizing. Raises :class:`VideoError` (a CttlstmError)
    for empty, truncated, corrupt or non-video files.
    """
    return convert(decode(path, max_frames), size, channels, crop)
