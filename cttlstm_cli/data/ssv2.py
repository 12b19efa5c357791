"""Something-Something V2: ``.webm`` videos with the label JSON files; optional 41-category subset.

Splits: ``train`` is the official training list minus a seeded ``val_fraction`` held out
as ``val``; ``test`` is the official validation list (the official test list has no labels).
Labels are template ids: the official ids from ``something-something-v2-labels.json``,
or with ``--subset`` the template's position in the subset file; the subset's activity
groups are stored in the manifest as ``groups`` (group -> label ids).
"""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from cttlstm_cli.data.prepare import Item, Job, PrepareResult, require_folder, run_prepare, source_fingerprint
from cttlstm_cli.data.video import read_video
from cttlstm_cli.errors import CttlstmError

TRAIN_JSON = "something-something-v2-train.json"
VAL_JSON = "something-something-v2-validation.json"
LABELS_JSON = "something-something-v2-labels.json"
#: where SSv2 comes from: cttlstm cannot fetch it, each user must accept its licence there
SSV2_URL = "https://developer.qualcomm.com/software/ai-datasets/something-something"


def source_hint() -> str:
    """One line for ``prepare ssv2`` without SOURCE: where to get SSv2 and what to pass."""
    return (
        f"ssv2 needs SOURCE: Something-Something V2 cannot be downloaded by cttlstm - accept its licence and download it "
        f"yourself at {SSV2_URL}, unpack the <id>.webm videos into one folder and the label files ({TRAIN_JSON}, "
        f"{VAL_JSON}, {LABELS_JSON}) beside or inside it, then run 'cttlstm prepare ssv2 VIDEO_FOLDER --out DIR' "
        "(add --labels LABEL_FOLDER when the label files are elsewhere)"
    )


def normalize_template(text: str) -> str:
    """'Putting [something] onto [something]' and 'Putting something onto something' match."""
    return re.sub(r"\s+", " ", text.replace("[", "").replace("]", "")).strip().lower()


def load_subset(subset: str | Path) -> dict[str, list[str]]:
    """Groups -> templates: ``"41"`` for the bundled subset, or a user JSON (``{"groups": {...}}`` or ``{group: [...]}``)."""
    if str(subset) == "41":
        text = resources.files("cttlstm_cli.data").joinpath("ssv2_subset41.json").read_text()
        origin = "bundled ssv2_subset41.json"
    else:
        path = Path(subset)
        if not path.is_file():
            raise CttlstmError(f"--subset must be 41 or a JSON file; not found: {subset}")
        text, origin = path.read_text(), str(path)
    try:
        data = json.loads(text)
    except ValueError as err:
        raise CttlstmError(f"--subset {origin}: invalid JSON ({err})") from None
    groups = data.get("groups", data) if isinstance(data, dict) else None
    if not isinstance(groups, dict) or not all(isinstance(v, list) and all(isinstance(t, str) for t in v) for v in groups.values()):
        raise CttlstmError(f"--subset {origin}: expected {{group: [template, ...]}}")
    return groups


def _find(name: str, places: list[Path]) -> Path:
    for place in places:
        if (place / name).is_file():
            return place / name
        hits = sorted(place.rglob(name)) if place.is_dir() else []
        if hits:
            return hits[0]
    raise CttlstmError(f"SSv2 label file {name} not found in {', '.join(map(str, places))} (use --labels DIR)")


def _load_list(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CttlstmError(f"unreadable {path.name}: {err}") from None
    if not isinstance(data, list):
        raise CttlstmError(f"{path.name}: expected a list of {{id, template}} entries")
    return data


def _decode(path: str, size: tuple[int, int], channels: int, max_frames: int | None, label: int) -> list[Item]:
    frames = read_video(path, size=size, channels=channels, max_frames=max_frames)
    return [Item(Path(path).stem, frames, Path(path).name, label)]


def build_ssv2(
    source: str | Path,
    out: str | Path,
    subset: str | Path | None = None,
    labels_dir: str | Path | None = None,
    size: tuple[int, int] = (128, 128),
    channels: int = 3,
    max_frames: int | None = None,
    val_fraction: float = 0.05,
    seed: int = 0,
    workers: int = 2,
    progress: bool = True,
) -> PrepareResult:
    """Prepare SSv2 (optionally a template subset) from its video folder and label JSON files."""
    source, out = require_folder(source), Path(out)
    places = [Path(labels_dir)] if labels_dir is not None else [source, source.parent]
    label_files = {name: _find(name, places) for name in (TRAIN_JSON, VAL_JSON, LABELS_JSON)}
    train_list = _load_list(label_files[TRAIN_JSON])
    val_list = _load_list(label_files[VAL_JSON])
    try:
        official = {normalize_template(k): int(v) for k, v in json.loads(label_files[LABELS_JSON].read_text()).items()}
    except (ValueError, AttributeError) as err:
        raise CttlstmError(f"unreadable {LABELS_JSON}: {err}") from None

    groups_out: dict[str, list[int]] | None = None
    missing: list[str] = []
    if subset is not None:
        groups = load_subset(subset)
        names: list[str] = []
        groups_out = {}
        for group, templates in groups.items():
            groups_out[group] = []
            for t in templates:
                groups_out[group].append(len(names))
                names.append(t)
                if normalize_template(t) not in official:
                    missing.append(t)
        label_of = {normalize_template(t): i for i, t in enumerate(names)}
    else:
        names = [""] * (max(official.values()) + 1)
        for k, v in json.loads(label_files[LABELS_JSON].read_text()).items():
            names[int(v)] = k
        label_of = official

    webm = {p.stem: p for p in source.rglob("*.webm")}
    if not webm:
        raise CttlstmError(f"no .webm videos found in {source}")
    pre_skipped: list[dict[str, str]] = []
    entries: dict[str, list[tuple[str, int]]] = {"train": [], "test": []}
    listed: dict[str, str] = {}  # id -> the labels file that listed it first: one video, one split
    for split, listing, file in (("train", train_list, TRAIN_JSON), ("test", val_list, VAL_JSON)):
        for e in listing:
            label = label_of.get(normalize_template(str(e.get("template", e.get("label", "")))))
            if label is None:
                continue  # outside the subset
            vid = str(e.get("id"))
            if vid not in webm:
                pre_skipped.append({"source": f"{vid}.webm", "reason": "listed in the labels but the video file is missing"})
                continue
            if vid in listed:
                pre_skipped.append({"source": f"{vid}.webm", "reason": f"listed again in {file} (kept as listed in {listed[vid]})"})
                continue
            listed[vid] = file
            entries[split].append((vid, label))
    # a seeded slice of the official training list becomes validation
    train_entries = sorted(entries["train"], key=lambda x: int(x[0]) if x[0].isdigit() else x[0])
    held = set(np.random.default_rng(seed).permutation(len(train_entries))[: int(round(val_fraction * len(train_entries)))])
    split_entries = {
        "train": [x for i, x in enumerate(train_entries) if i not in held],
        "val": [x for i, x in enumerate(train_entries) if i in held],
        "test": sorted(entries["test"], key=lambda x: int(x[0]) if x[0].isdigit() else x[0]),
    }
    jobs = {
        split: [Job(f"{vid}.webm", _decode, (str(webm[vid]), tuple(size), channels, max_frames, label)) for vid, label in items]
        for split, items in split_entries.items()
    }
    if not any(jobs.values()):
        raise CttlstmError(f"no labelled SSv2 videos (of the chosen subset) found in {source}")
    options: dict[str, Any] = {
        "dataset": "ssv2",
        "source": str(source.resolve()),
        "subset": None if subset is None else (str(subset) if str(subset) == "41" else str(Path(subset).resolve())),
        "size": list(size),
        "channels": channels,
        "max_frames": max_frames,
        "val_fraction": val_fraction,
        "seed": seed,
    }
    extra: dict[str, Any] = {"subset": options["subset"]}
    if groups_out is not None:
        extra["groups"] = groups_out
        extra["subset_missing"] = missing
    # the validation hold-out is a seeded shuffle of the whole list: a resume must see the same files
    read = [webm[vid] for items in split_entries.values() for vid, _ in items]
    read += list(label_files.values())
    return run_prepare(
        out, "ssv2", options, jobs, tuple(size), channels, workers=workers,
        provenance={"subset": options["subset"]}, extra=extra, label_names=names, pre_skipped=pre_skipped, progress=progress,
        source=source_fingerprint(source, read),
    )  # fmt: skip
