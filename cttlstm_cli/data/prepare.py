"""Shared orchestration of ``cttlstm prepare``: parallel decode, shards, skip list, resume.

A builder (mmnist, kth, ssv2, folder) turns its source into an ordered list of
:class:`Job` per split. Jobs run in a process pool (``workers``) and their results are
consumed *in job order*, so shard boundaries depend only on the inputs, never on
timing: an interrupted prepare, run again with the same options, keeps its complete
shards, deletes the partial one and redoes the rest.

Failures leave nothing half-written behind: a full disk (ENOSPC, EDQUOT, or EFBIG from a
file-size limit) is one line naming the file, the shard being written is deleted and the
complete ones are kept, so the same command resumes once there is room. Decoding workers
die with the prepare, even when it is killed with SIGKILL.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from cttlstm_cli import __version__
from cttlstm_cli.atomic import no_space_as_error
from cttlstm_cli.data import shards as fmt
from cttlstm_cli.errors import CttlstmError

_console = Console(stderr=True)


@dataclass
class Item:
    """One decoded video (or generated sequence), ready to be written to a shard."""

    name: str
    frames: np.ndarray  # uint8 [T, H, W, C]
    source: str
    label: int | None = None
    segments: list[list[int]] | None = None


@dataclass
class Job:
    """A unit of work: ``fn(*args)`` returns a list of :class:`Item` or raises (-> skipped)."""

    key: str  # stable identity (usually the source file name): the skip list and resume use it
    fn: Callable[..., list[Item]]
    args: tuple = ()
    weight: int = 1  # progress-bar units (videos, or sequences for Moving-MNIST)


@dataclass
class PrepareResult:
    """What a prepare did, for the CLI to report."""

    root: Path
    manifest: dict[str, Any]
    up_to_date: bool = False
    resumed_shards: int = 0
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what was done besides preparing (a download, say)


def require_folder(source: str | Path) -> Path:
    """``source`` as a Path, or a one-line error when it is not an existing folder."""
    path = Path(source)
    if not path.is_dir():
        raise CttlstmError(f"SOURCE not found or not a folder: {path}")
    return path


def normalize_options(options: dict[str, Any]) -> dict[str, Any]:
    """JSON round trip, so tuples/lists and Paths compare equal to what a manifest holds."""
    return json.loads(json.dumps(options, default=str))


def _diff(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    keys = sorted(set(a) | set(b))
    return [f"{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in keys if a.get(k) != b.get(k)]


def check_output(out: Path, options: dict[str, Any]) -> dict[str, Any] | None:
    """Decide what to do with ``out`` before any work.

    Returns the existing manifest when ``out`` is already prepared with the same
    options (nothing to do), None when the prepare should (re)start or resume, and
    raises CttlstmError when ``out`` holds something else: nothing is ever overwritten.
    A prepared dataset whose shards are missing or have another size than the manifest
    records is turned back into an interrupted prepare (the damaged shards deleted, the
    manifest removed), so that this run rebuilds exactly those shards.
    """
    options = normalize_options(options)
    if out.exists() and not out.is_dir():
        raise CttlstmError(f"--out {out} exists and is not a folder")
    manifest_path = out / fmt.MANIFEST_NAME
    if manifest_path.is_file():
        manifest = fmt.read_manifest(out)
        old = manifest.get("provenance", {}).get("options", {})
        if old != options:
            raise CttlstmError(
                f"{out} already holds a dataset prepared with other options ({'; '.join(_diff(old, options)[:3])}); "
                "use another --out or delete it"
            )
        damaged = _damaged_shards(out, manifest)
        if not damaged:
            return manifest
        with no_space_as_error(out / fmt.STATE_NAME):
            fmt.write_state(out, options)
        for path in damaged:
            path.unlink(missing_ok=True)
        manifest_path.unlink()
        return None
    state = fmt.read_state(out) if out.is_dir() else None
    if state is not None:
        if state != options:
            raise CttlstmError(
                f"{out} holds an interrupted prepare with other options ({'; '.join(_diff(state, options)[:3])}); "
                "use another --out or delete it"
            )
        return None
    if out.is_dir() and any(out.iterdir()):
        raise CttlstmError(f"--out {out} is not empty and is not a cttlstm dataset; use an empty or new folder")
    return None


def _damaged_shards(out: Path, manifest: dict[str, Any]) -> list[Path]:
    """Shards of a prepared dataset that are missing or not the size the manifest records (cheap: no reads)."""
    damaged = []
    for split, summary in manifest.get("splits", {}).items():
        sums = fmt.shard_checksums(manifest, split)
        for name in summary.get("shards", []):
            try:
                fmt.check_shard_file(out / name, sums.get(name))
            except fmt.ShardError:
                damaged.append(out / name)
    return damaged


#: Linux prctl option: the signal a process gets when its parent dies
_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """Make this worker die when ``parent`` does, even by SIGKILL (which runs no cleanup in the parent).

    A killed prepare would otherwise leave its pool's workers blocked on the task queue
    for good. Linux: PR_SET_PDEATHSIG; elsewhere, or if that fails, a thread polls the
    parent. The parent may already be gone before either is in place: checked last.
    """
    armed = False
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
    if not armed:
        threading.Thread(target=_watch_parent, args=(parent,), name="cttlstm-parent-watch", daemon=True).start()
    _exit_if_orphaned(parent)


def _watch_parent(parent: int, every: float = 1.0) -> None:
    while True:
        _exit_if_orphaned(parent)
        time.sleep(every)


def _exit_if_orphaned(parent: int) -> None:
    if os.getppid() != parent:  # re-parented: the prepare is gone, and so is whoever wanted this result
        os._exit(1)


_PARENT: int | None = None  # the prepare's pid, in a worker


def _worker_init(init: Callable[..., None] | None, initargs: tuple, parent: int | None = None) -> None:
    global _PARENT
    if parent is not None:
        _PARENT = parent
        _die_with_parent(parent)
    # Ctrl-C is the parent's to handle (it cancels the pool); workers would only print tracebacks
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # one decoder per core: torch's own thread pool would oversubscribe the cores
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass
    if init is not None:
        init(*initargs)


def _run_job(job: Job) -> list[Item]:
    if _PARENT is not None:  # also between jobs: a job can outlast a parent that has no PDEATHSIG
        _exit_if_orphaned(_PARENT)
    return job.fn(*job.args)


def _complete_shards(root: Path, split: str) -> list[dict[str, Any]]:
    """Complete shards of ``split`` from an earlier run (consecutive from 0); partial ones are deleted."""
    for stale in root.glob(f".{split}-*.h5.partial"):
        stale.unlink()
    entries = []
    index = 0
    while (root / fmt.shard_name(split, index)).is_file():
        path = root / fmt.shard_name(split, index)
        try:
            entries.append(fmt.shard_entry(path))
        except Exception:  # unreadable leftovers are redone, never trusted
            for later in root.glob(f"{split}-*.h5"):
                if int(later.stem.split("-")[1]) >= index:
                    later.unlink()
            break
        index += 1
    return entries


class _Pool:
    """Process pool, or in-process execution for ``workers <= 1`` (simpler, and debuggable)."""

    def __init__(self, workers: int, init: Callable[..., None] | None, initargs: tuple) -> None:
        self.workers = workers
        self.executor: ProcessPoolExecutor | None = None
        if workers > 1:
            # fork: workers inherit imports (fast start); the parent has no HDF5 file open yet
            ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
            self.executor = ProcessPoolExecutor(
                workers, mp_context=ctx, initializer=_worker_init, initargs=(init, initargs, os.getpid())
            )
        elif init is not None:
            init(*initargs)

    def ordered(self, jobs: list[Job]):
        """Yield ``(job, items | exception)`` in job order, keeping a few jobs in flight."""
        if self.executor is None:
            for job in jobs:
                try:
                    yield job, _run_job(job)
                except Exception as err:  # noqa: BLE001 - any failure to decode is a skip, not a crash
                    yield job, err
            return
        pending: deque[tuple[Job, Future]] = deque()
        it = iter(jobs)
        ahead = 2 * self.workers + 1  # bounded: decoded videos wait in memory
        for job in it:
            pending.append((job, self.executor.submit(_run_job, job)))
            if len(pending) >= ahead:
                break
        while pending:
            job, fut = pending.popleft()
            try:
                result: list[Item] | Exception = fut.result()
            except Exception as err:  # noqa: BLE001
                result = err
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt, self.executor.submit(_run_job, nxt)))
            yield job, result

    def close(self, cancel: bool = False) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=cancel)


def _reason(err: BaseException) -> str:
    from cttlstm_cli.errors import CttlstmError as _E

    return str(err) if isinstance(err, _E) else f"{type(err).__name__}: {err}"


@contextmanager
def _file_size_limit_is_an_error() -> Iterator[None]:
    """Ignore SIGXFSZ for the block (or decorated function), so a write past a file-size limit
    (``ulimit -f``) fails with EFBIG, which is reported like a full disk, instead of killing the
    process without a word."""
    try:
        previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    except (AttributeError, ValueError):  # no SIGXFSZ (Windows), or not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGXFSZ, previous)


@_file_size_limit_is_an_error()
def run_prepare(
    out: Path,
    dataset: str,
    options: dict[str, Any],
    jobs: dict[str, list[Job]],
    frame_size: tuple[int, int],
    channels: int,
    workers: int = 2,
    provenance: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    label_names: list[str] | None = None,
    pre_skipped: list[dict[str, str]] | None = None,
    init: Callable[..., None] | None = None,
    initargs: tuple = (),
    progress: bool = True,
    shard_bytes: int | None = None,
) -> PrepareResult:
    """Run every split's jobs into shards under ``out`` and write the manifest last.

    ``options`` identifies the prepare (a re-run with equal options resumes or is a
    no-op; other options are refused). ``pre_skipped`` lists sources the builder
    rejected before decoding (bad names, missing files). Returns a :class:`PrepareResult`.
    A full disk is a one-line CttlstmError naming the file; complete shards stay, so the
    same call resumes once there is room.
    """
    options = normalize_options(options)
    shard_bytes = shard_bytes or fmt.SHARD_BYTES  # looked up now, so tests can shrink shards
    existing = check_output(out, options)
    if existing is not None:
        return PrepareResult(out, existing, up_to_date=True)
    start = time.perf_counter()
    with no_space_as_error(out / fmt.STATE_NAME, fmt.RESUME_ADVICE):
        out.mkdir(parents=True, exist_ok=True)
        fmt.write_state(out, options)
    skipped: list[dict[str, str]] = list(pre_skipped or [])
    split_summaries: dict[str, dict[str, Any]] = {}
    resumed = 0
    pool = _Pool(workers, init, initargs)
    columns = (
        TextColumn("[bold]{task.description:<6}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    writer: fmt.ShardWriter | None = None
    try:
        with Progress(*columns, console=_console, disable=not progress) as bar:
            for split, split_jobs in jobs.items():
                done = _complete_shards(out, split)
                resumed += len(done)
                consumed = {k for e in done for k in e["consumed"]}
                for e in done:
                    skipped.extend(e["skipped"])
                todo = [j for j in split_jobs if j.key not in consumed]
                task = bar.add_task(split, total=sum(j.weight for j in split_jobs))
                bar.advance(task, sum(j.weight for j in split_jobs if j.key in consumed))
                entries = list(done)
                index = len(done)
                for job, result in pool.ordered(todo):
                    if writer is None:
                        writer = fmt.ShardWriter(out / fmt.shard_name(split, index))
                    writer.consumed.append(job.key)
                    if isinstance(result, BaseException):
                        entry = {"source": job.key, "reason": _reason(result)}
                        writer.skipped.append(entry)
                        skipped.append(entry)
                    else:
                        for item in result:
                            writer.add(item.frames, item.name, item.source, item.label, item.segments)
                    bar.advance(task, job.weight)
                    if writer.nbytes >= shard_bytes:  # close only between jobs: boundaries stay deterministic
                        entries.append(writer.close())
                        writer, index = None, index + 1
                if writer is not None:
                    if writer.videos:
                        entries.append(writer.close())
                    else:  # only skips since the last shard: nothing worth a file
                        writer.abort()
                    writer = None
                split_summaries[split] = _split_summary(entries)
    except BaseException:
        if writer is not None:
            writer.abort()
        pool.close(cancel=True)
        raise
    pool.close()
    total = sum(s["videos"] for s in split_summaries.values())
    if total == 0:
        first = f" (first: {skipped[0]['source']}: {skipped[0]['reason']})" if skipped else ""
        (out / fmt.STATE_NAME).unlink(missing_ok=True)
        raise CttlstmError(f"no readable videos in the source: {len(skipped)} skipped{first}")
    seconds = time.perf_counter() - start
    manifest: dict[str, Any] = {
        "format_version": fmt.FORMAT_VERSION,
        "dataset": dataset,
        "frame_size": [int(frame_size[0]), int(frame_size[1])],
        "channels": int(channels),
        "splits": split_summaries,
    }
    if label_names is not None:
        manifest["label_names"] = label_names
    manifest.update(extra or {})
    manifest["skipped"] = skipped
    manifest["provenance"] = {
        "tool": "cttlstm",
        "tool_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "workers": workers,
        "seconds": round(seconds, 2),
        **(provenance or {}),
        "options": options,
    }
    with no_space_as_error(out / fmt.MANIFEST_NAME, fmt.RESUME_ADVICE):  # write_manifest removes its temporary file
        fmt.write_manifest(out, manifest)
    (out / fmt.STATE_NAME).unlink(missing_ok=True)
    return PrepareResult(out, manifest, resumed_shards=resumed, seconds=seconds)


def _split_summary(entries: list[dict[str, Any]]) -> dict[str, Any]:
    sources: list[str] = []
    seen: set[str] = set()
    labels: list[int] = []
    for e in entries:
        for s in e["sources"]:
            if s not in seen:  # Moving-MNIST sequences share one source
                seen.add(s)
                sources.append(s)
        labels.extend(e["labels"])
    summary: dict[str, Any] = {
        "videos": sum(e["videos"] for e in entries),
        "frames": sum(e["frames"] for e in entries),
        "shards": [e["file"] for e in entries],
        "sources": sources,
        "checksums": {e["file"]: {"bytes": e["bytes"], "sha256": e["sha256"]} for e in entries},
    }
    if any(label >= 0 for label in labels):
        summary["labels"] = labels
    return summary


def default_workers() -> int:
    """All cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)
