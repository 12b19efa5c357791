"""folder and ssv2 prepare: mixed formats, gray/RGB, seeded splits, subsets and groups."""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from data_video_helpers import ramp_frames, write_video

from cttlstm_cli.data import ssv2
from cttlstm_cli.data.dataset import ClipDataset
from cttlstm_cli.data.folder import assign_splits, build_folder


@pytest.fixture(scope="module")
def user_folder(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("mine")
    write_video(src / "a.mp4", np.repeat(ramp_frames(6, 48, 64)[..., None], 3, axis=-1), codec="mpeg4")
    write_video(src / "sub" / "b.avi", ramp_frames(7, 48, 64))
    iio.imwrite(src / "c.gif", np.repeat(ramp_frames(5, 48, 64)[..., None], 3, axis=-1), loop=0)
    frames_dir = src / "clip_d"
    frames_dir.mkdir()
    for t, frame in enumerate(ramp_frames(4, 48, 64)):
        iio.imwrite(frames_dir / f"{t:03d}.png", frame)
    (src / "broken.mov").write_bytes(b"")
    (src / "notes.txt").write_text("hello")
    return src


def test_folder_prepare_mixed_inputs(user_folder: Path, tmp_path: Path) -> None:
    r = build_folder(user_folder, tmp_path / "o", size=(16, 20), channels=1, fractions=(1.0, 0.0, 0.0), workers=2, progress=False)
    m = r.manifest
    assert m["dataset"] == "folder" and m["frame_size"] == [16, 20] and m["channels"] == 1
    assert sorted(m["splits"]["train"]["sources"]) == ["a.mp4", "b.avi", "c.gif", "clip_d"]
    assert m["splits"]["train"]["frames"] == 6 + 7 + 5 + 4
    assert {s["source"]: s["reason"].split(" (")[0] for s in m["skipped"]} == {"broken.mov": "empty file", "notes.txt": "not a video file type"}
    ds = ClipDataset(tmp_path / "o", "train", 4, mode="sequential")
    values = sorted(round(float(ds[i][2, 0, 8, 10]) * 255) for i in range(len(ds)))
    # frame 2 of every ramp is 50: exact for the lossless ones (avi/ffv1, gif, png), +-3 for lossy mpeg4
    assert values.count(50) >= 3 and all(abs(v - 50) <= 3 for v in values)
    rgb = build_folder(user_folder, tmp_path / "rgb", size=(8, 8), channels=3, seed=1, workers=1, progress=False).manifest
    assert rgb["channels"] == 3 and sum(s["videos"] for s in rgb["splits"].values()) == 4


def test_folder_splits_are_seeded() -> None:
    a = assign_splits(50, (0.8, 0.1, 0.1), seed=0)
    assert a == assign_splits(50, (0.8, 0.1, 0.1), seed=0) and a != assign_splits(50, (0.8, 0.1, 0.1), seed=1)
    assert (a.count("train"), a.count("val"), a.count("test")) == (40, 5, 5)


def test_folder_errors(cli, tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "readme.md").write_text("x")
    r = cli("prepare", "folder", tmp_path / "src", "--out", tmp_path / "o")
    assert r.code == 2 and "no videos found" in r.err
    r = cli("prepare", "folder", tmp_path / "src", "--out", tmp_path / "o", "--split", "0.5,0.5,0.5")
    assert r.code == 2 and "sum to 1" in r.err
    r = cli("prepare", "folder", "--out", tmp_path / "o")
    assert r.code == 2 and "needs a SOURCE" in r.err


def test_ssv2_subset_groups_and_labels(tmp_path: Path, cli) -> None:
    src = tmp_path / "ssv2"
    templates = ["Dropping [something] into [something]", "Holding [something]", "Pushing [something] from left to right", "Spinning [something] so it continues spinning"]
    (src / "labels").mkdir(parents=True)
    (src / "labels" / ssv2.LABELS_JSON).write_text(json.dumps({t.replace("[", "").replace("]", ""): str(i) for i, t in enumerate(templates)}))
    train = [{"id": str(100 + i), "template": templates[i % 4], "label": "x"} for i in range(8)]
    val = [{"id": "200", "template": templates[1]}, {"id": "201", "template": templates[3]}, {"id": "999", "template": templates[0]}]
    (src / "labels" / ssv2.TRAIN_JSON).write_text(json.dumps(train))
    (src / "labels" / ssv2.VAL_JSON).write_text(json.dumps(val))
    for vid in [str(100 + i) for i in range(8)] + ["200", "201"]:
        write_video(src / "videos" / f"{vid}.webm", np.repeat(ramp_frames(4, 24, 32)[..., None], 3, axis=-1), codec="libvpx")
    r = cli("prepare", "ssv2", src, "--out", tmp_path / "o", "--subset", "41", "--size", "16", "-j", "1", "-q")
    assert r.code == 0, r.err
    m = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert len(m["label_names"]) == 41 and list(m["groups"]) == ["Dropping", "Holding", "MovingLR", "MovingRL", "Picking", "Poking", "Pouring", "Putting", "Showing", "Tearing"]
    assert m["channels"] == 3 and m["frame_size"] == [16, 16]
    # spinning is outside the subset: 6 of 8 training videos; 999.webm is listed but missing
    assert m["splits"]["train"]["videos"] + m["splits"]["val"]["videos"] == 6
    assert m["splits"]["test"]["sources"] == ["200.webm"] and m["skipped"][0]["source"] == "999.webm"
    holding = m["label_names"].index("Holding [something]")
    assert m["splits"]["test"]["labels"] == [holding] and holding in m["groups"]["Holding"]
    assert "Tearing [something] just a little bit" in m["subset_missing"]
    clip, label = ClipDataset(tmp_path / "o", "test", 3, mode="sequential", with_labels=True)[0]
    assert clip.shape == (3, 3, 16, 16) and label == holding
    full = ssv2.build_ssv2(src, tmp_path / "full", size=(8, 8), channels=1, val_fraction=0.0, workers=1, progress=False).manifest
    assert full["splits"]["train"]["labels"] == [i % 4 for i in range(8)] and full["label_names"][3].startswith("Spinning")
    custom = tmp_path / "mine.json"
    custom.write_text(json.dumps({"Spin": ["Spinning [something] so it continues spinning"]}))
    sub = ssv2.build_ssv2(src, tmp_path / "sub", subset=custom, size=(8, 8), channels=1, workers=1, progress=False).manifest
    assert sub["groups"] == {"Spin": [0]} and sub["splits"]["test"]["labels"] == [0]


def test_ssv2_video_in_both_label_lists_goes_to_one_split(tmp_path: Path) -> None:
    # a video the training and the validation list both name would be trained on and evaluated on
    src = tmp_path / "ssv2"
    (src / "labels").mkdir(parents=True)
    (src / "labels" / ssv2.LABELS_JSON).write_text(json.dumps({"Holding something": "0"}))
    (src / "labels" / ssv2.TRAIN_JSON).write_text(json.dumps([{"id": "1", "template": "Holding [something]"}, {"id": "2", "template": "Holding [something]"}]))
    (src / "labels" / ssv2.VAL_JSON).write_text(json.dumps([{"id": "2", "template": "Holding [something]"}, {"id": "3", "template": "Holding [something]"}]))
    for vid in ("1", "2", "3"):
        write_video(src / "videos" / f"{vid}.webm", np.repeat(ramp_frames(3, 16, 16)[..., None], 3, axis=-1), codec="libvpx")
    m = ssv2.build_ssv2(src, tmp_path / "o", size=(8, 8), channels=1, val_fraction=0.0, workers=1, progress=False).manifest
    assert m["splits"]["train"]["sources"] == ["1.webm", "2.webm"] and m["splits"]["test"]["sources"] == ["3.webm"]
    assert m["skipped"] == [{"source": "2.webm", "reason": f"listed again in {ssv2.VAL_JSON} (kept as listed in {ssv2.TRAIN_JSON})"}]
    assert m["provenance"]["source_fingerprint"]["files"] == 6  # 3 videos and 3 label files
