"""A training run's folder on disk: its files and everything written to them (:class:`RunFolder`),
where a new run goes, which earlier run ``--resume`` finds, and whether a stored recipe is the same
run as the one given (what a resume may change)."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from cttlstm_cli.atomic import NoSpaceError, no_space_as_error, write_text_atomic
from cttlstm_cli.checkpoint import (
    CheckpointRefusedError,
    model_description,
    read_checkpoint,
    save_checkpoint,
    state_dict_mismatch,
    stored_recipe,
    validate_checkpoint,
)
from cttlstm_cli.checkpoint_schema import ScheduleState, TrainingCheckpoint
from cttlstm_cli.errors import CttlstmError
from cttlstm_cli.locking import RunLock
from cttlstm_cli.recipe import Recipe, read_yaml
from cttlstm_cli.distributed import Distributed
from cttlstm_cli.run_files import BEST_CHECKPOINT, CHECKPOINT_NAMES, LAST_CHECKPOINT, METRICS_LOG, PREVIOUS_CHECKPOINT, RECIPE_FILE

#: recipe keys that may change on --resume without making it another run
RESUMABLE_CHANGES = {"train.epochs", "data.workers", "data.path", "train.log_every", "train.checkpoint_every", "eval"}


class RunFolder:
    """One training run's folder and everything written to it: the lock, the recipe of a new run, the
    checkpoint a resume continues from (with fallback and the same-run check), atomic checkpoints, and
    the metrics log with its TensorBoard mirror.

    Under torchrun every rank holds one; rank 0 alone locks and writes, and the collectives
    (``dist``) keep the others in step with it. ``note`` and ``warn`` receive the lines a run reports
    (a folder started afresh over, a checkpoint skipped as damaged).
    """

    def __init__(
        self,
        root: Path,
        recipe: Recipe,
        dist: Distributed,
        note: Callable[[str], None] = lambda _line: None,
        warn: Callable[[str], None] = lambda _line: None,
    ) -> None:
        self.root = Path(root)
        self.recipe, self.dist = recipe, dist
        self._note, self._warn = note, warn
        self._lock = RunLock(self.root)
        self.locked = False  # on every rank: whether rank 0 holds the lock for this run
        self._tensorboard: Any = None

    # -- the files ------------------------------------------------------------------------------

    @property
    def recipe_file(self) -> Path:
        return self.root / RECIPE_FILE

    @property
    def last(self) -> Path:
        return self.root / LAST_CHECKPOINT

    @property
    def previous(self) -> Path:
        return self.root / PREVIOUS_CHECKPOINT

    @property
    def best(self) -> Path:
        return self.root / BEST_CHECKPOINT

    @property
    def metrics(self) -> Path:
        return self.root / METRICS_LOG

    @property
    def launch_file(self) -> Path:
        return self.root / LAUNCH_ID_NAME

    @property
    def checkpoints(self) -> tuple[Path, ...]:
        """The checkpoints ``--resume`` may continue from, in the order it tries them."""
        return tuple(self.root / name for name in CHECKPOINT_NAMES)

    def has_checkpoint(self) -> bool:
        """Whether any checkpoint exists (a run that got that far is never started over)."""
        return holds_run(self.root)

    def stale_temporaries(self) -> list[Path]:
        """Temporary files of atomic writes cut short by a kill (``.last.tmp-<pid>.pt`` and the like)."""
        return sorted(p for p in self.root.glob(".*.tmp-*") if p.is_file())

    def last_saved_step(self) -> int | None:
        """The optimizer step ``last.pt`` holds, or None without a readable one."""
        try:
            return int(read_checkpoint(self.last)["step"])
        except (CttlstmError, KeyError, TypeError, ValueError):
            return None

    # -- the lock -------------------------------------------------------------------------------

    def acquire(self) -> None:
        """Rank 0 locks the folder; every rank learns whether it could, so that a refused rank 0
        never leaves the others waiting in a collective."""
        self.dist.on_main(self._lock.acquire, f"rank 0 could not lock {self.root} (see its message); no rank trains")
        self.locked = True

    def release(self) -> None:
        """Give the lock back; idempotent."""
        self._lock.release()
        self.locked = False

    # -- starting or resuming -------------------------------------------------------------------

    def start(self, resume: bool, net: nn.Module) -> tuple[Path, TrainingCheckpoint] | None:
        """Make the folder ready, with the lock held: for a new run, check that it holds no run and
        write the recipe; for ``resume``, check the stored recipe against this one and return the
        newest usable checkpoint of this run (None: the run stopped before its first one). Nothing
        of a resumed run is changed until :meth:`resumed` (the caller restores the checkpoint first,
        and that may still refuse it)."""
        if resume:
            stored = comparable_recipe(read_yaml(self.recipe_file) or {}, str(self.recipe_file))
            diff = recipe_difference(stored, self.recipe.to_dict())
            if diff:
                raise CttlstmError(f"--resume: the recipe differs from the run in {self.root} at '{diff}'; start a new run with another --out")
            return self._newest_usable_checkpoint(net)
        self._start_afresh()
        return None

    def resumed(self, step: int) -> None:
        """After a resume's checkpoint is restored at ``step``: drop the log lines written after it (so
        the log reads as one run) and the temporaries of writes a kill cut short."""
        self._truncate_metrics(step)
        self._remove_stale_temporaries()

    def _start_afresh(self) -> None:
        refuse_new_run_over(self.root)
        # A folder with a recipe or a log but no checkpoint is a run stopped before its first
        # checkpoint: nothing in it is worth keeping, and it is not locked (we hold the lock).
        partial = [p.name for p in (self.recipe_file, self.metrics) if p.exists()] + [p.name for p in self.root.glob("events.out.tfevents.*")]
        if partial:
            self._note(f"{self.root} holds a run that stopped before its first checkpoint; starting afresh over it ({', '.join(partial)} replaced)")
        self.dist.barrier()  # every rank has looked before rank 0 writes
        if self.dist.is_main:
            with no_space_as_error(self.recipe_file):
                write_text_atomic(self.recipe_file, yaml.safe_dump(self.recipe.to_dict(), sort_keys=False))
                launch = os.environ.get(LAUNCH_ID_ENV)
                if launch:  # a worker group torchrun restarts resumes only the run this launch began
                    write_text_atomic(self.launch_file, launch + "\n")
                else:
                    self.launch_file.unlink(missing_ok=True)
            self.metrics.unlink(missing_ok=True)
            for events in self.root.glob("events.out.tfevents.*"):
                events.unlink(missing_ok=True)
            self._remove_stale_temporaries()
        self.dist.barrier()

    def _remove_stale_temporaries(self) -> None:
        # Holding the lock, no other writer can be half-way through a write here.
        if self.dist.is_main and self.root.is_dir():
            for tmp in self.stale_temporaries():
                tmp.unlink(missing_ok=True)

    def _newest_usable_checkpoint(self, net: nn.Module) -> tuple[Path, TrainingCheckpoint] | None:
        """``last.pt``, else ``previous.pt``, else ``best.pt``; None with none at all.

        A file that cannot be read, or that fails the schema of a training checkpoint (a field missing,
        of the wrong type or out of range: :func:`~cttlstm_cli.checkpoint.validate_checkpoint`),
        is damaged, and the next one is tried with a warning. One that references code, or that is
        another run's (:meth:`_check_same_run`), is refused: this project never writes such a file,
        so someone put it there, and another one quietly taken in its place would hide that."""
        candidates = [p for p in self.checkpoints if p.exists()]
        if not candidates:
            self._note(f"{self.root} holds no checkpoint yet (the run stopped before its first one); starting from step 0 with its stored recipe")
            return None
        for i, path in enumerate(candidates):
            try:
                payload: TrainingCheckpoint = validate_checkpoint(read_checkpoint(path), path, training=True)  # type: ignore[assignment]
            except CheckpointRefusedError:
                raise  # not ours to skip quietly: someone put it there
            except CttlstmError as err:
                after = f"falling back to {candidates[i + 1].name}" if i + 1 < len(candidates) else "no other checkpoint to fall back to"
                self._warn(f"{path.name} is unusable ({err}); {after}")
                continue
            self._check_same_run(path, payload, net)
            return path, payload
        names = " and ".join(p.name for p in candidates)
        raise CttlstmError(f"--resume: no usable checkpoint in {self.root} ({names} unreadable, damaged or not training checkpoints)")

    def _check_same_run(self, path: Path, payload: TrainingCheckpoint, net: nn.Module) -> None:
        """Refuse, in one line, a checkpoint of another model family, width or frame channels
        (one copied into the run folder by hand): load_state_dict would print a line per tensor."""
        want = self.recipe.to_dict()
        stored = payload.recipe.to_dict()  # today's keys and defaults, as comparable_recipe gives
        held, asked = stored["model"], want["model"]
        wrong = f"--resume: {path} is not a checkpoint of this run: it holds"
        advice = "put the run's own checkpoint back, or start a new run with another --out"
        if model_description(held) != model_description(asked):
            raise CttlstmError(f"{wrong} a {model_description(held)} model, but the recipe asks for a {model_description(asked)} model; {advice}")
        diff = recipe_difference(held, asked, "model.")
        if diff:
            key = diff.split(".")[1:]
            raise CttlstmError(
                f"{wrong} a {model_description(asked)} model with {diff} = {dig(held, key)}, "
                f"but the recipe asks for {diff} = {dig(asked, key)}; {advice}"
            )
        # The rest of the recipe too (data.frame_size, the frames, the loss, the batch ...): weights of
        # another frame size fit the same network, and resuming them would rewrite this run's log and
        # best.pt with another run's numbers. A resume may change only RESUMABLE_CHANGES.
        other = recipe_difference(stored, want)
        if other:
            key = other.split(".")
            raise CttlstmError(f"{wrong} a run with {other} = {dig(stored, key)}, but this run has {other} = {dig(want, key)}; {advice}")
        if payload.image_channels != int(net.image_channels):
            raise CttlstmError(
                f"{wrong} a model of {payload.image_channels}-channel frames, but the recipe asks for {net.image_channels}; {advice}"
            )
        problem = state_dict_mismatch(net, payload.model)
        if problem is not None:
            raise CttlstmError(f"--resume: {path}: the weights do not fit the recipe's {model_description(asked)} model: {problem}")

    def _truncate_metrics(self, step: int) -> None:
        if not self.dist.is_main or not self.metrics.exists():
            return
        keep = [ln for ln in self.metrics.read_text().splitlines() if _is_record(ln) and json.loads(ln).get("step", 0) <= step]
        with no_space_as_error(self.metrics):
            write_text_atomic(self.metrics, "".join(ln + "\n" for ln in keep))

    # -- writing --------------------------------------------------------------------------------

    def save(self, net: nn.Module, state: dict[str, Any], path: Path | None = None) -> None:
        """Write ``last.pt`` (keeping the one it replaces as ``previous.pt``), or ``path``: the weights of
        ``net``, the recipe and the training ``state`` (:func:`~cttlstm_cli.checkpoint.save_checkpoint`'s
        keywords). Rank 0 only; atomic."""
        if not self.dist.is_main:
            return
        if path is None:
            # last.pt becomes previous.pt only once the new last.pt is complete: a failed write
            # (a full disk) keeps both as they were.
            save_checkpoint(self.last, net, self.recipe, keep_previous_as=self.previous, **state)
        else:
            save_checkpoint(path, net, self.recipe, **state)

    def better_than_best(self, val_loss: float) -> bool:
        """Whether ``val_loss`` beats the validation loss ``best.pt`` holds (True when there is none, or
        it records none): a ``best.pt`` is only ever replaced by a better one, whatever put it there."""
        if not self.dist.is_main or not self.best.is_file():
            return True
        try:  # mmap: only the schedule is read (and checked, as every read of a checkpoint is), not the weights
            held = torch.load(self.best, map_location="cpu", weights_only=True, mmap=True)["schedule"]
            return val_loss < ScheduleState.model_validate(held).best_loss
        except Exception:  # noqa: BLE001 - an unreadable best.pt, or one without a valid record, is no better than this one
            return True

    def open_log(self) -> None:
        """Open the TensorBoard mirror of the log, where tensorboard is installed (it is optional)."""
        if not self.dist.is_main:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return
        self._tensorboard = SummaryWriter(str(self.root))

    def close_log(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None

    def write_metrics(self, record: dict[str, Any]) -> None:
        """Append one JSON line to ``metrics.jsonl`` (and its numbers to TensorBoard); a line that
        cannot be written whole is taken back out, so the log never ends in half a record."""
        if not self.dist.is_main:
            return
        line = (json.dumps(record) + "\n").encode()
        with no_space_as_error(self.metrics):
            fd = os.open(self.metrics, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                start = os.lseek(fd, 0, os.SEEK_END)
                rest = memoryview(line)
                try:
                    while rest:  # a write may be short just before the disk (or file-size limit) is full
                        rest = rest[os.write(fd, rest) :]
                except OSError:
                    os.ftruncate(fd, start)
                    raise
            finally:
                os.close(fd)
        if self._tensorboard is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("step", "epoch"):
                    self._tensorboard.add_scalar(f"{record.get('kind', 'train')}/{key}", value, record["step"])

    @contextlib.contextmanager
    def disk_full_context(self) -> Iterator[None]:
        """Add to a :class:`NoSpaceError` what is kept and how to go on, in the same one line."""
        try:
            yield
        except NoSpaceError as err:
            if err.advice:
                raise
            step = self.last_saved_step()
            if step is not None:
                advice = f"{self.last} (step {step}) and the other checkpoints already written are kept; free some space, then continue with --resume"
            else:
                advice = "no checkpoint was written yet; free some space, then run the same command again (it starts the run afresh)"
            raise NoSpaceError(err.path, err.errno, advice) from None


def _is_record(line: str) -> bool:
    """A whole JSON line of the log (a run killed inside a write can leave a partial last line)."""
    if not line.strip():
        return False
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


#: a run started under torchrun keeps its launch's id here (torchrun's ``--rdzv-id``)
LAUNCH_ID_NAME = "torchrun-id"
LAUNCH_ID_ENV = "TORCHELASTIC_RUN_ID"


def begun_by_this_launch(root: Path) -> bool:
    """Whether torchrun restarted the worker group that began the run in ``root``: a restart
    (``TORCHELASTIC_RESTART_COUNT`` > 0) of the launch whose id the run recorded. A run another
    launch began, or a folder the first attempt refused, is not continued behind the user's back."""
    from cttlstm_cli.distributed import restart_count

    launch = os.environ.get(LAUNCH_ID_ENV)
    if restart_count() == 0 or not launch or not (root / RECIPE_FILE).is_file():
        return False
    try:
        return (root / LAUNCH_ID_NAME).read_text().strip() == launch
    except (OSError, UnicodeDecodeError):
        return False


def holds_run(root: Path) -> bool:
    """Whether ``root`` holds a run that got as far as a checkpoint (it is never started over)."""
    return any((Path(root) / name).exists() for name in CHECKPOINT_NAMES)


def refuse_new_run_over(root: Path) -> None:
    """The one-line refusal of a new run in a folder holding one (:func:`holds_run`)."""
    if holds_run(root):
        raise CttlstmError(f"--out {root} already holds a run; pass --resume to continue it or choose another --out")


def default_run_dir(recipe: Recipe, root: Path = Path("runs")) -> Path:
    """``runs/<recipe>-<YYYYmmdd-HHMMSS>``."""
    return root / f"{recipe.name}-{datetime.now():%Y%m%d-%H%M%S}"


def newest_run_dir(recipe: Recipe, root: Path = Path("runs")) -> Path | None:
    """The most recent ``runs/<recipe>-*`` holding a run (a recipe or a checkpoint), for ``--resume``
    without ``--out``; a run stopped before its first checkpoint counts, as it resumes from step 0."""
    run_files = (RECIPE_FILE, *CHECKPOINT_NAMES)
    runs = [p for p in root.glob(f"{recipe.name}-*") if any((p / name).exists() for name in run_files)]
    return max(runs, key=lambda p: p.stat().st_mtime) if runs else None


def comparable_recipe(raw: Any, source: str) -> Any:
    """A stored recipe in today's keys and defaults (renamed keys renamed, keys added since, such as
    ``train.lr_schedule``, at their defaults), so that a run begun by an earlier version still compares
    equal to its recipe; as stored when it does not validate (it then differs from any valid recipe, and
    :func:`recipe_difference` names where)."""
    try:
        return stored_recipe(raw, source).to_dict()
    except CttlstmError:
        return raw


def recipe_difference(
    stored: dict[str, Any], current: dict[str, Any], prefix: str = "", ignore: set[str] | frozenset[str] = frozenset(RESUMABLE_CHANGES)
) -> str | None:
    """First key (dotted) whose value differs, ignoring the dotted keys ``ignore`` (by default
    :data:`RESUMABLE_CHANGES`, what a resume may change)."""
    for key in sorted(set(stored) | set(current)):
        path = f"{prefix}{key}"
        if path in ignore:
            continue
        a, b = stored.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found = recipe_difference(a, b, path + ".", ignore)
            if found:
                return found
        elif a != b:
            return path
    return None


def dig(tree: Any, keys: list[str]) -> Any:
    """The value at ``keys`` in nested mappings (None where a key is missing), for messages naming a recipe key."""
    for key in keys:
        tree = tree.get(key) if isinstance(tree, dict) else None
    return tree


__all__ = [
    "RESUMABLE_CHANGES",
    "CHECKPOINT_NAMES",
    "RunFolder",
    "comparable_recipe",
    "default_run_dir",
    "dig",
    "holds_run",
    "newest_run_dir",
    "recipe_difference",
    "refuse_new_run_over",
]
