"""Animations of predicted frames: labelled side-by-side panels written as GIF or MP4 (imageio).

Frames are uint8 ``[T, H, W, 3]`` arrays. :func:`compose` lays several equally long
frame sequences side by side, upscaled (nearest neighbour) so that small frames such as
64×64 Moving-MNIST stay visible, with a title above every panel (in a smaller font, then cut
with an ellipsis, when it is wider than its panel) and a caption (the frame counter) below.
:func:`write_animation` picks GIF or MP4 from the file extension and writes to a temporary
name first, so a failed or interrupted write never leaves half a file.
"""

from __future__ import annotations

import codecs
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cttlstm_cli.atomic import atomic_path, write_bytes_durably
from cttlstm_cli.errors import CttlstmError

#: file extensions write_animation understands
ANIMATION_EXTENSIONS = (".gif", ".mp4")
BACKGROUND = 24
TEXT_COLOR = (235, 235, 235)
LABEL_HEIGHT = 16
GAP = 4
#: the smallest font size a title is shrunk to before it is cut short
MIN_FONT = 8


#: the codecs error handler of :func:`escape_undecodable`
ESCAPE_ERRORS = "cttlstm-escape"


def escape_undecodable(err: UnicodeError) -> tuple[str, int]:
    """A codecs error handler for text going to people: a byte of a file name that did not decode
    (``os.fsdecode`` keeps it as a lone surrogate U+DC80..U+DCFF) is shown as ``\\xNN``, the byte
    itself; any other character the output cannot encode as ``\\uNNNN``."""
    if not isinstance(err, UnicodeEncodeError):
        raise err
    bad = err.object[err.start : err.end]
    shown = "".join(
        f"\\x{ord(c) - 0xDC00:02x}" if 0xDC80 <= ord(c) <= 0xDCFF else c.encode("ascii", "backslashreplace").decode("ascii")
        for c in bad
    )
    return shown, err.end


codecs.register_error(ESCAPE_ERRORS, escape_undecodable)


def printable(text: str) -> str:
    """``text`` safe to print, draw or store as UTF-8: undecodable file-name bytes shown as ``\\xNN``
    (see :func:`escape_undecodable`); ordinary text is returned unchanged."""
    return text.encode("utf-8", ESCAPE_ERRORS).decode("utf-8")


def to_uint8_rgb(frames: np.ndarray, channels_first: bool = False) -> np.ndarray:
    """``[T, H, W, C]`` (or ``[T, C, H, W]`` with ``channels_first``) uint8 or float in [0, 1] → uint8 RGB ``[T, H, W, 3]``."""
    arr = np.asarray(frames)
    if channels_first:
        arr = arr.transpose(0, 2, 3, 1)
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.dtype != np.uint8:
        arr = (np.clip(arr.astype(np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    elif arr.shape[-1] == 4:
        arr = arr[..., :3]
    elif arr.shape[-1] != 3:
        raise ValueError(f"frames must have 1, 3 or 4 channels, got {arr.shape[-1]}")
    return np.ascontiguousarray(arr)


def upscale_factor(height: int, width: int, target: int = 128, max_factor: int = 8) -> int:
    """The integer zoom that brings the longer side to at least ``target`` pixels (1 for large frames)."""
    return int(max(1, min(max_factor, math.ceil(target / max(height, width)))))


def _font(size: int = 12):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no size argument
        return ImageFont.load_default()


def _fit(draw, text: str, font, width: int) -> tuple[str, object]:
    """``text`` and a font that fit ``width`` pixels: the given font when it fits (so labels that fit
    render as they always have), else smaller sizes down to MIN_FONT, else the text cut with an ellipsis."""
    room = width - 4

    def wide(t: str, f) -> bool:
        left, _, right, _ = draw.textbbox((0, 0), t, font=f)
        return right - left > room

    if not wide(text, font):
        return text, font
    size = int(getattr(font, "size", 0))
    for smaller in range(size - 1, MIN_FONT - 1, -1):  # only a FreeType font has sizes
        font = _font(smaller)
        if not wide(text, font):
            return text, font
    cut = text
    while len(cut) > 1 and wide(cut + "…", font):
        cut = cut[:-1]
    return cut.rstrip() + "…", font


def _label(width: int, text: str, font) -> np.ndarray:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, LABEL_HEIGHT), (BACKGROUND,) * 3)
    draw = ImageDraw.Draw(img)
    text, font = _fit(draw, printable(text), font, width)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    x = max(2, (width - (right - left)) // 2)
    y = max(0, (LABEL_HEIGHT - (bottom - top)) // 2 - top)
    draw.text((x, y), text, fill=TEXT_COLOR, font=font)
    return np.asarray(img)


def composed_shape(height: int, width: int, panels: int, scale: int | None = None) -> tuple[int, int]:
    """``(H, W)`` of :func:`compose`'s frames for ``panels`` panels of ``height`` x ``width`` at ``scale``
    (default :func:`upscale_factor`)."""
    s = scale or upscale_factor(height, width)
    return LABEL_HEIGHT + s * height + LABEL_HEIGHT, panels * s * width + (panels - 1) * GAP


def compose(
    panels: Sequence[np.ndarray],
    titles: Sequence[str],
    captions: Sequence[str],
    scale: int | None = None,
) -> np.ndarray:
    """Lay ``panels`` (each uint8 ``[T, H, W, 3]``, same shape) side by side, titled, with one caption per frame.

    Returns uint8 ``[T, LABEL + s·H + LABEL, n·s·W + (n−1)·GAP, 3]`` where ``s`` is ``scale``
    (default :func:`upscale_factor`).
    """
    if not panels:
        raise ValueError("no panels")
    t, h, w, _ = panels[0].shape
    if any(p.shape != panels[0].shape for p in panels):
        raise ValueError("panels differ in shape")
    if len(captions) != t or len(titles) != len(panels):
        raise ValueError("one title per panel and one caption per frame are needed")
    s = scale or upscale_factor(h, w)
    height, width = composed_shape(h, w, len(panels), s)
    font = _font()
    out = np.full((t, height, width, 3), BACKGROUND, dtype=np.uint8)
    for i, (panel, title) in enumerate(zip(panels, titles)):
        x0 = i * (s * w + GAP)
        big = panel.repeat(s, axis=1).repeat(s, axis=2) if s > 1 else panel
        out[:, LABEL_HEIGHT : LABEL_HEIGHT + s * h, x0 : x0 + s * w] = big
        out[:, :LABEL_HEIGHT, x0 : x0 + s * w] = _label(s * w, title, font)
    for k, caption in enumerate(captions):
        out[k, LABEL_HEIGHT + s * h :] = _label(width, caption, font)
    return out


def _pad_even(frames: np.ndarray) -> np.ndarray:
    """H.264 in yuv420p needs even dimensions: pad one background row/column where odd."""
    _, h, w, _ = frames.shape
    ph, pw = h % 2, w % 2
    if not (ph or pw):
        return frames
    return np.pad(frames, ((0, 0), (0, ph), (0, pw), (0, 0)), constant_values=BACKGROUND)


#: the fastest animation: a GIF's frame durations are whole milliseconds
MAX_FPS = 1000.0


def check_fps(fps: float) -> None:
    """Refuse, in one line, a frame rate no animation can have (zero, negative, NaN, infinite, over :data:`MAX_FPS`)."""
    if not (math.isfinite(fps) and 0 < fps <= MAX_FPS):
        raise CttlstmError(f"--fps must be a number above 0 and at most {MAX_FPS:g}, got {fps:g}")


def write_animation(path: str | Path, frames: np.ndarray, fps: float = 4.0) -> Path:
    """Write uint8 ``[T, H, W, 3]`` frames as a looping GIF or an H.264 MP4 (by ``path``'s extension), atomically."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in ANIMATION_EXTENSIONS:
        raise CttlstmError(f"--out must end in .gif or .mp4, got {path.name}")
    check_fps(fps)
    with atomic_path(path) as tmp:
        if suffix == ".gif":
            import imageio.v3 as iio

            # Encoded in memory: given a path, imageio's GIF writer retries a failed open (a read-only
            # folder) in its finalizer and prints that second failure as a traceback.
            write_bytes_durably(tmp, iio.imwrite("<bytes>", frames, extension=".gif", duration=1000.0 / fps, loop=0))
        else:
            import imageio.v2 as iio2

            write_bytes_durably(tmp, b"")  # ffmpeg reports a folder it cannot write to in many lines: fail here first
            iio2.mimwrite(tmp, list(_pad_even(frames)), format="FFMPEG", fps=fps, codec="libx264",
                          macro_block_size=1, pixelformat="yuv420p", quality=8)
    return path


__all__ = [
    "ANIMATION_EXTENSIONS", "ESCAPE_ERRORS", "compose", "composed_shape", "escape_undecodable", "printable", "to_uint8_rgb",
    "upscale_factor", "write_animation",
]
