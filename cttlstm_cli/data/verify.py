"""Check a prepared dataset end to end: ``cttlstm prepare --verify DIR``.

:func:`verify_dataset` first refuses, in one line, what is no dataset it can check: a
manifest that breaks the schema, shards whose frames are not the manifest's frame size,
channels or dtype, a source in two splits. Then it reads every byte once and reports per
shard: each listed shard is there with the size and sha256 the manifest records (datasets
prepared before checksums were recorded skip that check), every chunk of every video
reads back (which runs HDF5's fletcher32 checksum where the shard has it, and gzip), and
the videos and frames found add up to what the manifest says. It never changes a file.

    result = verify_dataset("data/kth")
    print(result.report())
    raise SystemExit(0 if result.ok else 1)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cttlstm_cli.data import shards as fmt
from cttlstm_cli.errors import CttlstmError


@dataclass
class ShardCheck:
    """What :func:`verify_dataset` found for one shard."""

    split: str
    file: str
    problems: list[str] = field(default_factory=list)
    videos: int = 0
    frames: int = 0
    #: which checks ran: "size", "sha256", "fletcher32" (some are absent for older datasets)
    checked: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def line(self) -> str:
        """One report line: ``ok      train-00000.h5  ...`` or ``DAMAGED train-00000.h5: ...``."""
        if self.ok:
            how = ", ".join(self.checked) or "readable"
            return f"ok       {self.file}  {self.videos:,} videos, {self.frames:,} frames ({how})"
        return f"DAMAGED  {self.file}: {'; '.join(self.problems)}"


@dataclass
class VerifyResult:
    """The outcome of :func:`verify_dataset`: per-shard checks plus dataset-level problems."""

    root: Path
    shards: list[ShardCheck] = field(default_factory=list)
    #: problems that belong to no single shard (manifest, split totals, leftovers)
    problems: list[str] = field(default_factory=list)
    #: remarks that are not problems (e.g. a dataset prepared before checksums existed)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing is wrong: every shard and the manifest check out."""
        return not self.problems and all(s.ok for s in self.shards)

    @property
    def damaged(self) -> list[ShardCheck]:
        """The shards with a problem."""
        return [s for s in self.shards if not s.ok]

    def lines(self) -> list[str]:
        """The report, one line each: shards, then dataset problems and notes, then a verdict."""
        out = [s.line() for s in self.shards]
        out += [f"problem: {p}" for p in self.problems]
        out += [f"note: {n}" for n in self.notes]
        out.append(self.summary())
        return out

    def summary(self) -> str:
        """The verdict in one line."""
        if self.ok:
            return f"{self.root}: all {len(self.shards)} shard(s) verified"
        bad = self.damaged
        what = [f"{len(bad)} of {len(self.shards)} shard(s) damaged"] if bad else []
        what += [f"{len(self.problems)} other problem(s)"] if self.problems else []
        hint = (
            "delete the damaged shards and run the same 'cttlstm prepare' again to rebuild them"
            if bad and not self.problems
            else "run the same 'cttlstm prepare' again, or prepare into a new --out"
        )
        return f"{self.root}: {', '.join(what)}; {hint}"

    def report(self) -> str:
        """:meth:`lines` joined with newlines."""
        return "\n".join(self.lines())


def verify_dataset(out: str | Path, progress: Callable[[str, int, int], None] | None = None) -> VerifyResult:
    """Check the prepared dataset in ``out`` (see the module doc) and return what was found.

    Raises CttlstmError (one line) when ``out`` is no dataset this cttlstm can read, before
    reading any frames: no folder, no ``manifest.json``, a manifest that is unreadable or
    breaks the schema (:mod:`cttlstm_cli.data.manifest`), shards whose frames are not the
    manifest's ``frame_size``, ``channels`` or ``dtype``, or a source in two splits
    (:func:`cttlstm_cli.data.shards.check_shards`, on every shard that can be read). Damage to
    shards is reported in the result. ``progress(file, done, total)`` is called after each shard.
    """
    root = Path(out)
    if not root.is_dir():
        raise CttlstmError(f"--verify: {root} is not a folder")
    result = VerifyResult(root)
    manifest_path = root / fmt.MANIFEST_NAME
    if not manifest_path.is_file():
        state = ""
        if (root / fmt.STATE_NAME).is_file():
            state = " (an interrupted prepare: run the same 'cttlstm prepare' again to finish it)"
        raise CttlstmError(f"--verify: no prepared dataset at {root} (missing {fmt.MANIFEST_NAME}){state}")
    manifest = fmt.read_manifest(root)
    fmt.check_shards(root, manifest)
    splits = manifest["splits"]
    layout = ([*manifest["frame_size"], manifest["channels"]], manifest.get("dtype", fmt.DTYPE))
    todo: list[tuple[str, str, dict[str, Any] | None]] = []
    for split, summary in splits.items():
        sums = fmt.shard_checksums(manifest, split)
        for name in summary.get("shards", []):
            todo.append((split, name, sums.get(name)))
    if todo and all(rec is None for _, _, rec in todo):
        result.notes.append(
            "the manifest records no shard checksums (prepared by an older cttlstm): sizes and sha256 not checked"
        )
    for i, (split, name, recorded) in enumerate(todo):
        result.shards.append(_check_shard(root / name, split, recorded, layout))
        if progress is not None:
            progress(name, i + 1, len(todo))
    for split, summary in splits.items():
        mine = [s for s in result.shards if s.split == split]
        if any(not s.ok for s in mine):
            continue  # a damaged shard's counts say nothing more
        for key, got in (("videos", sum(s.videos for s in mine)), ("frames", sum(s.frames for s in mine))):
            want = summary.get(key)
            if want is not None and int(want) != got:
                result.problems.append(
                    f"split '{split}': the manifest records {int(want):,} {key}, the shards hold {got:,}"
                )
    listed = {name for _, name, _ in todo}
    strays = sorted(p.name for p in root.glob("*.h5") if p.name not in listed)
    strays += sorted(p.name for p in root.glob(".*.h5.partial"))
    if strays:
        result.notes.append(f"files the manifest does not list (ignored by readers): {', '.join(strays)}")
    return result


def _check_shard(path: Path, split: str, recorded: dict[str, Any] | None, layout: tuple[list[int], str]) -> ShardCheck:
    check = ShardCheck(split, path.name)
    if not path.is_file():
        check.problems.append("missing")
        return check
    size = path.stat().st_size
    if recorded is not None and recorded.get("bytes") is not None:
        check.checked.append("size")
        if size != int(recorded["bytes"]):
            what = "truncated" if size < int(recorded["bytes"]) else "changed"
            check.problems.append(f"{what}: {size:,} bytes, the manifest records {int(recorded['bytes']):,}")
    if recorded is not None and recorded.get("sha256") and not check.problems:  # a wrong size says it already
        check.checked.append("sha256")
        try:
            got = fmt.file_sha256(path)
        except OSError as err:
            denied = fmt.unreadable_shard(path, err)
            check.problems.append(_reason(denied, path) if denied else f"cannot be read ({err.strerror or err})")
            return check
        if got != recorded["sha256"]:
            check.problems.append(f"sha256 {got[:12]}... differs from the manifest's {str(recorded['sha256'])[:12]}...")
    _read_everything(path, check, layout)
    return check


def _read_everything(path: Path, check: ShardCheck, layout: tuple[list[int], str]) -> None:
    """Open the shard and read every chunk of every dataset; problems go to ``check``, among them
    a video whose ``[H, W, C]`` or dtype is not ``layout``, the manifest's."""
    try:
        f = fmt.open_shard(path)
    except fmt.ShardError as err:
        check.problems.append(_reason(err, path))
        return
    with f:
        try:
            if not f.attrs.get("complete", False):
                check.problems.append("not marked complete")
            lengths = np.asarray(f["lengths"][()])
            f["labels"][()]
            json.loads(f.attrs["segments_json"])
            keys = sorted(f["videos"].keys())
        except fmt.READ_ERRORS as err:
            check.problems.append(f"index unreadable ({fmt.describe_read_error(err)})")
            return
        if len(keys) != len(lengths):
            check.problems.append(f"{len(keys)} videos stored, the index lists {len(lengths)}")
        fletcher = True
        for j, key in enumerate(keys):
            try:
                ds = f["videos"][key]
                fletcher = fletcher and bool(ds.fletcher32)
                step = ds.chunks[0] if ds.chunks else max(1, ds.shape[0])
                for start in range(0, ds.shape[0], step):  # one chunk row at a time: bounded memory
                    ds[start : start + step]
            except fmt.READ_ERRORS as err:
                check.problems.append(f"videos/{key}: {fmt.describe_read_error(err)}")
                continue
            if j < len(lengths) and ds.shape[0] != int(lengths[j]):
                check.problems.append(f"videos/{key} holds {ds.shape[0]} frames, the index says {int(lengths[j])}")
            if ([int(n) for n in ds.shape[1:]], str(ds.dtype)) != layout:
                check.problems.append(
                    f"videos/{key} holds {str(ds.dtype)} frames of {list(ds.shape[1:])}, the manifest records "
                    f"{layout[1]} {layout[0]} ([H, W, C])"
                )
        if keys and fletcher:
            check.checked.append("fletcher32")
        check.videos, check.frames = len(lengths), int(lengths.sum())


def _reason(err: fmt.ShardError, path: Path) -> str:
    """The problem part of a ShardError's message ("is damaged (X); ..." -> "X")."""
    text = str(err)
    text = text.removeprefix(f"shard {path} ").split("; ", 1)[0]
    if text.startswith("is damaged (") and text.endswith(")"):
        return text[len("is damaged (") : -1]
    return text.removeprefix("is ")
