"""KTH actions: 6 actions x 25 persons x 4 scenarios, split by person.

Persons 1-16 train (``val_persons``, default 15 and 16, held out as validation),
17-25 test. Two protocols: ``openstl`` (gray, resize 160x120 -> 128x128 bilinear) and
``paper`` (gray, center crop 120x120, bilinear up-sampling to 128x128). Whole videos
are stored; when the KTH sequence file (``00sequences.txt``) is found, its per-video
frame ranges are stored as segments so clips can be kept inside them.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Any

from cttlstm_cli.data.prepare import Item, Job, PrepareResult, run_prepare
from cttlstm_cli.data.video import read_video
from cttlstm_cli.errors import CttlstmError

ACTIONS = ("boxing", "handclapping", "handwaving", "jogging", "running", "walking")
PROTOCOLS = ("openstl", "paper")
NAME_RE = re.compile(r"^person(\d{2})_([a-z]+)_d([1-4])(?:_uncomp)?\.avi$", re.IGNORECASE)
SEQ_LINE_RE = re.compile(r"^\s*(person\d+_[a-z]+_d\d)\s+frames\s+(.+)$", re.IGNORECASE)
TEST_PERSONS = range(17, 26)


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


def build_kth(
    source: str | Path,
    out: str | Path,
    protocol: str = "openstl",
    size: tuple[int, int] = (128, 128),
    val_persons: list[int] | None = None,
    sequences: str | Path | None = None,
    workers: int = 2,
    progress: bool = True,
) -> PrepareResult:
    """Prepare KTH from a folder of ``.avi`` files (any depth) or the six action ``.zip`` archives."""
    source, out = Path(source), Path(out)
    if protocol not in PROTOCOLS:
        raise CttlstmError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    val_persons = sorted({15, 16} if val_persons is None else set(val_persons))
    if any(not 1 <= p <= 16 for p in val_persons):
        raise CttlstmError(f"--val-persons must be training persons 1-16, got {val_persons}")
    if not source.exists():
        raise CttlstmError(f"SOURCE not found: {source}")

    # (key, path, member, name): loose files first, then zip members
    if source.is_file():
        files = [source]
        base = source.parent
    else:
        files = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in (".avi", ".zip"))
        base = source
    seq_file = Path(sequences) if sequences is not None else next(iter(sorted(source.rglob("00sequences.txt"))), None) if source.is_dir() else None
    if sequences is not None and not seq_file.is_file():
        raise CttlstmError(f"--sequences file not found: {sequences}")
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
    return run_prepare(
        out,
        "kth",
        options,
        ordered,
        tuple(size),
        1,
        workers=workers,
        provenance={"protocol": protocol, "sequences_file": seq_file.name if seq_file else None},
        extra={"protocol": protocol, "persons": persons, "segments": bool(segments_by_video)},
        label_names=list(ACTIONS),
        pre_skipped=pre_skipped,
        progress=progress,
    )
