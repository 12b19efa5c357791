"""Damaged ``.npy`` clips, generated: ``predict`` refuses every one in one line, writes nothing and leaves
the clip as it was; ``prepare folder`` skips the same files, each with its reason.

The damage (hypothesis): a shape that is no clip (too few or too many axes, a channel count that is no
image's, an axis of length zero), values that are no pixels (complex, text, dates, records), NaN or
infinity among float pixels, fewer frames than the model's context, and files cut short or of bytes that
are no ``.npy`` at all.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import assert_unchanged, file_snapshot, one_error_line

SETTINGS = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
CONTEXT = 5  # the smoke recipe's input frames
SIZE = st.integers(min_value=1, max_value=12)


@st.composite
def wrong_shapes(draw: st.DrawFn) -> np.ndarray:
    kind = draw(st.sampled_from(["axes", "channels", "empty axis"]))
    if kind == "axes":
        shape = draw(st.sampled_from([(), (8,), (8, 8), (2, 8, 8, 1, 1), (2, 2, 8, 8, 1, 1)]))
    elif kind == "channels":
        shape = (8, draw(SIZE), draw(SIZE), draw(st.sampled_from([0, 2, 5, 16])))
    else:
        shape = [8, draw(SIZE), draw(SIZE)] + draw(st.sampled_from([[], [1], [3]]))
        shape[draw(st.integers(min_value=0, max_value=2))] = 0
    return np.zeros(tuple(shape), dtype=np.uint8)


@st.composite
def not_pixels(draw: st.DrawFn) -> np.ndarray:
    shape = (8, draw(SIZE), draw(SIZE))
    dtype = draw(st.sampled_from(["complex64", "complex128", "<U3", "S2", "datetime64[s]", "timedelta64[ms]", [("a", "u1"), ("b", "f4")]]))
    return np.zeros(shape, dtype=dtype)


@st.composite
def not_finite(draw: st.DrawFn) -> np.ndarray:
    shape = (8, draw(SIZE), draw(SIZE))
    arr = np.full(shape, 0.5, dtype=draw(st.sampled_from(["float16", "float32", "float64", ">f4"])))
    where = tuple(draw(st.integers(min_value=0, max_value=n - 1)) for n in shape)
    arr[where] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    return arr


@st.composite
def too_short(draw: st.DrawFn) -> np.ndarray:
    return np.zeros((draw(st.integers(min_value=1, max_value=CONTEXT - 1)), 32, 32), dtype=np.uint8)


def _file_bytes(arr: np.ndarray) -> bytes:
    with tempfile.TemporaryFile() as f:
        np.save(f, arr)
        f.seek(0)
        return f.read()


@st.composite
def broken_files(draw: st.DrawFn) -> bytes:
    whole = _file_bytes(np.zeros((8, 16, 16), dtype=np.uint8))
    kind = draw(st.sampled_from(["cut", "noise", "header"]))
    if kind == "cut":
        return whole[: draw(st.integers(min_value=0, max_value=len(whole) - 1))]
    if kind == "noise":
        return draw(st.binary(min_size=0, max_size=300))
    at = draw(st.integers(min_value=10, max_value=60))  # inside the header's dict
    return whole[:at] + draw(st.binary(min_size=1, max_size=4)) + whole[at + 1 :]


DAMAGED = st.one_of(wrong_shapes().map(_file_bytes), not_pixels().map(_file_bytes), not_finite().map(_file_bytes),
                    too_short().map(_file_bytes), broken_files())  # fmt: skip


@pytest.mark.slow
@SETTINGS
@given(DAMAGED)
def test_predict_refuses_every_damaged_clip_in_one_line(cli, trained_smoke, tmp_path: Path, content: bytes) -> None:
    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    clip, out = folder / "clip.npy", folder / "p.gif"
    clip.write_bytes(content)
    before = file_snapshot(folder)
    line = one_error_line(cli("predict", clip, "-k", trained_smoke.best, "--steps", "2", "--out", out))
    assert "clip.npy" in line or "context" in line or "frames" in line, line
    assert not out.exists()
    assert_unchanged(before)


@pytest.mark.parametrize(("arr", "message"), [
    (np.zeros((8, 4, 4), dtype=np.complex64), ".npy holds complex64 values; frames are integers (0-255), floats (0-1) or booleans"),
    (np.full((8, 4, 4), np.nan, dtype=np.float32), ".npy holds NaN or infinite values; frames are floats from 0 to 1"),
])
def test_values_that_are_no_pixels_are_named(cli, trained_smoke, tmp_path: Path, arr: np.ndarray, message: str) -> None:
    """These used to be accepted: complex parts dropped, NaN cast to an arbitrary byte."""
    np.save(tmp_path / "clip.npy", arr)
    line = one_error_line(cli("predict", tmp_path / "clip.npy", "-k", trained_smoke.best, "--steps", "2", "--out", tmp_path / "p.gif"))
    assert line.endswith(message), line


def test_boolean_clips_are_black_and_white(tmp_path: Path) -> None:
    from cttlstm_cli.data.video import read_video

    arr = np.zeros((6, 4, 4), dtype=bool)
    arr[:, 1, 2] = True
    np.save(tmp_path / "mask.npy", arr)
    frames = read_video(tmp_path / "mask.npy")
    assert frames.dtype == np.uint8 and frames.shape == (6, 4, 4, 1)
    assert set(np.unique(frames)) == {0, 255} and (frames[:, 1, 2] == 255).all()


def test_prepare_folder_skips_damaged_arrays_with_their_reason(cli, tmp_path: Path) -> None:
    src = tmp_path / "clips"
    src.mkdir()
    for i in range(4):
        np.save(src / f"good{i}.npy", np.full((6, 8, 8), 40 * i, dtype=np.uint8))
    np.save(src / "complex.npy", np.zeros((6, 8, 8), dtype=np.complex64))
    np.save(src / "nan.npy", np.full((6, 8, 8), np.nan, dtype=np.float32))
    out = tmp_path / "data"
    result = cli("prepare", "folder", src, "--out", out, "--size", "8", "--gray", "--split", "0.5,0.25,0.25", "-j", "1", "-q")
    assert result.code == 0, result.err
    manifest = json.loads((out / "manifest.json").read_text())
    assert sum(manifest["splits"][s]["videos"] for s in ("train", "val", "test")) == 4
    skipped = json.dumps(manifest)
    assert "complex64 values" in skipped and "NaN or infinite values" in skipped, skipped[:2000]
