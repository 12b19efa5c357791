"""The on-disk format of a prepared dataset: ``manifest.json`` plus HDF5 shards.

Layout of a prepared folder::

    DIR/manifest.json            # written last, atomically: its presence means "complete"
    DIR/.prepare-state.json      # options of a prepare in progress (removed when complete)
    DIR/train-00000.h5           # shards, one or more per split, each at most ~1 GB of frames
    DIR/.train-00001.h5.partial  # a shard being written (never read as valid)

Each shard holds a group ``videos`` with one uint8 dataset ``[T, H, W, C]`` per video
(or Moving-MNIST sequence), chunked per group of frames and gzip-compressed, with
attributes ``name``, ``source``, ``label`` (-1: none) and, for KTH, ``segments``
(``[[start, stop), ...]`` 0-based frame ranges). Shard-level datasets ``lengths``,
``labels`` and attribute ``segments_json`` let a reader index a shard without touching
any frames. A shard's attribute ``consumed_json`` records the job keys (sources) it
covers, including skipped ones, which is what resuming an interrupted prepare uses.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from cttlstm_cli.atomic import write_json_atomic
from cttlstm_cli.errors import CttlstmError

#: bump when the layout changes in a way old readers cannot handle
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
STATE_NAME = ".prepare-state.json"
#: a shard is closed once the (uncompressed) frames it holds pass this many bytes
SHARD_BYTES = 1 << 30
#: frames per HDF5 chunk: small enough that a 20-frame clip reads little more than itself
CHUNK_FRAMES = 10
SPLITS = ("train", "val", "test")


def write_manifest(root: str | Path, manifest: dict[str, Any]) -> Path:
    """Write ``root/manifest.json`` atomically; returns its path."""
    path = Path(root) / MANIFEST_NAME
    write_json_atomic(path, manifest)
    return path


def read_manifest(root: str | Path) -> dict[str, Any]:
    """Read and sanity-check ``root/manifest.json``; a missing or foreign file is a CttlstmError."""
    path = Path(root) / MANIFEST_NAME
    if not path.is_file():
        raise CttlstmError(f"no prepared dataset at {root} (missing {MANIFEST_NAME}); run 'cttlstm prepare' first")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CttlstmError(f"unreadable manifest {path}: {err}") from None
    if not isinstance(manifest, dict) or "splits" not in manifest or "frame_size" not in manifest:
        raise CttlstmError(f"{path} is not a cttlstm dataset manifest")
    version = manifest.get("format_version", 0)
    if version > FORMAT_VERSION:
        raise CttlstmError(f"{path} has format version {version}; this cttlstm reads up to {FORMAT_VERSION}, please upgrade")
    return manifest


def write_state(root: Path, options: dict[str, Any]) -> None:
    """Record the options of a prepare in progress (so a re-run can resume or refuse)."""
    write_json_atomic(root / STATE_NAME, {"format_version": FORMAT_VERSION, "options": options})


def read_state(root: Path) -> dict[str, Any] | None:
    """Options of an interrupted prepare in ``root``, or None."""
    path = root / STATE_NAME
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text()).get("options")
    except (OSError, ValueError, AttributeError):
        return None


def shard_name(split: str, index: int) -> str:
    """File name of a split's ``index``-th shard."""
    return f"{split}-{index:05d}.h5"


def partial_path(path: Path) -> Path:
    """Where a shard lives while it is written: hidden, and not ending in ``.h5``."""
    return path.with_name(f".{path.name}.partial")


class ShardWriter:
    """Writes one shard under a temporary name; :meth:`close` renames it into place.

    A shard that was never closed (crash, Ctrl-C) stays ``.NAME.h5.partial`` and is
    deleted by the next prepare: only renamed files count as complete.
    """

    def __init__(self, path: Path, compression_level: int = 1) -> None:
        self.path = path
        self.tmp = partial_path(path)
        self.tmp.unlink(missing_ok=True)
        self._file = h5py.File(self.tmp, "w")
        self._group = self._file.create_group("videos")
        self._level = compression_level
        self.lengths: list[int] = []
        self.labels: list[int] = []
        self.segments: list[list[list[int]] | None] = []
        self.sources: list[str] = []
        self.consumed: list[str] = []
        self.skipped: list[dict[str, str]] = []
        self.nbytes = 0

    def add(
        self,
        frames: np.ndarray,
        name: str,
        source: str,
        label: int | None = None,
        segments: list[list[int]] | None = None,
    ) -> None:
        """Append one video ``[T, H, W, C]`` uint8."""
        if frames.dtype != np.uint8 or frames.ndim != 4:
            raise ValueError(f"expected uint8 [T, H, W, C], got {frames.dtype} {frames.shape}")
        idx = len(self.lengths)
        chunk = (min(CHUNK_FRAMES, frames.shape[0]),) + frames.shape[1:]
        ds = self._group.create_dataset(
            f"{idx:06d}", data=frames, chunks=chunk, compression="gzip", compression_opts=self._level, shuffle=False
        )
        ds.attrs["name"] = name
        ds.attrs["source"] = source
        ds.attrs["label"] = -1 if label is None else int(label)
        if segments:
            ds.attrs["segments"] = np.asarray(segments, dtype=np.int64)
        self.lengths.append(int(frames.shape[0]))
        self.labels.append(-1 if label is None else int(label))
        self.segments.append(segments)
        self.sources.append(source)
        self.nbytes += frames.nbytes

    @property
    def videos(self) -> int:
        return len(self.lengths)

    def close(self) -> dict[str, Any]:
        """Write the shard index, flush, and rename into place; returns the shard's manifest entry."""
        f = self._file
        f.create_dataset("lengths", data=np.asarray(self.lengths, dtype=np.int64))
        f.create_dataset("labels", data=np.asarray(self.labels, dtype=np.int64))
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["segments_json"] = json.dumps(self.segments)
        f.attrs["sources_json"] = json.dumps(self.sources)
        f.attrs["consumed_json"] = json.dumps(self.consumed)
        f.attrs["skipped_json"] = json.dumps(self.skipped)
        f.attrs["complete"] = True
        f.close()
        os.replace(self.tmp, self.path)
        return shard_entry(self.path)

    def abort(self) -> None:
        """Close and delete the temporary file."""
        try:
            self._file.close()
        finally:
            self.tmp.unlink(missing_ok=True)


def shard_entry(path: Path) -> dict[str, Any]:
    """Summary of a complete shard, as stored in the manifest and used to resume."""
    with h5py.File(path, "r") as f:
        if not f.attrs.get("complete", False):
            raise CttlstmError(f"{path} is not a complete shard")
        lengths = f["lengths"][()]
        return {
            "file": path.name,
            "videos": int(len(lengths)),
            "frames": int(lengths.sum()),
            "sources": json.loads(f.attrs["sources_json"]),
            "consumed": json.loads(f.attrs["consumed_json"]),
            "skipped": json.loads(f.attrs["skipped_json"]),
            "labels": [int(x) for x in f["labels"][()]],
        }


def read_shard_index(path: Path) -> tuple[np.ndarray, np.ndarray, list[list[list[int]] | None]]:
    """(lengths, labels, segments) of a shard, without reading any frames."""
    with h5py.File(path, "r") as f:
        return f["lengths"][()], f["labels"][()], json.loads(f.attrs["segments_json"])
