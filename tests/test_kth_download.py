"""`cttlstm prepare kth` without SOURCE: fetch KTH (resumable, verified) from a local HTTP server, then prepare.

The server (http.server in a thread, on 127.0.0.1) serves tiny generated archives under KTH's
real names, answers Range requests itself, logs every request and the bytes it sent, and can
be told to cut a file short and then go away, to ignore Range, or to serve other bytes.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import re
import socket
import threading
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pytest
from data_video_helpers import ramp_frames, write_video

from cttlstm_cli.data import download, kth
from cttlstm_cli.errors import CttlstmError

pytestmark = pytest.mark.network  # a local server the tests start (http.server on 127.0.0.1)

#: archive -> (person, scenario) of the videos in it: every split gets some, each archive is short of the release
MEMBERS = {
    "walking.zip": [(1, 1), (17, 2)],
    "jogging.zip": [(2, 3)],
    "running.zip": [(15, 1), (21, 4)],
    "boxing.zip": [(3, 2), (16, 4), (25, 1)],
    "handwaving.zip": [(4, 1)],
    "handclapping.zip": [(18, 2)],
}
SEQUENCES = "person01_walking_d1\t\tframes\t1-3, 4-6\n\nperson17_walking_d2\t\tframes\t2-5\nperson13_handclapping_d3\t\t*missing*\n"
CLIP = ["--size", "32", "-j", "1", "-q"]
# generous: the test machine is shared and loaded; nothing here should ever wait for a timeout
TIMEOUT = 600.0


def _zip(members: dict[str, bytes]) -> bytes:
    """A zip archive (stored, not deflated, so a test can find and damage a member's bytes)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


@pytest.fixture(scope="module")
def kth_files(tmp_path_factory) -> dict[str, bytes]:
    """The seven KTH files (six action zips, 00sequences.txt) with tiny lossless videos."""
    tmp = tmp_path_factory.mktemp("kth-videos")
    files: dict[str, bytes] = {}
    k = 0
    for archive, members in MEMBERS.items():
        action = archive[:-4]
        videos = {}
        for person, d in members:
            k += 1
            path = write_video(tmp / f"{k}.avi", ramp_frames(6, base=10 + 7 * k))
            videos[f"person{person:02d}_{action}_d{d}_uncomp.avi"] = path.read_bytes()
        files[archive] = _zip(videos)
    files[kth.SEQUENCES_FILE] = SEQUENCES.encode()
    return files


@pytest.fixture(scope="module")
def kth_folder(kth_files: dict[str, bytes], tmp_path_factory) -> Path:
    """The same files in a folder: what `cttlstm prepare kth FOLDER` reads today."""
    folder = tmp_path_factory.mktemp("kth-folder")
    for name, data in kth_files.items():
        (folder / name).write_bytes(data)
    return folder


@dataclass
class KthServer:
    """A tiny KTH host: ``files`` by name under ``/kth/``; every request is logged with the bytes sent."""

    files: dict[str, bytes]
    log: list[dict] = field(default_factory=list)
    cut: dict[str, int] = field(default_factory=dict)  # name -> body bytes to send before the host "goes away"
    dead: bool = False  # answer nothing, close the connection (a host that went away)
    ignore_range: bool = False  # answer 200 with the whole file, as some servers do

    def start(self) -> KthServer:
        state = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:
                name = self.path.rsplit("/", 1)[-1]
                entry = {"name": name, "range": self.headers.get("Range"), "status": None, "sent": 0}
                state.log.append(entry)
                if state.dead:
                    self.close_connection = True
                    return
                data = state.files.get(name)
                if data is None or not self.path.startswith("/kth/"):
                    entry["status"] = 404
                    self.send_error(404)
                    return
                start, status = 0, 200
                if entry["range"] and not state.ignore_range:
                    m = re.fullmatch(r"bytes=(\d+)-", entry["range"].strip())
                    assert m, entry["range"]
                    start = int(m.group(1))
                    if start >= len(data):
                        entry["status"] = 416
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    status = 206
                body = data[start:]
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if name in state.cut:
                    body = body[: state.cut.pop(name)]
                    state.dead = True  # and nothing more after these bytes
                self.wfile.write(body)
                entry["status"], entry["sent"] = status, len(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/kth/"

    def requests(self, name: str, since: int = 0) -> list[dict]:
        return [e for e in self.log[since:] if e["name"] == name]

    def sent(self, name: str, since: int = 0) -> int:
        return sum(e["sent"] for e in self.requests(name, since))

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(kth_files: dict[str, bytes]):
    srv = KthServer(dict(kth_files)).start()
    yield srv
    srv.stop()


@pytest.fixture
def cache(tmp_path: Path, monkeypatch) -> Path:
    """A private cache root (so nothing is shared between tests or with the user's cache)."""
    root = tmp_path / "cache"
    monkeypatch.setenv("CTTLSTM_CACHE_DIR", str(root))
    monkeypatch.delenv("CTTLSTM_CACHE", raising=False)
    monkeypatch.delenv(kth.MIRROR_ENV, raising=False)
    monkeypatch.setattr(kth, "DEFAULT_TIMEOUT", TIMEOUT)
    return root / "kth"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _videos(root: Path) -> dict[str, np.ndarray]:
    """Every stored video by name, read from the shards."""
    manifest = json.loads((root / "manifest.json").read_text())
    out: dict[str, np.ndarray] = {}
    for split in manifest["splits"].values():
        for shard in split["shards"]:
            with h5py.File(root / shard, "r") as f:
                for key, ds in f["videos"].items():
                    out[ds.attrs["name"]] = (ds[()], ds.attrs["segments"].tolist() if "segments" in ds.attrs else None)
    return out


def _closed_port() -> int:
    """A local port nothing listens on (connecting to it is refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_fetch_and_prepare_equals_prepare_from_folder(server: KthServer, cache: Path, kth_files, kth_folder: Path, tmp_path: Path, cli) -> None:
    out = tmp_path / "kth"
    r = cli("prepare", "kth", "--out", out, "--mirror", server.url, *CLIP)
    assert r.code == 0, r.err
    assert "KTH files verified" in r.out and "7 fetched now" in r.out
    # each file fetched once, whole
    for name, data in kth_files.items():
        assert [(e["range"], e["status"], e["sent"]) for e in server.requests(name)] == [(None, 200, len(data))]
        assert (cache / name).read_bytes() == data
    assert not list(cache.glob("*.part"))
    m = json.loads((out / "manifest.json").read_text())
    files = m["download"]["files"]
    assert set(files) == set(kth_files)
    for name, data in kth_files.items():
        assert files[name]["size"] == len(data) and files[name]["sha256"] == _sha(data)
        assert files[name]["url"] == server.url + name
    record = json.loads((cache / kth.RECORD_NAME).read_text())["files"]
    assert {n: (e["size"], e["sha256"]) for n, e in record.items()} == {n: (len(d), _sha(d)) for n, d in kth_files.items()}
    # the counts are compared with the official release: a shortfall is a warning, recorded
    assert m["download"]["videos"] == {"walking": 2, "jogging": 1, "running": 2, "boxing": 3, "handwaving": 1, "handclapping": 1}
    assert m["download"]["release_videos"]["total"] == 599 and m["download"]["release_videos"]["handclapping"] == 99
    assert "boxing.zip holds only 3 boxing videos; the official KTH release has 100" in m["download"]["warnings"]
    assert "warning: handclapping.zip holds only 1 handclapping videos; the official KTH release has 99" in r.err
    assert m["provenance"]["options"]["source"] == "kth-download"
    assert m["provenance"]["options"]["source_sha256"] == kth.source_digest(m["download"])

    # the same dataset as preparing the same files from a folder
    ref = tmp_path / "ref"
    assert cli("prepare", "kth", kth_folder, "--out", ref, *CLIP).code == 0
    mr = json.loads((ref / "manifest.json").read_text())
    for key in ("splits", "persons", "segments", "label_names", "frame_size", "channels", "skipped"):
        assert m[key] == mr[key], key
    assert m["splits"]["test"]["sources"] == ["person17_walking_d2_uncomp.avi", "person18_handclapping_d2_uncomp.avi",
                                              "person21_running_d4_uncomp.avi", "person25_boxing_d1_uncomp.avi"]  # fmt: skip
    got, want = _videos(out), _videos(ref)
    assert sorted(got) == sorted(want) and len(got) == 10
    for name in want:
        assert np.array_equal(got[name][0], want[name][0]) and got[name][1] == want[name][1], name
    assert got["person01_walking_d1_uncomp"][1] == [[0, 3], [3, 6]]  # the fetched 00sequences.txt was used

    # again: nothing fetched, nothing redone
    before = len(server.log)
    r = cli("prepare", "kth", "--out", out, "--mirror", server.url, *CLIP)
    assert r.code == 0 and "nothing to do" in r.out and "all from the cache" in r.out
    assert len(server.log) == before


def test_interrupted_download_resumes_without_fetching_bytes_again(server: KthServer, cache: Path, kth_files, tmp_path: Path, cli, monkeypatch) -> None:
    monkeypatch.setenv(kth.MIRROR_ENV, server.url)  # the environment variable alone picks the host
    size = len(kth_files["boxing.zip"])
    cut = size // 2
    server.cut["boxing.zip"] = cut
    out = tmp_path / "kth"
    r = cli("prepare", "kth", "--out", out, *CLIP)
    assert r.code == 2 and r.err.count("\n") == 1, r.err
    assert "boxing.zip" in r.err and f"{cut} bytes kept in {cache / 'boxing.zip.part'}" in r.err
    assert "cttlstm prepare kth FOLDER" in r.err and kth.KTH_URL in r.err
    assert not out.exists()
    # the bytes so far wait under the .part name; never under the real one
    assert (cache / "boxing.zip.part").read_bytes() == kth_files["boxing.zip"][:cut]
    assert not (cache / "boxing.zip").exists()
    assert [(cache / n).is_file() for n in kth.ARCHIVES[:3]] == [True] * 3  # walking, jogging, running came first

    server.dead = False
    since = len(server.log)
    r = cli("prepare", "kth", "--out", out, *CLIP)
    assert r.code == 0, r.err
    assert "4 fetched now" in r.out  # boxing (resumed), handwaving, handclapping, 00sequences.txt
    resumed = server.requests("boxing.zip", since)
    assert [(e["range"], e["status"]) for e in resumed] == [(f"bytes={cut}-", 206)]
    assert server.sent("boxing.zip", since) == size - cut  # the first half was not fetched again
    for name in kth.ARCHIVES[:3]:
        assert server.requests(name, since) == []
    assert (cache / "boxing.zip").read_bytes() == kth_files["boxing.zip"]
    assert not (cache / "boxing.zip.part").exists()
    m = json.loads((out / "manifest.json").read_text())
    assert m["download"]["files"]["boxing.zip"]["sha256"] == _sha(kth_files["boxing.zip"])
    assert m["splits"]["test"]["videos"] == 4


def _damaged(archive: bytes, member_data: bytes) -> bytes:
    """``archive`` with one byte in the middle of a member's data flipped (its CRC no longer matches)."""
    at = archive.index(member_data) + len(member_data) // 2
    return archive[:at] + bytes([archive[at] ^ 0xFF]) + archive[at + 1 :]


@pytest.mark.parametrize("damage", ["crc", "not-a-zip"])
def test_corrupt_archive_is_refused(damage: str, server: KthServer, cache: Path, kth_files, tmp_path: Path, cli) -> None:
    good = kth_files["running.zip"]
    if damage == "crc":
        with zipfile.ZipFile(io.BytesIO(good)) as z:
            member = z.read(z.namelist()[0])
        server.files["running.zip"] = _damaged(good, member)
        expect = "fails its CRC check"
    else:
        server.files["running.zip"] = b"<html><body>Moved to another server</body></html>\n"
        expect = "not a zip archive"
    out = tmp_path / "kth"
    r = cli("prepare", "kth", "--out", out, "--mirror", server.url, *CLIP)
    assert r.code == 2 and r.err.count("\n") == 1, r.err
    assert "running.zip" in r.err and "integrity test" in r.err and expect in r.err and "cttlstm prepare kth FOLDER" in r.err
    assert "Traceback" not in r.err
    assert not out.exists()
    assert not (cache / "running.zip").exists() and not (cache / "running.zip.part").exists()  # a bad file is not kept
    # fixed at the source: the next run fetches it again and goes on
    server.files["running.zip"] = good
    r = cli("prepare", "kth", "--out", out, "--mirror", server.url, *CLIP)
    assert r.code == 0, r.err
    assert [e["status"] for e in server.requests("running.zip")] == [200, 200]


def test_unreachable_host_fails_in_one_line_with_nothing_in_out(cache: Path, tmp_path: Path, cli) -> None:
    out = tmp_path / "kth"
    out.mkdir()  # an empty --out stays empty
    url = f"http://127.0.0.1:{_closed_port()}/kth/"
    r = cli("prepare", "kth", "--out", out, "--mirror", url, *CLIP)
    assert r.code == 2 and r.err.count("\n") == 1, r.err
    assert f"{url}walking.zip" in r.err and "refused" in r.err.lower()
    assert kth.KTH_URL in r.err and "cttlstm prepare kth FOLDER --out DIR" in r.err
    assert list(out.iterdir()) == []
    assert not list(cache.glob("*.zip*"))


def test_host_going_away_mid_run(server: KthServer, cache: Path, tmp_path: Path, cli) -> None:
    """A host that stops answering after some files: one line naming the file that is missing."""
    server.cut["running.zip"] = 0  # headers, no body, then nothing
    out = tmp_path / "kth"
    r = cli("prepare", "kth", "--out", out, "--mirror", server.url, *CLIP)
    assert r.code == 2 and r.err.count("\n") == 1, r.err
    assert "running.zip" in r.err and "cttlstm prepare kth FOLDER" in r.err
    assert not out.exists()
    assert not (cache / "running.zip").exists()


@pytest.mark.slow
def test_no_download_never_touches_the_network(server: KthServer, cache: Path, tmp_path: Path, cli, monkeypatch) -> None:
    monkeypatch.setenv(kth.MIRROR_ENV, server.url)
    out = tmp_path / "kth"
    r = cli("prepare", "kth", "--out", out, "--no-download", *CLIP)
    assert r.code == 2 and r.err.count("\n") == 1, r.err
    assert "--no-download" in r.err and "walking.zip" in r.err and "00sequences.txt" in r.err and str(cache) in r.err
    assert "cttlstm prepare kth FOLDER" in r.err
    assert server.log == [] and not out.exists()
    # once the cache is complete, --no-download prepares from it, with the host gone
    assert cli("prepare", "kth", "--out", tmp_path / "first", *CLIP).code == 0
    server.stop()
    before = len(server.log)
    r = cli("prepare", "kth", "--out", out, "--no-download", *CLIP)
    assert r.code == 0, r.err
    assert len(server.log) == before and (out / "manifest.json").is_file()
    server.start()  # for the fixture's teardown


def test_changed_source_is_detected(server: KthServer, cache: Path, kth_files, tmp_path: Path, cli) -> None:
    first = tmp_path / "first"
    assert cli("prepare", "kth", "--out", first, "--mirror", server.url, *CLIP).code == 0
    old_sha = _sha(kth_files["jogging.zip"])
    other = _zip({"person02_jogging_d3_uncomp.avi": b"other bytes, still a valid archive"})

    # 1. the cached copy changed since it was fetched: refused
    (cache / "jogging.zip").write_bytes(other)
    out = tmp_path / "second"
    r = cli("prepare", "kth", "--out", out, "--mirror", server.url, *CLIP)
    assert r.code == 2 and r.err.count("\n") == 1, r.err
    assert "jogging.zip" in r.err and "changed since it was fetched" in r.err and old_sha[:12] in r.err and _sha(other)[:12] in r.err
    assert "delete it to fetch it again" in r.err and not out.exists()

    # 2. deleted, fetched again, and the host now serves other bytes: kept, reported, recorded
    (cache / "jogging.zip").unlink()
    new = _zip({"person02_jogging_d3_uncomp.avi": kth_files["jogging.zip"][-2000:] * 2})
    server.files["jogging.zip"] = new
    r = cli("prepare", "kth", "--out", out, "--mirror", server.url, *CLIP)
    assert r.code == 0, r.err
    assert "warning: jogging.zip at" in r.err and "changed since it was fetched" in r.err
    m = json.loads((out / "manifest.json").read_text())
    assert m["download"]["files"]["jogging.zip"]["sha256"] == _sha(new)
    assert any("jogging.zip" in w and "changed" in w for w in m["download"]["warnings"])
    record = json.loads((cache / kth.RECORD_NAME).read_text())["files"]["jogging.zip"]
    assert record["sha256"] == _sha(new) and record["previous_sha256"] == old_sha

    # 3. the dataset prepared from the old files is not taken for one of the new files
    r = cli("prepare", "kth", "--out", first, "--mirror", server.url, *CLIP)
    assert r.code == 2 and "other options" in r.err and "source_sha256" in r.err


def test_mirror_as_local_folder(kth_folder: Path, cache: Path, kth_files, tmp_path: Path, cli) -> None:
    out = tmp_path / "kth"
    r = cli("prepare", "kth", "--out", out, "--mirror", kth_folder, *CLIP)
    assert r.code == 0, r.err
    m = json.loads((out / "manifest.json").read_text())
    assert m["download"]["source"] == str(kth_folder)
    assert m["download"]["files"]["walking.zip"]["sha256"] == _sha(kth_files["walking.zip"])
    assert m["splits"]["train"]["videos"] == 4


def test_fetch_resumes_a_file_url(tmp_path: Path) -> None:
    data = bytes(range(256)) * 40
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a b.bin").write_bytes(data)
    dest = tmp_path / "cache" / "a b.bin"
    dest.parent.mkdir()
    download.part_path(dest).write_bytes(data[:1000])
    url = download.join_location((tmp_path / "src").as_uri() + "/", "a b.bin")
    got = download.fetch(url, dest, sha256=_sha(data), progress=False)
    assert dest.read_bytes() == data and got.resumed_from == 1000 and got.transferred == len(data) - 1000
    assert got.sha256 == _sha(data) and not download.part_path(dest).exists()


def test_fetch_restarts_when_the_server_ignores_range(server: KthServer, tmp_path: Path, kth_files) -> None:
    dest = tmp_path / "walking.zip"
    download.part_path(dest).write_bytes(b"stale bytes from some other file" * 10)  # not a prefix of walking.zip
    server.ignore_range = True
    got = download.fetch(server.url + "walking.zip", dest, progress=False, timeout=TIMEOUT)
    assert dest.read_bytes() == kth_files["walking.zip"] and got.sha256 == _sha(kth_files["walking.zip"])
    assert [(e["range"], e["status"]) for e in server.log] == [("bytes=320-", 200)]
    assert got.resumed_from == 0


def test_fetch_complete_part_and_http_errors(server: KthServer, tmp_path: Path, kth_files) -> None:
    # a .part that already holds the whole file: the server answers 416, nothing is sent again
    dest = tmp_path / "jogging.zip"
    download.part_path(dest).write_bytes(kth_files["jogging.zip"])
    got = download.fetch(server.url + "jogging.zip", dest, progress=False, timeout=TIMEOUT)
    assert got.transferred == 0 and dest.read_bytes() == kth_files["jogging.zip"]
    assert [e["status"] for e in server.log] == [416]
    # a wrong checksum: the file is not kept under any name
    with pytest.raises(download.DownloadError, match="sha256 mismatch"):
        download.fetch(server.url + "walking.zip", tmp_path / "w.zip", sha256="0" * 64, progress=False, timeout=TIMEOUT)
    assert not (tmp_path / "w.zip").exists() and not download.part_path(tmp_path / "w.zip").exists()
    with pytest.raises(download.DownloadError, match=r"HTTP 404") as err:
        download.fetch(server.url + "nothing.zip", tmp_path / "n.zip", progress=False, timeout=TIMEOUT)
    assert "\n" not in str(err.value) and "nothing.zip" in str(err.value)
    with pytest.raises(download.DownloadError, match="No such file"):
        download.fetch(str(tmp_path / "missing.zip"), tmp_path / "m.zip", progress=False)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_fetch_disk_full_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "src.bin").write_bytes(b"x" * 200_000)
    dest = tmp_path / "dest.bin"
    download.part_path(dest).symlink_to("/dev/full")  # every write there fails with ENOSPC
    with pytest.raises(download.DownloadError, match="no space left on device") as err:
        download.fetch(str(tmp_path / "src.bin"), dest, progress=False)
    assert "\n" not in str(err.value) and "run again to resume" in str(err.value) and not dest.exists()


def test_mirror_needs_a_download_and_ssv2_without_source(kth_folder: Path, tmp_path: Path, cli) -> None:
    r = cli("prepare", "kth", kth_folder, "--out", tmp_path / "o", "--mirror", "http://example.org/")
    assert r.code == 2 and "--mirror" in r.err and not (tmp_path / "o").exists()
    r = cli("prepare", "ssv2", "--out", tmp_path / "s")
    assert r.code == 2 and r.err.count("\n") == 1, r.err
    assert "https://developer.qualcomm.com/software/ai-datasets/something-something" in r.err
    assert "licence" in r.err and "something-something-v2-labels.json" in r.err and "--labels" in r.err
    assert not (tmp_path / "s").exists()


def test_options_are_checked_before_downloading(server: KthServer, cache: Path, tmp_path: Path, cli) -> None:
    r = cli("prepare", "kth", "--out", tmp_path / "o", "--mirror", server.url, "--protocol", "mine")
    assert r.code == 2 and "--protocol" in r.err and server.log == []
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    r = cli("prepare", "kth", "--out", tmp_path / "busy", "--mirror", server.url)
    assert r.code == 2 and "not empty" in r.err and server.log == []


def test_locked_cache_is_one_line(cache: Path) -> None:
    with download.cache_lock(cache):
        with pytest.raises(CttlstmError, match="another cttlstm process"):
            with download.cache_lock(cache):
                pass
