"""KTH prepare on tiny lossless AVIs with real KTH names: split by person, protocols, skips, zips."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from data_video_helpers import ramp_frames, write_video

from cttlstm_cli.data import kth
from cttlstm_cli.data.dataset import ClipDataset
from cttlstm_cli.data.video import VideoError, read_video


@pytest.fixture(scope="module")
def kth_source(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("kth")
    frames = ramp_frames(12)
    frames[:, :, :20] = 255  # a border the paper protocol's 120x120 center crop removes
    frames[:, :, -20:] = 0
    for person, action, d in [(1, "boxing", 1), (1, "walking", 2), (15, "handwaving", 3), (17, "running", 4), (25, "jogging", 1)]:
        write_video(src / action / f"person{person:02d}_{action}_d{d}_uncomp.avi", frames)
    # two more videos inside an action archive, as KTH distributes them
    tmp = write_video(src / "tmp.avi", frames)
    with zipfile.ZipFile(src / "handclapping.zip", "w") as z:
        z.write(tmp, "person02_handclapping_d1_uncomp.avi")
        z.write(tmp, "person20_handclapping_d2_uncomp.avi")
    tmp.unlink()
    # broken files: empty, not a video, truncated, and a name that is not KTH's
    (src / "boxing" / "person03_boxing_d1_uncomp.avi").write_bytes(b"")
    (src / "boxing" / "person04_boxing_d1_uncomp.avi").write_text("this is not a video\n" * 50)
    good = write_video(src / "x.avi", ramp_frames(40)).read_bytes()
    (src / "x.avi").unlink()
    (src / "boxing" / "person05_boxing_d1_uncomp.avi").write_bytes(good[: len(good) // 2])
    write_video(src / "holiday.avi", ramp_frames(3))
    (src / "00sequences.txt").write_text(
        "person01_boxing_d1\t\tframes\t1-5, 7-12\n\nperson17_running_d4\t\tframes\t2-11\n"
    )
    return src


def _video(root: Path, shard: str, k: int) -> tuple[np.ndarray, dict]:
    with h5py.File(root / shard, "r") as f:
        ds = f[f"videos/{k:06d}"]
        return ds[()], dict(ds.attrs)


def test_prepare_kth_openstl(kth_source: Path, tmp_path: Path, cli) -> None:
    out = tmp_path / "kth"
    r = cli("prepare", "kth", kth_source, "--out", out, "--size", "32", "-j", "2", "-q")
    assert r.code == 0, r.err
    m = json.loads((out / "manifest.json").read_text())
    assert m["dataset"] == "kth" and m["frame_size"] == [32, 32] and m["channels"] == 1
    assert m["protocol"] == "openstl" and m["provenance"]["protocol"] == "openstl"
    assert m["label_names"] == list(kth.ACTIONS)
    s = m["splits"]
    assert s["train"]["sources"] == ["person01_boxing_d1_uncomp.avi", "person01_walking_d2_uncomp.avi", "person02_handclapping_d1_uncomp.avi"]
    assert s["val"]["sources"] == ["person15_handwaving_d3_uncomp.avi"]
    assert s["test"]["sources"] == ["person17_running_d4_uncomp.avi", "person20_handclapping_d2_uncomp.avi", "person25_jogging_d1_uncomp.avi"]
    assert s["train"]["labels"] == [0, 5, 1] and s["test"]["labels"] == [4, 1, 3]
    assert s["train"]["frames"] == 36 and m["persons"]["test"] == [17, 20, 25]
    reasons = {Path(x["source"]).name: x["reason"] for x in m["skipped"]}
    assert set(reasons) == {"person03_boxing_d1_uncomp.avi", "person04_boxing_d1_uncomp.avi", "person05_boxing_d1_uncomp.avi", "holiday.avi"}
    assert "empty" in reasons["person03_boxing_d1_uncomp.avi"]
    assert "not a readable video" in reasons["person04_boxing_d1_uncomp.avi"]
    assert "truncated" in reasons["person05_boxing_d1_uncomp.avi"]
    assert "not a KTH file name" in reasons["holiday.avi"]
    assert "skipped 4 file(s)" in r.err
    frames, attrs = _video(out, s["train"]["shards"][0], 0)
    assert frames.shape == (12, 32, 32, 1)
    # openstl resizes the whole 160x120 frame: the white/black borders survive at the edges
    assert frames[3, 16, 16, 0] == 70 and frames[3, 16, 0, 0] > 200 and frames[3, 16, -1, 0] < 20
    assert attrs["segments"].tolist() == [[0, 5], [6, 12]] and attrs["label"] == 0
    ds = ClipDataset(out, "train", 5, mode="sequential")
    assert [ds.window(i) for i in range(len(ds))][:3] == [(0, 0), (0, 6), (1, 0)]  # clips stay inside segments


def test_prepare_kth_paper_protocol_crops(kth_source: Path, tmp_path: Path) -> None:
    result = kth.build_kth(kth_source, tmp_path / "p", protocol="paper", size=(24, 24), val_persons=[], workers=1, progress=False)
    m = result.manifest
    assert m["splits"]["val"]["videos"] == 0 and m["splits"]["train"]["videos"] == 4  # person 15 back in train
    frames, _ = _video(tmp_path / "p", m["splits"]["train"]["shards"][0], 0)
    assert frames.shape == (12, 24, 24, 1)
    assert np.all(frames[4] == 90)  # the 120x120 center crop holds only the ramp value


def test_kth_errors(tmp_path: Path, cli) -> None:
    r = cli("prepare", "kth", tmp_path / "nowhere", "--out", tmp_path / "o")
    assert r.code == 2 and "SOURCE not found" in r.err and r.err.count("\n") == 1
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no videos here")
    r = cli("prepare", "kth", tmp_path / "empty", "--out", tmp_path / "o")
    assert r.code == 2 and "no KTH videos" in r.err
    assert not (tmp_path / "o").exists()
    r = cli("prepare", "kth", tmp_path / "empty", "--out", tmp_path / "o", "--protocol", "mine")
    assert r.code == 2 and "--protocol" in r.err


def test_parse_sequences_and_names() -> None:
    text = "person01_boxing_d1\t\tframes\t1-95, 96-185, 186-245\nbad line\nperson13_handclapping_d3  frames 10 - 20\n"
    assert kth.parse_sequences(text) == {"person01_boxing_d1": [[0, 95], [95, 185], [185, 245]], "person13_handclapping_d3": [[9, 20]]}
    assert kth.parse_name("person07_jogging_d4_uncomp.avi") == (7, "jogging", 4)
    assert kth.parse_name("person07_dancing_d4_uncomp.avi") is None
    assert [kth.split_of(p, [15, 16]) for p in (1, 15, 16, 17, 25)] == ["train", "val", "val", "test", "test"]


def test_read_video_public_api(tmp_path: Path) -> None:
    rgb = np.zeros((5, 40, 60, 3), dtype=np.uint8)
    rgb[..., 0] = 200  # pure red
    path = write_video(tmp_path / "red.avi", rgb)
    v = read_video(path)
    assert v.shape == (5, 40, 60, 3) and abs(int(v[0, 10, 10, 0]) - 200) <= 2
    g = read_video(path, size=(20, 30), channels=1, max_frames=3)
    assert g.shape == (3, 20, 30, 1) and abs(int(g[0, 5, 5, 0]) - round(0.299 * 200)) <= 2
    np.save(tmp_path / "clip.npy", np.full((4, 8, 8), 0.5, dtype=np.float32))
    assert read_video(tmp_path / "clip.npy").tolist()[0][0][0] == [128]
    with pytest.raises(VideoError, match="no such file"):
        read_video(tmp_path / "missing.mp4")


def test_openstl_protocol_evaluation_windows(kth_source: Path, tmp_path: Path, cli) -> None:
    """OpenSTL's KTH evaluation clips: non-overlapping, but every 3 frames for jogging and running."""
    out = tmp_path / "kth"
    assert cli("prepare", "kth", kth_source, "--out", out, "--size", "32", "-q").code == 0
    ds = ClipDataset(out, "test", clip_frames=4, mode="sequential")
    starts: dict[int, list[int]] = {}
    for i in range(len(ds)):
        video, start = ds.window(i)
        starts.setdefault(video, []).append(start)
    # test split: running (frames 2-11 of the sequence file -> stored 1..11), handclapping, jogging; 12 frames each
    assert starts[1] == [0, 4, 8]  # handclapping: non-overlapping
    assert starts[2] == [0, 3, 6]  # jogging: every 3 frames
    assert starts[0] == [1, 4, 7]  # running, inside its sequence-file segment
    # An explicit stride overrides the protocol's.
    explicit = ClipDataset(out, "test", clip_frames=4, mode="sequential", stride=4)
    assert sorted(s for v, s in map(explicit.window, range(len(explicit))) if v == 2) == [0, 4, 8]


def test_the_pool_spawns_its_workers_once_this_process_has_used_pyav(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker forked after PyAV ran in the parent inherited ffmpeg's thread pools without their threads
    and hung freeing them (seen in this file's prepare -j 2 after its fixture wrote the videos)."""
    import sys

    from cttlstm_cli.data import prepare

    monkeypatch.delitem(sys.modules, "av", raising=False)
    assert prepare._start_method() == "fork"  # Linux, no ffmpeg used yet: the fast start
    monkeypatch.setitem(sys.modules, "av", object())
    assert prepare._start_method() == "spawn"
