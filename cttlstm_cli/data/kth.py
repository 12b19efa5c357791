"""KTH actions: 6 actions x 25 persons x 4 scenarios, split by person.

Persons 1-16 train (``val_persons``, default 15 and 16, held out as validation),
17-25 test. Two protocols: ``openstl`` (gray, resize 160x120 -> 128x128 bilinear) and
``paper`` (gray, center crop 120x120, bilinear up-sampling to 128x128). Whole videos
are stored; when the KTH sequence file (``00sequences.txt``) is found, its per-video
frame ranges are stored as segments so clips can be kept inside them.

Without a source folder, :func:`fetch_kth` downloads KTH's six action archives and the
sequence file into the cache (resumable, each archive integrity-tested, video counts
compared with the official release, size and sha256 recorded beside the files and later
in the manifest) and :func:`build_kth` prepares from there exactly as from a folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import zipfile
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cttlstm_cli.atomic import write_json_atomic
from cttlstm_cli.data.download import DEFAULT_TIMEOUT, DownloadError, cache_lock, cache_root, fetch, join_location, sha256_file
from cttlstm_cli.data.prepare import Item, Job, PrepareResult, run_prepare, source_fingerprint
from cttlstm_cli.data.video import read_video
from cttlstm_cli.errors import CttlstmError

ACTIONS = ("boxing", "handclapping", "handwaving", "jogging", "running", "walking")
PROTOCOLS = ("openstl", "paper")
NAME_RE = re.compile(r"^person(\d{2})_([a-z]+)_d([1-4])(?:_uncomp)?\.avi$", re.IGNORECASE)
SEQ_LINE_RE = re.compile(r"^\s*(person\d+_[a-z]+_d\d)\s+frames\s+(.+)$", re.IGNORECASE)
TEST_PERSONS = range(17, 26)

#: KTH's own download page; the archives and the sequence file sit right under it
KTH_URL = "https://www.csc.kth.se/cvap/actions/"
MIRROR_ENV = "CTTLSTM_KTH_MIRROR"
SEQUENCES_FILE = "00sequences.txt"
#: the six action archives, in the order of KTH's page (each holds its action's .avi files at the top level)
ARCHIVES = ("walking.zip", "jogging.zip", "running.zip", "boxing.zip", "handwaving.zip", "handclapping.zip")
DOWNLOAD_FILES = ARCHIVES + (SEQUENCES_FILE,)
#: videos per action in the official release: 25 persons x 4 scenarios, but person13_handclapping_d3
#: was never published (00sequences.txt lists it as *missing*), so 599 in all
RELEASE_VIDEOS = {**{a: 100 for a in ACTIONS}, "handclapping": 99}
#: the cache's own record of what was fetched (url, size, sha256), beside the files
RECORD_NAME = "fetched.json"
_BY_HAND = (
    f"or download the six action zips and {SEQUENCES_FILE} from {KTH_URL} into a folder yourself "
    "and run 'cttlstm prepare kth FOLDER --out DIR'"
)


def parse_name(name: str) -> tuple[int, str, int] | None:
    """(person, action, scenario) of a KTH file name, or None when it is not one."""
    m = NAME_RE.match(name)
    if not m or m.group(2).lower() not in ACTIONS:
        return None
    return int(m.group(1)), m.group(2).lower(), int(m.group(3))


def parse_sequences(text: str) -> dict[str, list[list[int]]]:
    """Parse ``00sequences.txt``: ``person01_boxing_d1  frames 1-95, 96-185`` ->
    ``{"person01_boxing_d1": [[0, 95], [95, 185]]}`` (0-based, end exclusive)."""
    result: dict[str, list[list[int]]] = {}
    for line in text.splitlines():
        m = SEQ_LINE_RE.match(line)
        if not m:
            continue
        ranges = [[int(a) - 1, int(b)] for a, b in re.findall(r"(\d+)\s*-\s*(\d+)", m.group(2))]
        ranges = [r for r in ranges if r[1] > r[0] >= 0]
        if ranges:
            result[m.group(1).lower()] = ranges
    return result


def split_of(person: int, val_persons: list[int]) -> str:
    """train / val / test for a person number (1-25)."""
    if person in TEST_PERSONS:
        return "test"
    return "val" if person in val_persons else "train"


def _decode(path: str, member: str | None, crop: tuple[int, int] | None, size: tuple[int, int], label: int, segments: list[list[int]] | None) -> list[Item]:
    if member is None:
        data: str | bytes = path
    else:
        try:
            with zipfile.ZipFile(path) as z:
                data = z.read(member)
        except (zipfile.BadZipFile, OSError, KeyError) as err:
            raise CttlstmError(f"unreadable zip member ({err})") from None
    frames = read_video(data, size=size, channels=1, crop=crop)
    name = Path(member or path).name
    if segments:
        # the sequence file sometimes runs past the end of a video: clamp, drop empty ranges
        segments = [[a, min(b, len(frames))] for a, b in segments if a < len(frames)]
    return [Item(Path(name).stem, frames, name, label, segments or None)]


def check_options(protocol: str, val_persons: list[int] | None, sequences: str | Path | None = None) -> list[int]:
    """Validate the KTH options (before any download); returns the sorted validation persons."""
    if protocol not in PROTOCOLS:
        raise CttlstmError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    persons = sorted({15, 16} if val_persons is None else set(val_persons))
    if any(not 1 <= p <= 16 for p in persons):
        raise CttlstmError(f"--val-persons must be training persons 1-16, got {persons}")
    if sequences is not None and not Path(sequences).is_file():
        raise CttlstmError(f"--sequences file not found: {sequences}")
    return persons


def build_kth(
    source: str | Path,
    out: str | Path,
    protocol: str = "openstl",
    size: tuple[int, int] = (128, 128),
    val_persons: list[int] | None = None,
    sequences: str | Path | None = None,
    workers: int = 2,
    progress: bool = True,
    fetched: dict[str, Any] | None = None,
) -> PrepareResult:
    """Prepare KTH from a folder of ``.avi`` files (any depth) or the six action ``.zip`` archives.

    ``fetched`` is :attr:`KthFiles.record` when ``source`` is the download cache of
    :func:`fetch_kth`: exactly the fetched files are read, and their sizes and sha256 go
    into the manifest (``download``) and into the options (``source_sha256``), so a later
    prepare from changed files never passes for the same dataset.
    """
    source, out = Path(source), Path(out)
    val_persons = check_options(protocol, val_persons, sequences)
    if not source.exists():
        raise CttlstmError(f"SOURCE not found: {source}")

    # (key, path, member, name): loose files first, then zip members
    if fetched is not None:
        files = [source / name for name in sorted(ARCHIVES)]  # the order a folder of them is read in
        base = source
    elif source.is_file():
        files = [source]
        base = source.parent
    else:
        files = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in (".avi", ".zip"))
        base = source
    if sequences is not None:
        seq_file: Path | None = Path(sequences)
    elif fetched is not None:
        seq_file = source / SEQUENCES_FILE
    else:
        seq_file = next(iter(sorted(source.rglob(SEQUENCES_FILE))), None) if source.is_dir() else None
    segments_by_video = parse_sequences(seq_file.read_text(errors="replace")) if seq_file else {}

    candidates: list[tuple[str, str, str | None, str]] = []
    pre_skipped: list[dict[str, str]] = []
    for f in files:
        rel = str(f.relative_to(base))
        if f.suffix.lower() == ".zip":
            try:
                with zipfile.ZipFile(f) as z:
                    members = sorted(m for m in z.namelist() if m.lower().endswith(".avi"))
            except (zipfile.BadZipFile, OSError) as err:
                pre_skipped.append({"source": rel, "reason": f"unreadable zip archive ({err})"})
                continue
            candidates += [(f"{rel}/{m}", str(f), m, Path(m).name) for m in members]
        else:
            candidates.append((rel, str(f), None, f.name))
    if not candidates:
        raise CttlstmError(f"no KTH videos (.avi files or action .zip archives) found in {source}")

    jobs: dict[str, list[tuple[tuple[int, int, int], Job]]] = {"train": [], "val": [], "test": []}
    seen: dict[str, str] = {}
    crop = (120, 120) if protocol == "paper" else None
    for key, path, member, name in candidates:
        parsed = parse_name(name)
        if parsed is None:
            pre_skipped.append({"source": key, "reason": "not a KTH file name (personNN_ACTION_dN_uncomp.avi)"})
            continue
        if name.lower() in seen:
            pre_skipped.append({"source": key, "reason": f"duplicate of {seen[name.lower()]}"})
            continue
        seen[name.lower()] = key
        person, action, scenario = parsed
        stem = f"person{person:02d}_{action}_d{scenario}"
        label = ACTIONS.index(action)
        job = Job(key, _decode, (path, member, crop, tuple(size), label, segments_by_video.get(stem)))
        jobs[split_of(person, val_persons)].append(((person, label, scenario), job))
    ordered = {s: [j for _, j in sorted(v, key=lambda t: t[0])] for s, v in jobs.items()}
    persons = {s: sorted({k[0] for k, _ in v}) for s, v in jobs.items()}

    options: dict[str, Any] = {
        "dataset": "kth",
        "source": str(source.resolve()),
        "protocol": protocol,
        "size": list(size),
        "val_persons": val_persons,
        "sequences": str(seq_file.resolve()) if seq_file else None,
    }
    extra: dict[str, Any] = {"protocol": protocol, "persons": persons, "segments": bool(segments_by_video)}
    if fetched is not None:
        # identity is the bytes, not where the cache happens to live
        options["source"] = "kth-download"
        options["source_sha256"] = source_digest(fetched)
        if sequences is None:
            options["sequences"] = SEQUENCES_FILE
        extra["download"] = fetched
    return run_prepare(
        out,
        "kth",
        options,
        ordered,
        tuple(size),
        1,
        workers=workers,
        provenance={"protocol": protocol, "sequences_file": seq_file.name if seq_file else None},
        extra=extra,
        label_names=list(ACTIONS),
        pre_skipped=pre_skipped,
        progress=progress,
        source=source_fingerprint(base, files + ([seq_file] if seq_file else [])),
    )


# --- downloading ---------------------------------------------------------------------------------


@dataclass
class KthFiles:
    """The KTH files :func:`fetch_kth` made available."""

    folder: Path
    record: dict[str, Any]  # for the manifest's ``download``: source, files, videos per action, warnings
    warnings: list[str] = field(default_factory=list)
    transferred: list[str] = field(default_factory=list)  # names fetched by this call (the rest were cached)


class _Corrupt(CttlstmError):
    """A complete file that fails its integrity test."""


def kth_cache_dir() -> Path:
    """Where the KTH download is cached: ``kth/`` in the cache root."""
    return cache_root() / "kth"


def source_digest(record: dict[str, Any]) -> str:
    """One sha256 over the fetched files' names and sha256s: the dataset's source identity."""
    lines = "".join(f"{name} {entry['sha256']}\n" for name, entry in sorted(record["files"].items()))
    return hashlib.sha256(lines.encode()).hexdigest()


def verify_archive(path: Path) -> None:
    """Raise when ``path`` is not a readable zip whose every member passes its CRC check."""
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except zipfile.BadZipFile:
        raise _Corrupt("not a zip archive") from None
    except (OSError, EOFError, zlib.error, NotImplementedError, RuntimeError) as err:
        raise _Corrupt(f"unreadable zip archive ({type(err).__name__}: {err})") from None
    if bad is not None:
        raise _Corrupt(f"member {bad} fails its CRC check")


def verify_sequences(path: Path) -> None:
    """Raise when ``path`` is not KTH's sequence file (an HTML error page is the usual impostor)."""
    if not parse_sequences(path.read_text(errors="replace")):
        raise _Corrupt("no 'personNN_ACTION_dN frames A-B' lines in it")


def count_videos(path: Path, action: str) -> int:
    """KTH-named ``.avi`` files of ``action`` in an archive."""
    with zipfile.ZipFile(path) as z:
        names = {Path(m).name.lower() for m in z.namelist()}
    return sum(1 for n in names if (p := parse_name(n)) is not None and p[1] == action)


def _read_record(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
        files = data["files"]
        if not isinstance(files, dict) or not all(isinstance(e, dict) and "sha256" in e for e in files.values()):
            raise ValueError("bad entries")
        return files
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CttlstmError(f"unreadable download record {path} ({err}); delete it and run again") from None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def fetch_kth(
    mirror: str | None = None,
    cache: str | Path | None = None,
    download: bool = True,
    progress: bool = True,
    timeout: float | None = None,
) -> KthFiles:
    """Make the six KTH action archives and ``00sequences.txt`` available in the cache, verified.

    Files come from ``mirror`` (a URL, ``file://`` URL or folder), else ``$CTTLSTM_KTH_MIRROR``,
    else KTH's site; a file already in ``cache`` (default :func:`kth_cache_dir`) is not fetched
    again. Downloads resume after an interruption. Every archive must pass a zip integrity test;
    a video count below the official release's is a warning, not an error. Size and sha256 of
    each file are recorded in ``cache/fetched.json``: a cached file whose sha256 no longer
    matches the record is refused, and a re-fetched file that differs from the record (the
    source changed) is kept with a warning. ``download=False`` never touches the network.
    ``timeout`` (default :data:`cttlstm_cli.data.download.DEFAULT_TIMEOUT`) bounds each connect and read.

    Raises CttlstmError (one line) when a file cannot be fetched or fails its checks.
    """
    base = mirror or os.environ.get(MIRROR_ENV) or KTH_URL
    folder = Path(cache) if cache is not None else kth_cache_dir()
    timeout = timeout or DEFAULT_TIMEOUT
    if not download:
        missing = [n for n in DOWNLOAD_FILES if not (folder / n).is_file()]
        if missing:
            raise CttlstmError(
                f"--no-download: {len(missing)} KTH file(s) not in the cache {folder}: {', '.join(missing)}; "
                f"run without --no-download to fetch them, {_BY_HAND}"
            )
    warnings: list[str] = []
    transferred: list[str] = []
    files: dict[str, dict[str, Any]] = {}
    record_path = folder / RECORD_NAME
    with cache_lock(folder):
        record = _read_record(record_path)
        for name in DOWNLOAD_FILES:
            path = folder / name
            location = join_location(base, name)
            verify = verify_archive if name.endswith(".zip") else verify_sequences
            old = record.get(name)
            if path.is_file():
                entry = _check_cached(path, old, verify)
            else:
                entry = _fetch_one(name, location, path, verify, timeout, progress)
                transferred.append(name)
                if old is not None and old["sha256"] != entry["sha256"]:
                    entry["previous_sha256"] = old["sha256"]
                    warnings.append(
                        f"{name} at {location} changed since it was fetched on {old.get('fetched', '?')} "
                        f"(sha256 {old['sha256'][:12]}... -> {entry['sha256'][:12]}...); datasets prepared from the old files differ"
                    )
            record[name] = entry
            files[name] = {k: entry.get(k) for k in ("url", "size", "sha256", "fetched")}
            # after every file, so an interruption keeps what was already verified
            write_json_atomic(record_path, {"files": record})
    videos = {}
    for name in ARCHIVES:
        action = name[: -len(".zip")]
        videos[action] = count_videos(folder / name, action)
        expected = RELEASE_VIDEOS[action]
        if videos[action] != expected:
            fewer = "only " if videos[action] < expected else ""
            warnings.append(f"{name} holds {fewer}{videos[action]} {action} videos; the official KTH release has {expected}")
    total = sum(videos.values())
    record_out = {
        "source": base,
        "cache": str(folder),
        "files": files,
        "videos": videos,
        "release_videos": {**RELEASE_VIDEOS, "total": sum(RELEASE_VIDEOS.values())},
        "total_videos": total,
        "warnings": warnings,
    }
    return KthFiles(folder, record_out, warnings, transferred)


def _check_cached(path: Path, old: dict[str, Any] | None, verify) -> dict[str, Any]:
    """The record entry of a file already in the cache, after checking it still is what was fetched."""
    size, sha = path.stat().st_size, sha256_file(path)
    if old is not None:
        if old["sha256"] != sha:
            raise CttlstmError(
                f"KTH file {path} changed since it was fetched on {old.get('fetched', '?')} "
                f"(sha256 {old['sha256'][:12]}... recorded, now {sha[:12]}...; {old.get('size')} -> {size} bytes); "
                "delete it to fetch it again"
            )
        return old
    # put there by hand (or by an older cttlstm): check it once, then trust its sha256
    try:
        verify(path)
    except _Corrupt as err:
        raise CttlstmError(f"KTH file {path} in the cache fails its integrity test ({err}); delete it to fetch it again") from None
    return {"url": None, "size": size, "sha256": sha, "fetched": _now(), "origin": "found in the cache"}


def _fetch_one(name: str, location: str, path: Path, verify, timeout: float, progress: bool) -> dict[str, Any]:
    """Fetch one file into the cache; every failure becomes one line saying how to go on."""
    try:
        got = fetch(location, path, verify=verify, timeout=timeout, progress=progress, label=name)
    except _Corrupt as err:
        raise CttlstmError(
            f"KTH {name} from {location} fails its integrity test ({err}); it was not kept and nothing was prepared - "
            f"run again to fetch it again, {_BY_HAND}"
        ) from None
    except DownloadError as err:
        raise CttlstmError(
            f"{err}; nothing was prepared - run the same command again to retry (a partial download resumes), {_BY_HAND}"
        ) from None
    return {"url": location, "size": got.size, "sha256": got.sha256, "fetched": _now()}
