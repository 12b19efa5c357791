"""``cttlstm predict`` on clips written here in several formats, several models in one grid, test-set clips,
and its broken inputs."""

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
from cttlstm_cli.checkpoint import load_model, read_checkpoint, save_checkpoint, stored_recipe
from cttlstm_cli.models.registry import create_model
from cttlstm_cli.recipe import recipe_from_dict
from cttlstm_cli.rendering import GAP, LABEL_HEIGHT, _font, _label
from conftest import one_error_line

CONTEXT, STEPS, SIZE, SCALE = 5, 4, 32, 4  # smoke recipe: 5 context frames of 32x32, zoomed x4


@pytest.fixture(scope="module")
def frames(trained_smoke) -> np.ndarray:
    """12 real Moving-MNIST frames, uint8 [12, 32, 32]."""
    ds = ClipDataset(trained_smoke.data, "test", clip_frames=12, mode="sequential")
    return np.asarray(ds.read(0, 0, 12))[..., 0]


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


@pytest.mark.slow
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
        one_error_line(result)
        assert mention in result.err
        assert not out.exists() and not out.with_suffix(".npy").exists()
    one_error_line(cli("predict", good, "--steps", 3, "--checkpoint", trained_smoke.run, "--out", tmp_path / "x.png"))
    monkeypatch.chdir(tmp_path)  # no runs/ here
    result = cli("predict", good, "--steps", 3)
    one_error_line(result)
    assert "--checkpoint" in result.err
    assert not list(tmp_path.glob("*.gif"))


# ---- several models in one grid -----------------------------------------------------------------------------


def _other_checkpoint(trained_smoke, folder: Path, seed: int, **changes: dict) -> Path:
    """A checkpoint ``folder/best.pt`` beside the smoke run: its recipe with ``changes`` per section
    (e.g. ``model={"cell": "convlstm"}``), and freshly initialised weights (seeded)."""
    raw = stored_recipe(read_checkpoint(trained_smoke.best)["recipe"], "smoke").to_dict()
    for section, values in changes.items():
        raw[section].update(values)
    recipe = recipe_from_dict(raw, "test")
    torch.manual_seed(seed)
    model = create_model(recipe.model, recipe.data.channels)
    folder.mkdir(parents=True, exist_ok=True)
    save_checkpoint(folder / "best.pt", model, recipe)
    return folder


@pytest.fixture(scope="module")
def others(trained_smoke, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Run directories of three more models for the smoke data: another Conv-TT-LSTM (same name as the
    smoke run's), a ConvLSTM, and a Conv-TT-LSTM for 16x16 frames (the mismatch)."""
    root = tmp_path_factory.mktemp("other-models")
    return {
        "ctt": _other_checkpoint(trained_smoke, root / "other", 1),
        "lstm": _other_checkpoint(trained_smoke, root / "lstm", 2, model={"cell": "convlstm"}),
        "small": _other_checkpoint(trained_smoke, root / "small", 3, data={"frame_size": [16, 16]}),
    }


def _panel(gif: np.ndarray, index: int, title: bool = False) -> np.ndarray:
    """Panel ``index`` of every frame of a grid: its image, or with ``title`` its title strip."""
    x0 = index * (SCALE * SIZE + GAP)
    rows = slice(0, LABEL_HEIGHT) if title else slice(LABEL_HEIGHT, LABEL_HEIGHT + SCALE * SIZE)
    return gif[:, rows, x0 : x0 + SCALE * SIZE]


def test_several_models_one_grid(cli, trained_smoke, others, frames, tmp_path: Path) -> None:
    clip = tmp_path / "clip.npy"
    np.save(clip, frames)
    runs = [trained_smoke.run, others["ctt"], others["lstm"]]
    labels = ["Conv-TT-LSTM (run)", "Conv-TT-LSTM (other)", "ConvLSTM"]  # equal names get their run directory's
    singles = []
    for i, run in enumerate(runs):  # each model alone: the reference for its panels
        out = tmp_path / f"single-{i}.gif"
        result = cli("predict", clip, "--steps", STEPS, "--checkpoint", run, "--out", out, "--save-npy")
        assert result.code == 0, result.err
        singles.append((_gif_frames(out), np.load(out.with_suffix(".npy"))))
    out = tmp_path / "grid.gif"
    args = [a for run in runs for a in ("--checkpoint", run)]
    result = cli("predict", clip, "--steps", STEPS, *args, "--out", out, "--save-npy")
    assert result.code == 0, result.err
    assert "panels: ground truth | " + " | ".join(labels + [f"|error| {label}" for label in labels]) in result.out
    grid = _gif_frames(out)
    assert grid.shape[:3] == (CONTEXT + STEPS, *_expected_shape(1 + 2 * len(runs)))
    # ground truth, then each model in the order given, then each model's |error|: pixel for pixel its own grid's
    assert np.array_equal(_panel(grid, 0), _panel(singles[0][0], 0))
    for i, (single, _) in enumerate(singles):
        assert np.array_equal(_panel(grid, 1 + i), _panel(single, 1)), f"panel of model {i}"
        assert np.array_equal(_panel(grid, 1 + len(runs) + i), _panel(single, 2)), f"|error| panel of model {i}"
    assert not np.array_equal(_panel(grid, 1)[CONTEXT:], _panel(grid, 2)[CONTEXT:])  # the models differ
    # every panel is titled with its label
    titles = ["ground truth", *labels, *(f"|error| {label}" for label in labels)]
    for i, title in enumerate(titles):
        assert np.array_equal(_panel(grid, i, title=True)[0], _label(SCALE * SIZE, title, _font())), title
    # --save-npy: one .npz, one array per model named by its label, in the order given, equal to its own .npy
    assert not out.with_suffix(".npy").exists()
    with np.load(out.with_suffix(".npz")) as saved:
        assert saved.files == labels
        for label, (_, raw) in zip(labels, singles):
            assert saved[label].dtype == np.float32 and np.array_equal(saved[label], raw)
    model = load_model(others["lstm"])
    with torch.no_grad():
        expected = model(torch.from_numpy(frames[:CONTEXT]).float().div(255.0)[None, :, None], future_frames=STEPS)[0]
    np.testing.assert_allclose(singles[2][1], expected.numpy(), rtol=0, atol=1e-6)


def test_several_models_without_truth_or_error_panels(cli, trained_smoke, others, frames, tmp_path: Path) -> None:
    np.save(tmp_path / "short.npy", frames[:6])  # too short for ground truth: one panel per model
    out = tmp_path / "short.gif"
    two = ("-k", trained_smoke.run, "-k", others["lstm"])
    result = cli("predict", tmp_path / "short.npy", "--steps", 2, *two, "--out", out)
    assert result.code == 0, result.err
    assert _gif_frames(out).shape[1:3] == _expected_shape(2)
    np.save(tmp_path / "clip.npy", frames)
    out = tmp_path / "noerr.gif"
    result = cli("predict", tmp_path / "clip.npy", "--steps", 2, *two, "--out", out, "--no-error-panel")
    assert result.code == 0, result.err
    assert _gif_frames(out).shape[1:3] == _expected_shape(3)


def test_mismatched_models_refused(cli, trained_smoke, others, frames, tmp_path: Path) -> None:
    clip = tmp_path / "clip.npy"
    np.save(clip, frames)
    out = tmp_path / "grid.gif"
    two = ("-k", trained_smoke.run, "-k", others["small"])
    result = cli("predict", clip, "--steps", 3, *two, "--out", out, "--save-npy")
    one_error_line(result)
    err = " ".join(result.err.split())  # the console may wrap long paths
    assert str(others["small"] / "best.pt") in err and str(trained_smoke.best) in err
    assert "16x16" in err and "32x32" in err
    assert not list(tmp_path.glob("grid*"))


def test_test_clip_from_the_prepared_split(cli, trained_smoke, others, tmp_path: Path) -> None:
    ds = ClipDataset(trained_smoke.data, "test", clip_frames=CONTEXT + STEPS, mode="sequential")  # as evaluate cuts it
    video, start = ds.window(1)
    out = tmp_path / "test1.gif"
    result = cli("predict", "--test-clip", 1, "--steps", STEPS, "-k", trained_smoke.run, "--out", out, "--save-npy")
    assert result.code == 0, result.err
    assert "test clip 1 of" in result.out
    model = load_model(trained_smoke.best)
    with torch.no_grad():
        expected = model(ds[1][None, :CONTEXT], future_frames=STEPS)[0].numpy()
    np.testing.assert_allclose(np.load(out.with_suffix(".npy")), expected, rtol=0, atol=1e-6)
    gif = _gif_frames(out)
    assert gif.shape[:3] == (CONTEXT + STEPS, *_expected_shape(3))
    truth = np.asarray(ds.read(video, start, CONTEXT + STEPS))[..., 0].repeat(SCALE, 1).repeat(SCALE, 2)
    assert np.array_equal(_panel(gif, 0)[..., 0], truth)
    # several models on a test clip: one .npz
    result = cli("predict", "--test-clip", 0, "--steps", 2, "-k", trained_smoke.run, "-k", others["lstm"],
                 "--out", tmp_path / "t0.gif", "--save-npy")
    assert result.code == 0, result.err
    with np.load(tmp_path / "t0.npz") as saved:
        assert saved.files == ["Conv-TT-LSTM", "ConvLSTM"]


def test_test_clip_errors(cli, trained_smoke, frames, tmp_path: Path) -> None:
    np.save(tmp_path / "clip.npy", frames)
    out = tmp_path / "x.gif"
    cases = [
        (("--test-clip", 0, tmp_path / "clip.npy"), "not both"),
        ((), "--test-clip"),
        (("--test-clip", 100000), "out of range"),
        (("--test-clip", 0, "--start", 1), "--start"),
        (("--test-clip", 0, "--data", tmp_path / "nowhere"), "nowhere"),
        ((tmp_path / "clip.npy", "--data", trained_smoke.data), "--data"),
    ]
    for extra, mention in cases:
        result = cli("predict", *extra, "--steps", 3, "-k", trained_smoke.run, "--out", out, "--save-npy")
        one_error_line(result)
        assert mention in result.err
        assert not out.exists() and not out.with_suffix(".npy").exists()


def test_never_writes_over_an_input_and_says_when_it_replaces(cli, trained_smoke, frames, tmp_path: Path) -> None:
    gif, npy, folder = tmp_path / "clip.gif", tmp_path / "clip.npy", tmp_path / "frames"
    iio.imwrite(gif, frames, extension=".gif")
    np.save(npy, frames)
    folder.mkdir()
    for i, f in enumerate(frames):
        Image.fromarray(f).save(folder / f"{i:04d}.png")
    link = tmp_path / "link.gif"
    link.symlink_to(gif)
    ckpt = tmp_path / "model.gif"  # a checkpoint under an animation's name is an input too
    shutil.copy(trained_smoke.best, ckpt)
    inputs = {p: p.read_bytes() for p in (gif, npy, link, ckpt)} | {p: p.read_bytes() for p in folder.iterdir()}
    cases = [
        (gif, gif, [], "is the input"),
        (gif, link, [], "is the input"),                                  # the same file by another name
        (npy, tmp_path / "clip.gif", ["--save-npy"], "its --save-npy file"),  # the raw file would replace the .npy clip
        (folder, folder / "pred.gif", [], "is inside the input"),          # a new frame in the clip's folder
        (npy, ckpt, [], "is the input"),
    ]
    for clip, out, extra, words in cases:
        checkpoint = ckpt if out == ckpt else trained_smoke.best
        line = one_error_line(cli("predict", clip, "--steps", STEPS, "--checkpoint", checkpoint, "--out", out, *extra))
        assert words in line and "choose another --out" in line, line
    assert {p: p.read_bytes() for p in inputs} == inputs and sorted(folder.iterdir()) == sorted(p for p in inputs if p.parent == folder)

    out = tmp_path / "pred.gif"
    out.write_bytes(b"an older prediction")
    result = cli("predict", npy, "--steps", STEPS, "--checkpoint", trained_smoke.best, "--out", out)
    assert result.code == 0, result.err
    assert result.out.splitlines()[-1] == f"replaced {out}" and _gif_frames(out).shape[0] == CONTEXT + STEPS
