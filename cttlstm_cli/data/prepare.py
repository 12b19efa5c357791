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

import hashlib
import json
import multiprocessing
import os
import re
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
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
from cttlstm_cli.atomic import no_space_as_error, require_output_folder
from cttlstm_cli.data import shards as fmt
from cttlstm_cli.errors import CttlstmError
from cttlstm_cli.locking import LOCK_NAME, RunLock, check_unlocked
from cttlstm_cli.rendering import printable

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


def source_fingerprint(base: Path, files: Iterable[Path]) -> dict[str, Any]:
    """What a prepare's source looked like: the number of ``files`` and a sha256 over their paths
    (relative to ``base``), sizes and modification times (``mtime_ns``), in sorted order.

    Cheap (one ``stat`` per file, no reads) and changed by any file added, removed, renamed,
    rewritten or touched. Files outside ``base`` (a labels folder elsewhere) count by their
    absolute path. Recorded in ``.prepare-state.json`` and in the manifest
    (``provenance.source_fingerprint``), it tells a resume whether its finished shards still
    belong to the source.
    """
    lines = []
    for path in files:
        try:
            st = path.stat()
            size, mtime = st.st_size, st.st_mtime_ns
        except OSError:  # gone (or unreadable) between listing and now: still a difference worth noticing
            size, mtime = -1, -1
        rel = os.fsencode(path.relative_to(base) if path.is_relative_to(base) else path.resolve())
        lines.append(b"%s\t%d\t%d" % (rel, size, mtime))
    lines.sort()
    return {"files": len(lines), "sha256": hashlib.sha256(b"\n".join(lines)).hexdigest()}


def _source_changed(then: dict[str, Any] | None, now: dict[str, Any] | None) -> str | None:
    """How the source differs from the recorded fingerprint, or None (also when either is unknown)."""
    if not isinstance(then, dict) or now is None or then == now:
        return None
    if then.get("files") != now["files"]:
        return f"{then.get('files')} files then, {now['files']} now"
    return f"{now['files']} files, some of them changed"


def _misplaced_source(consumed: dict[str, list[tuple[str, list[str]]]], assigned: dict[str, str]) -> str | None:
    """The first source that finished shards hold but this prepare does not assign to their split
    (gone from the source, or now in another split), or None: whether those shards can be kept."""
    for split, shards in consumed.items():
        for name, keys in shards:
            for key in keys:
                if assigned.get(key) != split:
                    now = f"now in the {assigned[key]} split" if key in assigned else "no longer in the source"
                    return f"{name} holds '{printable(key)}', {now}"
    return None


def _assign(jobs: dict[str, list[Job]]) -> dict[str, str]:
    """``{job key: split}``; a key in two splits (or twice in one) is refused before any work, so
    that splits are disjoint by construction."""
    assigned: dict[str, str] = {}
    for split, split_jobs in jobs.items():
        for job in split_jobs:
            if job.key in assigned:
                raise CttlstmError(
                    f"source '{printable(job.key)}' is assigned to both the {assigned[job.key]} and the {split} split; "
                    "each source must belong to one split"
                )
            assigned[job.key] = split
    return assigned


def _holds_other_files(out: Path) -> bool:
    """Whether the folder ``out`` holds anything besides the prepare lock (which stays after every prepare)."""
    return any(p.name != LOCK_NAME for p in out.iterdir())


def inspect_output(out: Path, options: dict[str, Any]) -> str:
    """What ``out`` is, changing nothing: ``"prepared"``, ``"interrupted"`` (both with these
    options) or ``"new"``; a CttlstmError when it is a file, another prepare's output, or a
    folder of other files."""
    require_output_folder(out)
    if (out / fmt.MANIFEST_NAME).is_file():
        manifest = fmt.read_manifest(out)
        old = manifest.get("provenance", {}).get("options", {})
        if old != options:
            raise CttlstmError(
                f"{out} already holds a dataset prepared with other options ({'; '.join(_diff(old, options)[:3])}); "
                "use another --out or delete it"
            )
        return "prepared"
    state = fmt.read_state(out) if out.is_dir() else None
    if state is not None:
        if state != options:
            raise CttlstmError(
                f"{out} holds an interrupted prepare with other options ({'; '.join(_diff(state, options)[:3])}); "
                "use another --out or delete it"
            )
        return "interrupted"
    if out.is_dir() and _holds_other_files(out):
        raise CttlstmError(f"--out {out} is not empty and is not a cttlstm dataset; use an empty or new folder")
    return "new"


def check_output(
    out: Path,
    options: dict[str, Any],
    assigned: dict[str, str] | None = None,
    source: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Decide what to do with ``out`` before any work (the caller holds ``out``'s lock).

    Returns the existing manifest when ``out`` is already prepared with the same
    options (nothing to do), None when the prepare should (re)start or resume, and
    raises CttlstmError when ``out`` holds something else: nothing is ever overwritten.
    A prepared dataset whose shards are missing or have another size than the manifest
    records is turned back into an interrupted prepare (the damaged shards deleted, the
    manifest removed), so that this run rebuilds exactly those shards, but only when the
    source is still the one it was prepared from (``source``, the fingerprint of
    :func:`source_fingerprint`, and ``assigned``, each job key's split, against what the
    manifest and the intact shards record). Otherwise the rebuilt shards would mix two
    versions of the source, one clip perhaps in two splits: that is refused, changing nothing.
    """
    options = normalize_options(options)
    if inspect_output(out, options) != "prepared":
        return None
    manifest = fmt.read_manifest(out)
    damaged = _damaged_shards(out, manifest)
    if not damaged:
        return manifest
    changed = _source_changed(manifest.get("provenance", {}).get("source_fingerprint"), source)
    if changed is None and assigned is not None:
        intact: dict[str, list[tuple[str, list[str]]]] = {}
        for split, summary in manifest["splits"].items():
            for name in summary["shards"]:
                if out / name in damaged:
                    continue
                try:
                    intact.setdefault(split, []).append((name, fmt.read_shard_header(out / name).consumed or []))
                except fmt.ShardError:  # the right size but unreadable: rebuilt like a missing one
                    damaged.append(out / name)
        changed = _misplaced_source(intact, assigned)
    if changed is not None:
        names = ", ".join(p.name for p in damaged)
        raise CttlstmError(
            f"{out} has damaged shard(s) ({names}), but the source changed since it was prepared ({changed}): rebuilding "
            f"them would mix two versions of it; delete {out} (or choose another --out) to prepare the source anew"
        )
    with no_space_as_error(out / fmt.STATE_NAME):
        fmt.write_state(out, options, source)
    for path in damaged:
        path.unlink(missing_ok=True)
    (out / fmt.MANIFEST_NAME).unlink()
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


#: the files a prepare writes into ``--out`` besides the manifest: complete and partial shards
_SHARD_FILE = re.compile(r"(train|val|test)-\d{5}\.h5|\.(train|val|test)-\d{5}\.h5\.partial")


def _discard_shards(out: Path) -> int:
    """Delete every complete and partial shard in ``out`` (only names a prepare writes); returns how many complete ones."""
    complete = 0
    for path in sorted(out.iterdir()):
        if _SHARD_FILE.fullmatch(path.name) and path.is_file():
            complete += not path.name.startswith(".")
            path.unlink()
    return complete


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


def _start_method() -> str:
    """How the pool starts its workers. fork: they inherit the imports (a fast start), and the parent has
    no HDF5 file open yet. spawn where fork is missing, or once this process has used PyAV (ffmpeg): a
    forked worker inherits ffmpeg's thread pools without their threads (swscale's slice threads), and
    freeing them there waits for good on a thread that is not theirs (a worker hung so, in a test whose
    process had written videos before preparing them)."""
    if "fork" not in multiprocessing.get_all_start_methods() or "av" in sys.modules:
        return "spawn"
    return "fork"


class _Pool:
    """Process pool, or in-process execution for ``workers <= 1`` (simpler, and debuggable)."""

    def __init__(self, workers: int, init: Callable[..., None] | None, initargs: tuple) -> None:
        self.workers = workers
        self.executor: ProcessPoolExecutor | None = None
        if workers > 1:
            ctx = multiprocessing.get_context(_start_method())
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


def _item_problem(items: list[Item], frame_size: tuple[int, int], channels: int) -> str | None:
    """Why a job's decoded items cannot be stored as videos of this dataset, or None.

    Decoders refuse empty and zero-size clips themselves (:func:`cttlstm_cli.data.video.decode`);
    this guards the shards' invariant (every video uint8 ``[T>=1, H, W, C]`` at the manifest's
    layout) for any builder, so that one odd clip is skipped rather than stored wrong.
    """
    want = (int(frame_size[0]), int(frame_size[1]), int(channels))
    for item in items:
        frames = item.frames
        if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4:
            what = f"{frames.dtype} {list(frames.shape)}" if isinstance(frames, np.ndarray) else type(frames).__name__
            return f"decoded to {what}, not uint8 [T, H, W, C]"
        if frames.shape[0] == 0:
            return "no frames"
        if tuple(frames.shape[1:]) != want:
            return f"frames of {list(frames.shape[1:])} (H, W, C), the dataset stores {list(want)}"
    return None


def _coverage_problem(
    out: Path, built: dict[str, list[dict[str, Any]]], assigned: dict[str, str], unrecorded: set[str]
) -> str | None:
    """Whether the finished shards cover every source exactly once, in the split it is assigned to;
    the first problem, or None. Checked before the manifest is written, also after a resume.
    ``unrecorded`` are sources skipped at the end of a split, which no shard records (no shard
    is written for skips alone)."""
    misplaced = _misplaced_source({s: [(e["file"], e["consumed"]) for e in entries] for s, entries in built.items()}, assigned)
    if misplaced is not None:
        return f"{out}: shard {misplaced}"
    shared = fmt.shared_source(out, ((s, e["file"], e["consumed"]) for s, entries in built.items() for e in entries))
    if shared is not None:
        return shared
    covered = {key for entries in built.values() for e in entries for key in e["consumed"]} | unrecorded
    for key, split in assigned.items():
        if key not in covered:
            return f"{out}: source '{printable(key)}' of the {split} split is in no shard"
    return None


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
    source: dict[str, Any] | None = None,
) -> PrepareResult:
    """Run every split's jobs into shards under ``out`` and write the manifest last.

    ``options`` identifies the prepare (a re-run with equal options resumes or is a
    no-op; other options are refused). ``pre_skipped`` lists sources the builder
    rejected before decoding (bad names, missing files). Returns a :class:`PrepareResult`.
    A full disk is a one-line CttlstmError naming the file; complete shards stay, so the
    same call resumes once there is room.

    One prepare at a time writes to ``out``: it holds ``out/.lock``
    (:class:`cttlstm_cli.locking.RunLock`) throughout, and a second one is refused in one
    line before it changes anything.

    ``source`` is the fingerprint of what the jobs read (:func:`source_fingerprint`), for
    builders whose split assignment depends on the whole source (a seeded shuffle of the
    file list). Resuming an interrupted prepare whose source has changed since (or whose
    finished shards hold a source this run assigns to another split, or to none) would mix
    two versions of the source, a deleted clip kept and one clip in two splits: the finished
    shards are deleted instead and the prepare starts over, with a note in the result. (Only
    compute is lost: an interrupted prepare is no dataset yet. A *complete* dataset is never
    discarded that way; see :func:`check_output`.) Before the manifest is written, the shards
    are checked to cover every job exactly once, in its split.
    """
    options = normalize_options(options)
    assigned = _assign(jobs)
    check_unlocked(out)  # "in use" says more than what a running prepare's files look like
    inspect_output(out, options)  # refusals first: no lock file is left in a folder that is not ours
    lock = RunLock(out)
    lock.acquire()
    try:
        return _prepare_locked(
            out, dataset, options, jobs, assigned, frame_size, channels, workers, provenance, extra, label_names,
            pre_skipped, init, initargs, progress, shard_bytes or fmt.SHARD_BYTES, source,
        )  # fmt: skip
    finally:
        lock.release()


def _prepare_locked(
    out: Path,
    dataset: str,
    options: dict[str, Any],
    jobs: dict[str, list[Job]],
    assigned: dict[str, str],
    frame_size: tuple[int, int],
    channels: int,
    workers: int,
    provenance: dict[str, Any] | None,
    extra: dict[str, Any] | None,
    label_names: list[str] | None,
    pre_skipped: list[dict[str, str]] | None,
    init: Callable[..., None] | None,
    initargs: tuple,
    progress: bool,
    shard_bytes: int,
    source: dict[str, Any] | None,
) -> PrepareResult:
    """:func:`run_prepare`'s work, under ``out``'s lock."""
    notes: list[str] = []
    existing = check_output(out, options, assigned, source)
    if existing is not None:
        changed = _source_changed(existing.get("provenance", {}).get("source_fingerprint"), source)
        if changed is not None:
            notes.append(
                f"note: the source changed since {out} was prepared ({changed}); the dataset still holds the earlier "
                f"version: delete {out} or choose another --out to prepare the current one"
            )
        return PrepareResult(out, existing, up_to_date=True, notes=notes)
    start = time.perf_counter()
    record = fmt.read_state_record(out)  # None: a new prepare
    done = {split: _complete_shards(out, split) for split in jobs}
    if record is not None:
        changed = _source_changed(record.get("source_fingerprint"), source) or _misplaced_source(
            {s: [(e["file"], e["consumed"]) for e in entries] for s, entries in done.items()}, assigned
        )
        if changed is not None:
            dropped = _discard_shards(out)
            done = {split: [] for split in jobs}
            if dropped:
                notes.append(
                    f"note: the source changed since the interrupted prepare in {out} began ({changed}): "
                    f"its {dropped} finished shard(s) were deleted and the prepare started over"
                )
    with no_space_as_error(out / fmt.STATE_NAME, fmt.RESUME_ADVICE):
        fmt.write_state(out, options, source)
    skipped: list[dict[str, str]] = [{k: printable(str(v)) for k, v in e.items()} for e in pre_skipped or []]
    split_summaries: dict[str, dict[str, Any]] = {}
    built: dict[str, list[dict[str, Any]]] = {}
    unrecorded: set[str] = set()
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
                entries = list(done[split])
                resumed += len(entries)
                consumed = {k for e in entries for k in e["consumed"]}
                for e in entries:
                    skipped.extend(e["skipped"])
                todo = [j for j in split_jobs if j.key not in consumed]
                task = bar.add_task(split, total=sum(j.weight for j in split_jobs))
                bar.advance(task, sum(j.weight for j in split_jobs if j.key in consumed))
                index = len(entries)
                for job, result in pool.ordered(todo):
                    if writer is None:
                        writer = fmt.ShardWriter(out / fmt.shard_name(split, index))
                    writer.consumed.append(job.key)
                    problem = result if isinstance(result, BaseException) else _item_problem(result, frame_size, channels)
                    if problem is not None:
                        reason = _reason(problem) if isinstance(problem, BaseException) else problem
                        entry = {"source": printable(job.key), "reason": printable(reason)}
                        writer.skipped.append(entry)
                        skipped.append(entry)
                    else:
                        for item in result:  # type: ignore[union-attr]
                            # names keep undecodable bytes of a file name as \xNN: HDF5 stores UTF-8 only
                            writer.add(item.frames, printable(item.name), printable(item.source), item.label, item.segments)
                    bar.advance(task, job.weight)
                    if writer.nbytes >= shard_bytes:  # close only between jobs: boundaries stay deterministic
                        entries.append(writer.close())
                        writer, index = None, index + 1
                if writer is not None:
                    if writer.videos:
                        entries.append(writer.close())
                    else:  # only skips since the last shard: nothing worth a file
                        unrecorded.update(writer.consumed)
                        writer.abort()
                    writer = None
                built[split] = entries
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
    problem = _coverage_problem(out, built, assigned, unrecorded)
    if problem is not None:  # never a manifest that lists a source twice, or one that is gone
        raise CttlstmError(f"{problem}; the manifest was not written: delete {out} and prepare again")
    seconds = time.perf_counter() - start
    manifest: dict[str, Any] = {
        "format_version": fmt.FORMAT_VERSION,
        "dataset": dataset,
        "frame_size": [int(frame_size[0]), int(frame_size[1])],
        "channels": int(channels),
        "dtype": fmt.DTYPE,
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
        **({"source_fingerprint": source} if source is not None else {}),
        "options": options,
    }
    with no_space_as_error(out / fmt.MANIFEST_NAME, fmt.RESUME_ADVICE):  # write_manifest removes its temporary file
        fmt.write_manifest(out, manifest)
    (out / fmt.STATE_NAME).unlink(missing_ok=True)
    return PrepareResult(out, manifest, resumed_shards=resumed, seconds=seconds, notes=notes)


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
