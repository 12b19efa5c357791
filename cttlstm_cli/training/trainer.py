"""The training loop: one CPU, one GPU, or many GPUs under torchrun (DDP).

A run directory holds the resolved ``recipe.yaml``, ``last.pt`` (plus the previous
good ``previous.pt``), ``best.pt`` (chosen on validation loss, never test data),
``metrics.jsonl`` and, when tensorboard is installed, event files. Checkpoints are
written atomically every ``train.checkpoint_every`` optimizer steps, at every epoch
end and on Ctrl-C (once the first step has finished, see :meth:`Trainer.fit`); ``resume=True``
continues exactly where ``last.pt`` left off.

One process writes a run directory at a time: the trainer holds ``.lock`` in it
(:mod:`cttlstm_cli.locking`) from construction until :meth:`Trainer.fit`
returns (or :meth:`Trainer.close`); under DDP only rank 0 takes it.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from cttlstm_cli.devices import cpu_threads
from cttlstm_cli.data.dataset import ClipLoader, EpochIndexed, EpochSampler, make_loader, split_batch
from cttlstm_cli.errors import CttlstmError
from cttlstm_cli.models.interface import Sampling, sampling_record, unwrap
from cttlstm_cli.checkpoint import optimizer_state_mismatch
from cttlstm_cli.checkpoint_schema import TrainingCheckpoint
from cttlstm_cli.timing import StepClock, format_duration, slow_epoch_note, speed_line
from cttlstm_cli.recipe import Recipe
from cttlstm_cli.distributed import setup_distributed
from cttlstm_cli.training.events import EpochFinished, FitEnded, FitStarted, Listener, RunState, StepFinished, TrainingEvent, ValidationBatch
from cttlstm_cli.training.memory import resolve_micro_batch
from cttlstm_cli.training.rng import rng_state, seed_everything, set_rng_state, step_generator
from cttlstm_cli.training.run_folder import RunFolder
from cttlstm_cli.training.schedule import PlateauSchedule, one_cycle
from cttlstm_cli.training.step import autocast, build_training_model, compile_model, make_optimizer, model_loss, probe_step_seconds, train_step

#: what torch's OneCycleLR keeps in each param group once it has started, and reads back when it is
#: built again mid-cycle (:func:`~cttlstm_cli.training.schedule.one_cycle` on a resumed run)
ONE_CYCLE_GROUP_KEYS = ("initial_lr", "max_lr", "min_lr", "max_momentum", "base_momentum")


#: seconds the warm micro-batch probes may take together, at the first (cold, so slower) clip's rate:
#: within it, they follow and give the estimate (:meth:`Trainer._estimate_speed`); beyond it (a paper
#: recipe on a CPU takes seconds a clip) the one clip's estimate stands, so that it still comes in seconds
WARM_PROBE_BUDGET_S = 5.0
#: warm micro-batch probes, the fastest kept: the first of them still pays one-off costs (0.15 s against
#: 0.07 s for the tutorial's 8 clips)
WARM_PROBES = 2


class DivergedError(CttlstmError):
    """Training produced a non-finite loss or weights; nothing from then on is saved."""


@dataclass
class TrainResult:
    """What a finished (or interrupted) run reports."""

    run_dir: Path
    epochs: int
    steps: int
    best_val_loss: float
    best_epoch: int
    interrupted: bool = False
    resumed_from: Path | None = None
    notes: list[str] = field(default_factory=list)
    #: the checkpoint an interrupted run wrote as it stopped (None: nothing new was saved, see :meth:`Trainer.fit`)
    saved: Path | None = None
    #: optimizer steps this session did (``steps`` counts the resumed ones too)
    session_steps: int = 0
    #: where an interrupted run that saved nothing new stands: the step its ``last.pt`` holds (None: none)
    kept_step: int | None = None
    #: the data folder a run interrupted while preparing its data was preparing (see :func:`~cttlstm_cli.training.run.run_training`)
    preparing: Path | None = None


# --------------------------------------------------------------------------- the loop


class Trainer:
    """Train ``recipe`` into ``run_dir``; see the module docstring.

    What the run is doing reaches the caller through three optional callbacks (rank 0 only):

    - ``log(line)``: notes and warnings (``note: ...``), always worth showing;
    - ``status(line)``: a short line before each slow phase (the first optimizer step, which also
      measures the speed), the measured speed and its estimate of the epoch and the run, and the
      acknowledgement of a first Ctrl-C; None for a quiet run;
    - ``events(event)``: the :mod:`~cttlstm_cli.training.events` of :meth:`fit` (its start, every
      optimizer step, validation batch and epoch end, and its end), each with a snapshot of where the
      run stands and the time left: what a progress display shows.
    """

    def __init__(
        self,
        recipe: Recipe,
        run_dir: Path,
        device: torch.device,
        train_set: Dataset,
        val_set: Dataset,
        resume: bool = False,
        events: Listener | None = None,
        log: Callable[[str], None] = print,
        status: Callable[[str], None] | None = None,
    ) -> None:
        self.recipe = recipe
        self.dist = setup_distributed(device)
        self.device = self.dist.device
        self.train_set, self.val_set = train_set, val_set
        self.log = log if self.dist.is_main else (lambda _msg: None)
        self.status = status if self.dist.is_main else None
        self._listener = events if self.dist.is_main else None
        self.clock = StepClock()
        self._recent_loss: float | None = None  # the latest training loss on the host, for the events
        self._session_steps = 0  # optimizer steps done by this fit()
        self._torn = False  # True while a step or an epoch end is changing the state: not saveable
        self._slow_note_due = False
        self._train_loader: ClipLoader | None = None
        self._train_sampler: EpochSampler | None = None
        self._val_loader: ClipLoader | None = None
        cfg = recipe.train
        seed_everything(cfg.seed)
        net = build_training_model(recipe, self.device)
        self.net = net
        self.model: nn.Module = net
        if self.dist.world > 1:
            self.model = nn.parallel.DistributedDataParallel(net, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.model = compile_model(self.model, recipe)
        self.optimizer = make_optimizer(net, recipe, self.device)
        self.micro_batch = resolve_micro_batch(net, recipe, self.device)
        if (line := self.micro_batch.describe()) is not None:
            self.log(line)
        self.scaler = torch.amp.GradScaler(self.device.type) if cfg.precision == "fp16" else None
        self.schedule = PlateauSchedule.from_config(cfg)
        self._one_cycle: torch.optim.lr_scheduler.OneCycleLR | None = None  # built by fit(), once the step is known
        self.epoch, self.step, self.position = 0, 0, 0
        self.resumed_from: Path | None = None
        self.notes: list[str] = []
        self.run = RunFolder(Path(run_dir), recipe, self.dist, note=self._note, warn=self._warn)
        if resume and not self.run.recipe_file.is_file():  # before the lock, which would create the folder
            raise CttlstmError(f"--resume: {self.run.root} holds no run (no recipe.yaml)")
        try:
            with self.run.disk_full_context():
                self.run.acquire()
                found = self.run.start(resume, self.net)
                if found is not None:
                    self.resumed_from = found[0]
                    self._restore(*found)
                if resume:
                    self.run.resumed(self.step)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop the data loaders' workers and release the run directory's lock (:meth:`fit` does both
        when it returns); idempotent. A later :meth:`fit` starts new workers."""
        for loader in (self._train_loader, self._val_loader):
            if loader is not None:
                loader.close()
        self.run.release()

    def _note(self, line: str) -> None:
        self.notes.append(line)
        self.log(f"note: {line}")

    def _warn(self, line: str) -> None:
        self.notes.append(line)
        self.log(f"warning: {line}")

    def _say(self, line: str) -> None:
        if self.status is not None:
            self.status(line)

    def _restore(self, path: Path, payload: TrainingCheckpoint) -> None:
        """Put the training state of ``payload`` (valid, and this run's) into the trainer. What the schema
        cannot see is whether the optimizer state fits this optimizer: torch checks only the number of
        groups and parameters, so :func:`optimizer_state_mismatch` checks the rest before a first step
        would trip on it. Each part that does not load is one line; nothing is written before this returns."""

        def unfit(what: str, err: BaseException | str) -> CttlstmError:
            text = str(err).strip()
            first = text.splitlines()[0] if text else type(err).__name__
            return CttlstmError(f"--resume: {path}: {what} ({first})")

        try:
            self.net.load_state_dict(payload.model)
        except (RuntimeError, ValueError, TypeError) as err:
            raise unfit("its weights do not load into the recipe's model", err) from None
        fresh = [dict(group) for group in self.optimizer.param_groups]
        try:
            self.optimizer.load_state_dict(payload.optimizer)
        except (ValueError, KeyError, TypeError, RuntimeError) as err:
            raise unfit("its optimizer state does not fit the recipe's optimizer", err) from None
        resumes_cycle = self.recipe.train.lr_schedule == "onecycle" and payload.step > 0
        problem = optimizer_state_mismatch(self.optimizer, fresh, ONE_CYCLE_GROUP_KEYS if resumes_cycle else ())
        if problem is not None:
            raise unfit("its optimizer state does not fit the recipe's optimizer", problem)
        if self.scaler is not None and payload.scaler is not None:
            self.scaler.load_state_dict(payload.scaler.model_dump(by_alias=True))
        self.schedule.load_state_dict(payload.schedule.model_dump())
        self.epoch, self.step, self.position = payload.epoch, payload.step, payload.position
        set_rng_state(payload.rng)

    def save(self, path: Path | None = None) -> None:
        """Write ``last.pt`` (keeping the previous one as ``previous.pt``), or ``path``; refuses
        (:class:`DivergedError`) weights that are no longer finite, so no checkpoint ever holds them."""
        if not self.dist.is_main:
            return
        if not bool(torch.stack([p.isfinite().all() for p in self.net.parameters()]).all()):  # one device sync
            raise self._diverged("the weights are no longer finite")
        state = dict(
            optimizer=self.optimizer.state_dict(),
            scaler=self.scaler.state_dict() if self.scaler is not None else None,
            schedule=self.schedule.state_dict(),
            epoch=self.epoch,
            step=self.step,
            position=self.position,
            rng=rng_state(),
        )
        self.run.save(self.net, state, path)

    # -- data ----------------------------------------------------------------------------------

    def _workers(self) -> int:
        return self.recipe.data.resolved_workers(self.dist.local_world)

    def _train_batches(self, start_batch: int) -> DataLoader:
        """This epoch's training batches, minus the ``start_batch`` already done (resume)."""
        if self._train_loader is None:
            rank_indices = range(self.dist.rank, len(self.train_set), self.dist.world)  # type: ignore[arg-type]
            self._train_sampler = EpochSampler(rank_indices, self.recipe.train.batch_size)
            self._train_loader = make_loader(
                EpochIndexed(self.train_set), self.recipe.train.batch_size, self._train_sampler, self._workers(), self.device, True
            )
        self._train_sampler.set_epoch(self.epoch, start_batch)  # type: ignore[union-attr]
        return self._train_loader

    def _val_batches(self) -> DataLoader:
        if self._val_loader is None:
            rank_indices = range(self.dist.rank, len(self.val_set), self.dist.world)  # type: ignore[arg-type]
            self._val_loader = make_loader(self.val_set, self.recipe.eval.batch_size, rank_indices, self._workers(), self.device, False)
        return self._val_loader

    def _to_device(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        clips, labels = split_batch(batch)
        clips = clips.to(self.device, non_blocking=True)
        if labels is not None and self.net.classifier is not None:
            return clips, labels.to(self.device, non_blocking=True)
        return clips, None

    @property
    def sampling(self) -> float | Sampling:
        """The scheduled sampling of the next optimizer step: the model family's own schedule (a
        :class:`Sampling` where it also samples the context), or the plateau schedule's ratio when the
        family has none."""
        return unwrap(self.model).teacher_forcing(self.step, self.schedule.ratio)

    @property
    def teacher_forcing(self) -> float:
        """The ground-truth ratio of the next optimizer step's future inputs (``teacher_forcing`` in the logs)."""
        return sampling_record(self.sampling)["teacher_forcing"]

    @property
    def lr(self) -> float:
        """The learning rate of the next optimizer step: the one-cycle's, or the plateau schedule's."""
        if self._one_cycle is not None:
            return self.optimizer.param_groups[0]["lr"]
        return self.recipe.train.lr * self.schedule.lr_scale

    def steps_per_epoch(self) -> int:
        """Optimizer steps of one epoch on this process (its share of ``train.epoch_clips``, whole batches)."""
        per_rank = len(range(self.dist.rank, len(self.train_set), self.dist.world))  # type: ignore[arg-type]
        return per_rank // self.recipe.train.batch_size

    # -- training ------------------------------------------------------------------------------

    def validate(self, progress: Callable[[int, int], None] | None = None) -> float:
        """Mean training objective on the validation split, predicting freely (no ground truth fed back).

        ``progress(done, total)`` before the first batch (``done`` 0) and after each. Inside
        :meth:`fit`, a first Ctrl-C stops it after the batch it lands in (the epoch's training is
        whole and is saved; ``--resume`` validates the epoch again)."""
        self.model.eval()
        totals = torch.zeros(2, dtype=torch.float64)
        batches = self._val_batches()
        self._validating = True
        if progress is not None:
            progress(0, len(batches))
        try:
            with torch.no_grad():
                for done, batch in enumerate(batches, 1):
                    clips, labels = self._to_device(batch)
                    with autocast(self.recipe.train.precision, self.device):
                        loss = model_loss(self.model, clips, self.recipe, 0.0, labels=labels)
                    totals += torch.tensor([loss.item() * clips.shape[0], clips.shape[0]], dtype=torch.float64)
                    if progress is not None:
                        progress(done, len(batches))
                    self._raise_if_stopping()
        finally:
            self._validating = False
            self.model.train()
        totals = self.dist.all_sum(totals)
        if totals[1] == 0:
            raise CttlstmError("the validation split yields no clips; prepare more validation data or lower data.input_frames/future_frames")
        return float(totals[0] / totals[1])

    def _emit(self, event: Callable[[], TrainingEvent]) -> None:
        """Send ``event()`` to the listener; built only when there is one (a state costs a little every step)."""
        if self._listener is not None:
            self._listener(event())

    def state(self) -> RunState:
        """Where the run stands now, as the events carry it."""
        epoch_left, run_left = self.eta()
        step = self.clock.step_seconds
        return RunState(
            epoch=self.epoch,
            epochs=self.recipe.train.epochs,
            position=self.position,
            steps_per_epoch=self.steps_per_epoch(),
            step=self.step,
            loss=self._recent_loss,
            lr=self.lr,
            teacher_forcing=self.teacher_forcing,
            clips_per_s=self.recipe.train.batch_size * self.dist.world / step if step else None,
            epoch_seconds_left=epoch_left,
            run_seconds_left=run_left,
        )

    def eta(self) -> tuple[float | None, float | None]:
        """Seconds left of this epoch's training steps and of the whole run (its steps and validations),
        from :attr:`clock`; None before the first step has been timed."""
        per_epoch, epochs = self.steps_per_epoch(), self.recipe.train.epochs
        epoch_left = max(0, per_epoch - self.position)
        run_left = max(0, per_epoch * epochs - self.step)
        return self.clock.remaining(epoch_left), self.clock.remaining(run_left, max(0, epochs - self.epoch))

    def fit(self, max_steps: int | None = None) -> TrainResult:
        """Train until ``train.epochs`` (or ``max_steps`` optimizer steps, for tests).

        Ctrl-C (SIGINT) returns a result with ``interrupted`` set: after the first optimizer step, the
        first Ctrl-C lets the step (or the validation batch) it lands in finish and saves ``last.pt``
        (``saved``); before the first step has finished, or at a second Ctrl-C, it stops at once and
        saves nothing new (``saved`` None; ``last.pt``, if any, is left as it was)."""
        cfg = self.recipe.train
        if not self.run.locked:  # a second fit() of this trainer
            self.run.acquire()
        try:
            steps_per_epoch = self.steps_per_epoch()
            if steps_per_epoch == 0:
                raise CttlstmError(f"train.epoch_clips ({cfg.epoch_clips}) is smaller than one batch per process ({cfg.batch_size} x {self.dist.world})")
            with self.run.disk_full_context():
                return self._fit(steps_per_epoch, max_steps)
        finally:
            self.close()

    def _fit(self, steps_per_epoch: int, max_steps: int | None) -> TrainResult:
        cfg = self.recipe.train
        self.run.open_log()
        self.model.train()
        interrupted, saved = False, None
        self._session_steps, self._torn, self._stop_requested = 0, False, False
        self.clock = StepClock()
        self._one_cycle = one_cycle(self.optimizer, cfg, steps_per_epoch * cfg.epochs, self.step)
        self._emit(lambda: FitStarted(self.state()))
        try:
            with self._stop_at_step_boundary():
                while self.epoch < cfg.epochs:
                    if max_steps is not None and self.step >= max_steps:
                        break
                    self._train_epoch(steps_per_epoch, max_steps)
                    if max_steps is not None and self.position < steps_per_epoch:
                        break
                    self._end_epoch()
                    self._raise_if_stopping()
        except KeyboardInterrupt:
            interrupted = True
            # Before the first step of this fit() there is nothing new to save; inside a step or an
            # epoch end (a second Ctrl-C) the state is half-updated, and last.pt stays the last whole one.
            if self._session_steps > 0 and not self._torn:
                self.save()
                saved = self.run.last
        finally:
            self._emit(lambda: FitEnded(self.state()))
            self.run.close_log()
        if not interrupted:
            # Every rank returns once rank 0's final checkpoint is whole: a suite evaluates it next.
            self.dist.on_main(self.save, "rank 0 could not save the final checkpoint (see its message)")
        return self.result(interrupted, saved)

    def result(self, interrupted: bool = False, saved: Path | None = None) -> TrainResult:
        """Where the run stands, as a :class:`TrainResult`: ``interrupted`` by a Ctrl-C that wrote ``saved``
        (None: nothing new, and ``kept_step`` says what ``last.pt`` holds)."""
        return TrainResult(
            run_dir=self.run.root,
            epochs=self.epoch,
            steps=self.step,
            best_val_loss=self.schedule.best_loss,
            best_epoch=self.schedule.best_epoch,
            interrupted=interrupted,
            resumed_from=self.resumed_from,
            notes=self.notes,
            saved=saved,
            session_steps=self._session_steps,
            kept_step=self.run.last_saved_step() if interrupted and saved is None else None,
        )

    @property
    def session_steps(self) -> int:
        """Optimizer steps done by the current (or last) :meth:`fit`, as opposed to :attr:`step`, the run's."""
        return self._session_steps

    def _diverged(self, what: str) -> DivergedError:
        step = self.run.last_saved_step()
        if step is not None:
            kept = f"{self.run.last} (step {step}) is kept, nothing later was saved"
            then = "start a new run, or --resume from the kept checkpoint"
        else:
            kept, then = "no checkpoint was written", "start a new run"
        return DivergedError(
            f"training diverged: {what}; {kept}. Likely cause: a learning rate too high for this model "
            f"(train.lr = {self.recipe.train.lr:g}) or no gradient clipping (train.grad_clip): lower it and {then}"
        )

    _stop_requested = False
    _validating = False

    @contextlib.contextmanager
    def _stop_at_step_boundary(self) -> Iterator[None]:
        """Turn the first Ctrl-C (SIGINT) into a stop after the current optimizer step (or validation
        batch), so the saved checkpoint is a whole step; a second Ctrl-C interrupts at once. A
        KeyboardInterrupt raised wherever the signal lands could be swallowed (inside a weakref
        callback, say) or cut an optimizer update in half. Until the first step of this fit() has
        finished there is nothing to save, and waiting for a first step that may take minutes on a
        CPU would only keep the user waiting: Ctrl-C then interrupts at once."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def request_stop(signum: int, frame: Any) -> None:
            if self._stop_requested or self._session_steps == 0:
                # Should this KeyboardInterrupt be swallowed where it lands (a destructor run by the
                # garbage collector, say), the flag still stops the run at the next step boundary.
                self._stop_requested = True
                raise KeyboardInterrupt
            self._stop_requested = True
            what = "validation batch" if self._validating else "optimizer step"
            self._say(f"stopping once this {what} is done, to save the run (Ctrl-C again stops at once)")

        previous = signal.signal(signal.SIGINT, request_stop)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def _raise_if_stopping(self) -> None:
        if self._stop_requested:
            raise KeyboardInterrupt

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _describe_device(self) -> str:
        if self.device.type == "cpu":
            return f"cpu ({cpu_threads().count()})"
        if self.device.type == "cuda":
            return f"{self.device} ({torch.cuda.get_device_name(self.device)})"
        return str(self.device)

    def _first_step_timed(self, seconds: float, clips: int, steps_per_epoch: int) -> None:
        """Report the first optimizer step's time and what it means for an epoch and the run."""
        self.clock.first(seconds)
        compiling = bool(self.recipe.train.compile)
        per_step = f"{clips} clips" + (f" on each of {self.dist.world} processes" if self.dist.world > 1 else "")
        first = "first step, torch.compile included" if compiling else "first step"
        self._say(speed_line(seconds, per_step, self._describe_device(), steps_per_epoch, self.recipe.train.epochs, self.step - 1, first))
        # A compiled model's first step is mostly compilation: judge its speed on the later steps.
        self._slow_note_due = True
        if not compiling:
            self._note_if_slow(steps_per_epoch)

    def _estimate_speed(self, steps_per_epoch: int) -> None:
        """Before the first step (which may take minutes on a CPU): time one clip's forward and backward
        (:func:`probe_step_seconds`, which changes nothing) and say what a step, an epoch and the run
        would take at that rate, with the slow-epoch note where it applies. Where that clip was quick,
        a micro-batch of clips is timed after it (the fastest of :data:`WARM_PROBES`) and scaled to the
        batch instead: one cold clip carries one-off costs (kernel set-up) and, for a small model, a batch
        takes far less than the batch times one clip (the tutorial: 0.36 s a step from one clip, 0.08 s
        measured)."""
        self._say("timing one clip for a first estimate…")
        seconds = probe_step_seconds(self.net, self.recipe, self.device)
        batch = self.recipe.train.batch_size
        clips = 1
        if self.micro_batch.size > 1 and WARM_PROBES * seconds * self.micro_batch.size <= WARM_PROBE_BUDGET_S:
            clips = self.micro_batch.size
            seconds = min(probe_step_seconds(self.net, self.recipe, self.device, clips) for _ in range(WARM_PROBES))
        estimate = seconds * batch / clips
        per_step = f"{batch} clips" + (f" on each of {self.dist.world} processes" if self.dist.world > 1 else "")
        timed = f"from 1 clip timed in {format_duration(seconds)}" if clips == 1 else f"from {clips} clips timed in {format_duration(seconds)}, after a first clip"
        self._say(speed_line(estimate, per_step, self._describe_device(), steps_per_epoch, self.recipe.train.epochs, self.step,
                             timed, label="estimate"))
        note = slow_epoch_note(estimate, steps_per_epoch, self.device)
        if note is not None:
            self._note(note)
            self._slow_noted = True

    _slow_noted = False  # the slow-epoch note was given (by the estimate): once is enough

    def _note_if_slow(self, steps_per_epoch: int) -> None:
        step = self.clock.step_seconds
        if self._slow_noted:
            self._slow_note_due = False
            return
        if not self._slow_note_due or step is None:
            return
        self._slow_note_due = False
        note = slow_epoch_note(step, steps_per_epoch, self.device)
        if note is not None:
            self._note(note)

    def _train_epoch(self, steps_per_epoch: int, max_steps: int | None) -> None:
        cfg = self.recipe.train
        if self._one_cycle is None:  # the plateau schedule moves the lr once per epoch; the one-cycle, every step
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr
        if self._session_steps == 0 and self.position < steps_per_epoch:
            if self.status is not None:
                self._estimate_speed(steps_per_epoch)
            # Before the loader starts: its workers' first batch is part of this wait.
            compiling = ", torch.compile included" if cfg.compile else ""
            self._say(f"first optimizer step (measuring speed{compiling})…")
        window_start, window_clips = time.perf_counter(), 0
        self.clock.restart()  # the validation before this epoch is no training step
        # The loss is summed where it is computed: reading it every step would make the
        # host wait for the GPU each step instead of queueing the next one.
        loss_sum, loss_count = torch.zeros((), dtype=torch.float64, device=self.device), 0
        for batch in self._train_batches(self.position):
            clips, labels = self._to_device(batch)
            gen = step_generator(cfg.seed + self.dist.rank, self.step)
            first = self._session_steps == 0
            if first:  # timed alone, so that the estimate is the step's and not the loader's start-up
                self._sync()
                started = time.perf_counter()
            forcing = self.sampling
            lr = self.lr
            self._torn = True
            loss = train_step(
                self.model, self.optimizer, clips, self.recipe, forcing, self.scaler, gen, labels, self.micro_batch.size
            )
            if self._one_cycle is not None and self.step + 1 < self._one_cycle.total_steps:
                self._one_cycle.step()  # the next step's lr (the last step has no next)
            self.step += 1
            self.position += 1
            self._torn = False
            self._session_steps += 1
            if first:
                self._sync()
                self._first_step_timed(time.perf_counter() - started, clips.shape[0], steps_per_epoch)
            else:
                self.clock.tick()
                self._note_if_slow(steps_per_epoch)
            if self.device.type == "cpu":  # the loss is on the host already: free to read every step
                if not bool(loss.isfinite()):
                    raise self._diverged(f"the training loss is {float(loss)} at step {self.step}")
                self._recent_loss = float(loss)
            loss_sum += loss.double()
            loss_count += 1
            window_clips += clips.shape[0] * self.dist.world
            if self.step % cfg.log_every == 0 or self.position == steps_per_epoch:
                elapsed = time.perf_counter() - window_start
                # Every rank logs at the same steps, so the window's loss is averaged over all ranks.
                totals = self.dist.all_sum(torch.stack([loss_sum.cpu(), torch.tensor(float(loss_count), dtype=torch.float64)]))
                if not bool(totals[0].isfinite()):
                    raise self._diverged(f"the training loss became non-finite between steps {self.step - loss_count + 1} and {self.step}")
                record = {
                    "kind": "train",
                    "step": self.step,
                    "epoch": self.epoch,
                    "loss": float(totals[0] / totals[1]),
                    "lr": lr,
                    **sampling_record(forcing),
                    "clips_per_s": window_clips / elapsed if elapsed > 0 else None,
                }
                self.run.write_metrics(record)
                if self.device.type != "cpu":
                    self._recent_loss = record["loss"]
                self._emit(lambda: StepFinished(self.state(), record))
                window_start, window_clips = time.perf_counter(), 0
                loss_sum, loss_count = torch.zeros((), dtype=torch.float64, device=self.device), 0
            else:
                self._emit(lambda: StepFinished(self.state(), None))
            self._raise_if_stopping()
            if self.step % cfg.checkpoint_every == 0:
                self.save()
            if max_steps is not None and self.step >= max_steps:
                return

    def _end_epoch(self) -> None:
        def progress(done: int, total: int) -> None:
            self._emit(lambda: ValidationBatch(self.epoch, done, total))
        started = time.perf_counter()
        val_loss = self.validate(progress)
        self.clock.validation_seconds = time.perf_counter() - started
        if not math.isfinite(val_loss):
            raise self._diverged(f"the validation loss is {val_loss} after epoch {self.epoch + 1}")
        self._torn = True
        improved = self.schedule.end_epoch(self.epoch, val_loss, self.recipe.train)
        self.epoch += 1
        self.position = 0
        self._torn = False
        record = {
            "kind": "val",
            "step": self.step,
            "epoch": self.epoch - 1,
            "val_loss": val_loss,
            "best_val_loss": self.schedule.best_loss,
            **sampling_record(self.sampling),
            "lr_scale": self.schedule.lr_scale,
        }
        self.run.write_metrics(record)
        if improved and self.run.better_than_best(val_loss):
            self.save(self.run.best)
        self.save()
        self._emit(lambda: EpochFinished(self.state(), record))

