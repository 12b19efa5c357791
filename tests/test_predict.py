"""``cttlstm predict`` on clips written here in several formats, and its broken inputs."""

from __future__ import annotations

import shutil
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from data_video_helpers import write_video
from PIL import Image

from cttlstm_cli.data.dataset import ClipDataset
from cttlstm_cli.models.checkpoint import load_model
from cttlstm_cli.rendering import GAP, LABEL_HEIGHT

CONTEXT, STEPS, SIZE, SCALE = 5, 4, 32, 4  # smoke recipe: 5 context frames of 32x32, zoomed x4


@pytest.fixture(scope="module")
def frames(trained_smoke) -> np.ndarray:
    """12 real Moving-MNIST frames, uint8 [12, 32, 32]."""
    ds = ClipDataset(trained_smoke.data, "test", clip_frames=12, mode="sequential")
    return np.asarray(ds.read(0, 0, 12))[..., 0]


def _assert_one_error_line(result) -> None:
    assert result.code == 2
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.err
    assert "Traceback" not in result.err + result.out


def _gif_frames(path: Path) -> np.ndarray:
    return iio.imread(path, index=None)


def _expected_shape(panels: int) -> tuple[int, int]:
    return 2 * LABEL_HEIGHT + SCALE * SIZE, panels * SCALE * SIZE + (panels - 1) * GAP


def test_npy_clip_gif_and_raw_predictions(cli, trained_smoke, frames, tmp_path: Path) -> None:
    clip = tmp_path / "clip.npy"
    np.save(clip, frames)
    out = tmp_path / "pred.gif"
    result = cli("predict", clip, "--steps", STEPS, "--checkpoint", trained_smoke.run, "--out", out, "--save-npy")
    assert result.code == 0, result.err
    gif = _gif_frames(out)
    assert gif.shape[0] == CONTEXT + STEPS
    assert gif.shape[1:3] == _expected_shape(3)  # ground truth | prediction | |error|
    raw = np.load(tmp_path / "pred.npy")
    assert raw.shape == (STEPS, 1, SIZE, SIZE) and raw.dtype == np.float32
    model = load_model(trained_smoke.best)
    ctx = torch.from_numpy(frames[:CONTEXT]).float().div(255.0)[None, :, None]
    with torch.no_grad():
        expected = model(ctx, future_frames=STEPS)[0].numpy()
    np.testing.assert_allclose(raw, expected, rtol=0, atol=1e-6)
    # the first frame of the animation is the context, shown identically in the truth and prediction panels
    first = gif[0, LABEL_HEIGHT : LABEL_HEIGHT + SCALE * SIZE]
    assert np.array_equal(first[:, : SCALE * SIZE], first[:, SCALE * SIZE + GAP : 2 * SCALE * SIZE + GAP])


def test_png_folder_equals_npy(cli, trained_smoke, frames, tmp_path: Path) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, f in enumerate(frames):
        Image.fromarray(f).save(folder / f"{i:04d}.png")
    np.save(tmp_path / "clip.npy", frames)
    for name, clip in (("a", folder), ("b", tmp_path / "clip.npy")):
        result = cli("predict", clip, "--steps", STEPS, "--checkpoint", trained_smoke.best, "--out", tmp_path / f"{name}.gif", "--save-npy")
        assert result.code == 0, result.err
    assert np.array_equal(np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy"))


def test_mp4_and_gif_clips_resized(cli, trained_smoke, frames, tmp_path: Path) -> None:
    big = np.repeat(np.repeat(frames, 2, axis=1), 2, axis=2)  # 64x64: predict converts to 32x32
    mp4 = write_video(tmp_path / "clip.mp4", np.repeat(big[..., None], 3, axis=-1), codec="libx264")
    gif = tmp_path / "clip.gif"
    iio.imwrite(gif, big, extension=".gif", duration=100, loop=0)
    for clip in (mp4, gif):
        out = tmp_path / f"{clip.stem}-{clip.suffix[1:]}.gif"
        result = cli("predict", clip, "--steps", STEPS, "--checkpoint", trained_smoke.run, "--out", out, "--save-npy")
        assert result.code == 0, result.err
        assert _gif_frames(out).shape[:3] == (CONTEXT + STEPS, *_expected_shape(3))
        assert np.load(out.with_suffix(".npy")).shape == (STEPS, 1, SIZE, SIZE)


def test_short_clip_uses_last_frames_and_mp4_output(cli, trained_smoke, frames, tmp_path: Path) -> None:
    clip = tmp_path / "short.npy"
    np.save(clip, frames[:7])  # 7 < 5 + 4: no ground truth; context = frames 3..7
    out = tmp_path / "pred.mp4"
    result = cli("predict", clip, "--steps", STEPS, "--checkpoint", trained_smoke.run, "--out", out, "--save-npy")
    assert result.code == 0, result.err
    video = iio.imread(out, plugin="pyav")
    assert video.shape[0] == CONTEXT + STEPS
    h, w = _expected_shape(1)
    assert video.shape[1:3] == (h + h % 2, w + w % 2)
    model = load_model(trained_smoke.best)
    with torch.no_grad():
        expected = model(torch.from_numpy(frames[2:7]).float().div(255.0)[None, :, None], future_frames=STEPS)[0].numpy()
    np.testing.assert_allclose(np.load(tmp_path / "pred.npy"), expected, atol=1e-6)


def test_default_checkpoint_is_newest_run(cli, trained_smoke, frames, tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "runs" / "a").mkdir(parents=True)
    shutil.copy(trained_smoke.best, tmp_path / "runs" / "a" / "best.pt")
    np.save(tmp_path / "clip.npy", frames)
    monkeypatch.chdir(tmp_path)
    result = cli("predict", "clip.npy", "--steps", 2)
    assert result.code == 0, result.err
    assert _gif_frames(tmp_path / "pred.gif").shape[0] == CONTEXT + 2


def test_broken_inputs_one_line_no_output(cli, trained_smoke, frames, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "out.gif"
    not_video = tmp_path / "notes.mp4"
    not_video.write_text("this is not a video\n" * 20)
    short = tmp_path / "short.npy"
    np.save(short, frames[:3])
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x80\x02garbage" * 50)
    good = tmp_path / "clip.npy"
    np.save(good, frames)
    cases = [
        (not_video, trained_smoke.run, "notes.mp4"),
        (short, trained_smoke.run, "context"),
        (good, tmp_path / "missing.pt", "missing.pt"),
        (good, corrupt, "corrupt.pt"),
        (tmp_path / "nope.mp4", trained_smoke.run, "nope.mp4"),
    ]
    for clip, ckpt, mention in cases:
        result = cli("predict", clip, "--steps", 3, "--checkpoint", ckpt, "--out", out, "--save-npy")
        _assert_one_error_line(result)
        assert mention in result.err
        assert not out.exists() and not out.with_suffix(".npy").exists()
    _assert_one_error_line(cli("predict", good, "--steps", 3, "--checkpoint", trained_smoke.run, "--out", tmp_path / "x.png"))
    monkeypatch.chdir(tmp_path)  # no runs/ here
    result = cli("predict", good, "--steps", 3)
    _assert_one_error_line(result)
    assert "--checkpoint" in result.err
    assert not list(tmp_path.glob("*.gif"))
