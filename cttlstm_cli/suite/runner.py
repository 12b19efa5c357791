"""Run a suite: train every model on the same budget, evaluate each on the same clips, compare.

Output folder (``--out DIR``)::

    DIR/suite.json              the resolved suite (every model's full recipe): a rerun must match it
    DIR/state.json              what is done: per model its probe, training and report
    DIR/<model>/                the model's run directory (recipe.yaml, last.pt, best.pt, metrics.jsonl)
    DIR/<model>/eval-<split>-<F...>-<convention>/report.json   its evaluate report
    DIR/comparison/             comparison.md/.csv/.json (Table 2), bubbles.png, per_frame_<metric>.png
    DIR/predictions.gif         every model continuing one clip, beside the ground truth
    DIR/summary.md, summary.json   each model against the trivial predictors, training time

Restartable by construction: every file is written atomically, state.json only records a phase
once its outputs are complete, and an unfinished training resumes from its ``last.pt`` (bit-exact,
:class:`~cttlstm_cli.training.trainer.Trainer`). SIGKILL at any moment and the same command again
ends with the same numbers as an uninterrupted run.

Under torchrun (``torchrun … -m cttlstm_cli suite run``) every rank trains each model with DDP and
scores its share of the test clips; rank 0 alone locks and writes the folder, probes the step time,
and compares and renders at the end (docs/distributed.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cttlstm_cli.atomic import require_output_folder, write_json_atomic, write_text_atomic
from cttlstm_cli.distributed import joined_group
from cttlstm_cli.errors import CttlstmError
from cttlstm_cli.suite.schema import ResolvedModel, Suite, resolve_models
from cttlstm_cli.run_files import LAST_CHECKPOINT, METRICS_LOG, RECIPE_FILE

STATE_NAME = "state.json"
RESOLVED_NAME = "suite.json"
COMPARISON_DIR = "comparison"
PICTURES_NAME = "predictions.gif"
SUMMARY_NAME = "summary"
#: phases of one model, in order
MODEL_PHASES = ("probe", "train", "evaluate")


@dataclass
class SuiteEvent:
    """What the suite is doing, for a progress display.

    ``model`` is None for the suite-wide phases (preparing the data, comparing, rendering);
    ``done``/``total`` count the phase's own units (optimizer steps, evaluation batches);
    ``eta`` is the estimated seconds left of the whole suite (None until something was timed);
    ``line`` a message worth a line of its own."""

    phase: str
    model: str | None = None
    index: int = 0
    count: int = 0
    done: int = 0
    total: int | None = None
    eta: float | None = None
    line: str | None = None


EventFn = Callable[[SuiteEvent], None]


class SuiteInterrupted(Exception):
    """Ctrl-C stopped a training of the suite; what was saved is kept and the same command goes on."""


@dataclass
class ModelState:
    """What :file:`state.json` records of one model."""

    probe: dict[str, Any] | None = None  # cttlstm profile's row: parameters, FLOPs, measured step time
    trained: bool = False
    train_seconds: float = 0.0  # wall time of the training sessions that ended in a save
    steps: int = 0
    report: str | None = None  # the evaluate report, relative to DIR

    def to_dict(self) -> dict[str, Any]:
        return {"probe": self.probe, "trained": self.trained, "train_seconds": self.train_seconds,
                "steps": self.steps, "report": self.report}

    @classmethod
    def from_dict(cls, raw: Any) -> ModelState:
        if not isinstance(raw, dict):
            return cls()
        probe = raw.get("probe") if isinstance(raw.get("probe"), dict) else None
        report = raw.get("report") if isinstance(raw.get("report"), str) else None
        seconds = raw.get("train_seconds")
        steps = raw.get("steps")
        return cls(probe, raw.get("trained") is True, float(seconds) if isinstance(seconds, (int, float)) else 0.0,
                   int(steps) if isinstance(steps, int) else 0, report)


@dataclass
class SuiteState:
    """:file:`state.json`: per model, and whether the comparison and the pictures are written."""

    models: dict[str, ModelState] = field(default_factory=dict)
    compared: bool = False
    pictures: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"models": {k: v.to_dict() for k, v in self.models.items()}, "compared": self.compared, "pictures": self.pictures}

    @classmethod
    def read(cls, folder: Path) -> SuiteState:
        """The recorded state; an unreadable or damaged file counts as nothing done (every phase
        checks its own outputs again)."""
        import json

        try:
            raw = json.loads((folder / STATE_NAME).read_text())
        except (OSError, ValueError, UnicodeDecodeError):
            return cls()
        if not isinstance(raw, dict) or not isinstance(raw.get("models"), dict):
            return cls()
        return cls({str(k): ModelState.from_dict(v) for k, v in raw["models"].items()},
                   raw.get("compared") is True, raw.get("pictures") is True)

    def write(self, folder: Path) -> None:
        write_json_atomic(folder / STATE_NAME, self.to_dict())


def resolved_suite(suite: Suite, models: list[ResolvedModel]) -> dict[str, Any]:
    """The suite as it runs: its own sections and every model's full recipe."""
    return {"suite": suite.model_dump(mode="json", exclude={"models"}),
            "models": {m.name: m.recipe.to_dict() for m in models}}


def _eval_dir(model_dir: Path, suite: Suite) -> Path:
    from cttlstm_cli.evaluation.report import default_output_dir

    return default_output_dir(model_dir, suite.eval.split, suite.eval.future_frames, suite.eval.convention)


def _per_process(model: ResolvedModel, world: int) -> ResolvedModel:
    """``model`` trained by ``world`` processes on the suite's budget: each takes an equal part of every
    optimizer step's clips, so the steps, the clips of each step and the numbers stay those of one process."""
    from dataclasses import replace

    batch = model.recipe.train.batch_size
    if batch % world:
        raise CttlstmError(f"the suite's budget.batch_size ({batch}) does not divide among the {world} processes of torchrun; "
                           f"make it a multiple of {world}")
    train = model.recipe.train.model_copy(update={"batch_size": batch // world})
    return replace(model, recipe=model.recipe.model_copy(update={"train": train}))


class SuiteRun:
    """One run of a suite into a folder; :meth:`run` does what is not done yet."""

    def __init__(self, suite: Suite, suite_path: str | Path, out: str | Path, device: torch.device | str = "cpu",
                 on_event: EventFn | None = None) -> None:
        self.suite = suite
        self.out = Path(out)
        self.device = torch.device(device)
        self.models = resolve_models(suite, suite_path)
        self.on_event = on_event or (lambda _e: None)
        self.state = SuiteState()
        self._phase_started = time.monotonic()
        self.group = joined_group(self.device)  # under torchrun: rank 0 writes, every rank trains and evaluates
        if self.group.world > 1:
            self.models = [_per_process(m, self.group.world) for m in self.models]

    # -- the folder ----------------------------------------------------------------------------

    def _save_state(self) -> None:
        if self.group.is_main:
            self.state.write(self.out)

    def _check_folder(self) -> None:
        """Refuse a folder that is a file or that holds other trainings of the suite's models; after a
        change of the suite, compare and render again, and evaluate again when ``eval`` changed (the
        trainings stay valid; models added to the suite train)."""
        import json

        from cttlstm_cli.training.run_folder import comparable_recipe, recipe_difference

        current = resolved_suite(self.suite, self.models)
        stored_path = self.out / RESOLVED_NAME
        if not stored_path.is_file():
            self._refuse_foreign()
            write_json_atomic(stored_path, current)
            return
        try:
            stored = json.loads(stored_path.read_text())
        except (OSError, ValueError, UnicodeDecodeError):
            raise CttlstmError(f"{stored_path} is damaged; delete {self.out} to run the suite again") from None
        self.state = SuiteState.read(self.out)
        if stored == current:
            return
        stored_models = stored.get("models") if isinstance(stored, dict) else None
        if not isinstance(stored_models, dict):
            raise CttlstmError(f"{stored_path} is damaged; delete {self.out} to run the suite again")
        # Models added to the suite train; models taken out leave the comparison (their folders stay);
        # a model that trains differently is another run.
        for name, recipe in current["models"].items():
            if not isinstance(stored_models.get(name), dict):
                continue
            key = recipe_difference(comparable_recipe(stored_models[name], f"{stored_path} (model '{name}')"), recipe, ignore={"eval"})
            if key is not None:
                raise CttlstmError(
                    f"{self.out} holds a run of this suite whose model '{name}' trained with another {key}; "
                    "use another --out (or delete it) to train with the new one"
                )
        before = stored.get("suite") if isinstance(stored.get("suite"), dict) else {}
        if before.get("eval") != current["suite"]["eval"]:
            # The evaluation changed: keep the trainings, evaluate again.
            for model_state in self.state.models.values():
                model_state.report = None
        self.state.compared = self.state.pictures = False
        self._save_state()
        write_json_atomic(stored_path, current)

    def _refuse_foreign(self) -> None:
        """A folder with files of its own but no suite run is the user's: never write into it."""
        if (self.out.is_dir() and not (self.out / RESOLVED_NAME).is_file()
                and any(p.name != ".lock" for p in self.out.iterdir())):
            raise CttlstmError(f"--out {self.out} holds files but no {RESOLVED_NAME}: it is not a suite's folder; choose a new or empty one")

    # -- events and the estimate ---------------------------------------------------------------

    def _emit(self, phase: str, model: ResolvedModel | None = None, done: int = 0, total: int | None = None,
              current_left: float | None = None, line: str | None = None) -> None:
        index = self.models.index(model) + 1 if model is not None else 0
        self.on_event(SuiteEvent(phase, model.name if model else None, index, len(self.models), done, total,
                                 self._eta(model, phase, current_left), line))

    def _estimate(self, model: ResolvedModel, phase: str) -> float | None:
        """Seconds the probe predicts for ``phase`` of ``model`` from its start."""
        st = self.state.models.get(model.name)
        step = st.probe.get("step_seconds") if st and st.probe else None
        if step is None:
            return None
        if phase == "train":
            return float(step) * self.suite.budget.steps * 1.05  # the epochs' validations: a few percent
        # A test clip's forward costs about a third of a training clip's forward and backward.
        clips = self.suite.eval.clips or 200
        frames = sum(self.suite.data.input_frames + f for f in self.suite.eval.future_frames) * clips
        per_train_frame = float(step) / (self.suite.budget.batch_size * self.suite.data.clip_frames)
        return frames * per_train_frame / 3

    def _eta(self, current: ResolvedModel | None, phase: str, current_left: float | None) -> float | None:
        """The whole suite's time left: what the current phase measures of itself, then the probes'
        estimates of every later training and evaluation not done yet."""
        order = [(m, p) for m in self.models for p in ("train", "evaluate")]
        here = next((i for i, (m, p) in enumerate(order) if m is current and p == phase), -1)
        total = 0.0
        if here >= 0:
            if current_left is None:
                guess = self._estimate(current, phase)  # type: ignore[arg-type]
                if guess is None:
                    return None
                current_left = max(0.0, guess - (time.monotonic() - self._phase_started))
            total += current_left
        for m, p in order[here + 1:]:
            st = self.state.models.get(m.name, ModelState())
            if (p == "train" and st.trained) or (p == "evaluate" and st.report):
                continue
            guess = self._estimate(m, p)
            if guess is None:
                return None
            total += guess
        return total

    # -- phases --------------------------------------------------------------------------------

    def _prepare_data(self) -> None:
        from cttlstm_cli.data.dataset import ensure_mmnist

        data = self.suite.data
        self._emit("data", line=f"preparing {data.dataset} in {data.path} (first use; once only)…"
                   if data.dataset == "mmnist" and not (Path(data.path) / "manifest.json").is_file() else None)
        ensure_mmnist(data, progress=False)

    def _probe(self, model: ResolvedModel) -> None:
        """Parameters, FLOPs and two timed training steps (cttlstm profile's row): the ETA and the
        comparison's minutes per epoch come from it."""
        from cttlstm_cli.profiling import profile_recipe

        st = self.state.models.setdefault(model.name, ModelState())
        if st.probe is not None or not self.group.is_main:  # the ETA and the comparison are rank 0's
            return
        self._phase_started = time.monotonic()
        self._emit("probe", model, 0, 3)
        row = profile_recipe(model.recipe, self.device, timed_steps=2,
                             progress=lambda _p, done, total: self._emit("probe", model, done, total))
        st.probe = row.to_dict()
        self._save_state()

    def _train(self, model: ResolvedModel) -> None:
        from cttlstm_cli.training.events import EpochFinished, FitStarted, StepFinished, TrainingEvent
        from cttlstm_cli.training.run import open_trainer

        st = self.state.models[model.name]
        run_dir = self.out / model.name
        if st.trained and (run_dir / LAST_CHECKPOINT).is_file():
            return
        self._phase_started = time.monotonic()
        total = self.suite.budget.steps

        def show(event: TrainingEvent) -> None:
            if isinstance(event, (FitStarted, StepFinished, EpochFinished)):
                self._emit("train", model, event.state.step, total, event.state.run_seconds_left)

        notes: list[str] = []
        trainer = open_trainer(model.recipe, run_dir, self.device, resume=(run_dir / RECIPE_FILE).is_file(),
                               events=show, log=notes.append, status=None)
        started = time.monotonic()
        result = trainer.fit()
        for note in notes:
            self._emit("train", model, trainer.step, total, line=note)
        if result.interrupted:
            raise SuiteInterrupted(f"{model.name}: " + (f"saved {result.saved} at step {result.steps}" if result.saved else "nothing new saved"))
        st.train_seconds += time.monotonic() - started
        st.steps, st.trained = result.steps, True
        self._save_state()

    def _evaluate(self, model: ResolvedModel, lpips_model: Any) -> None:
        from cttlstm_cli.evaluation.runner import evaluate_checkpoint, write_reports

        st = self.state.models[model.name]
        folder = _eval_dir(self.out / model.name, self.suite)
        if st.report and (self.out / st.report).is_file():
            return
        self._phase_started = time.monotonic()
        ev = self.suite.eval

        def progress(description: str, done: int, total: int) -> None:
            left = None
            if done:
                left = (time.monotonic() - self._phase_started) / done * (total - done)
            self._emit("evaluate", model, done, total, left)

        report = evaluate_checkpoint(
            self.out / model.name, split=ev.split, future=ev.future_frames, metrics=ev.metrics, convention=ev.convention,
            lpips_model=lpips_model, batch_size=ev.batch_size, limit=ev.clips, device=self.device, prepare=False,
            progress=progress,
        )
        if self.group.is_main:
            write_reports([report.to_dict()], [self.out / model.name], ev.split, folder)
        st.report = str((folder / "report.json").relative_to(self.out))
        self._save_state()

    def _compare(self) -> Any:
        from cttlstm_cli.evaluation.compare import build_comparison, write_comparison

        self._emit("compare")
        rows = [self.state.models[m.name].probe for m in self.models if self.state.models[m.name].probe]
        cmp = build_comparison([str(self.out / m.name) for m in self.models], profile=rows,
                               convention=self.suite.eval.convention, future=self.suite.eval.future_frames)
        if not self.state.compared:
            write_comparison(cmp, self.out / COMPARISON_DIR)
            write_summary(self.out, self.suite, self.models, self.state)
            self.state.compared = True
            self._save_state()
        return cmp

    def _pictures(self) -> None:
        from cttlstm_cli.predict import predict_clip_models, render
        from cttlstm_cli.rendering import write_animation

        if self.state.pictures and (self.out / PICTURES_NAME).is_file():
            return
        pics = self.suite.pictures
        steps = pics.steps or max(self.suite.eval.future_frames)
        self._emit("pictures")
        result, _source = predict_clip_models(None, [self.out / m.name for m in self.models], future_frames=steps,
                                              device=self.device, test_clip=pics.test_clip)
        write_animation(self.out / PICTURES_NAME, render(result), pics.fps)
        self.state.pictures = True
        self._save_state()

    def run(self) -> Any:
        """Do every phase not done yet; returns the :class:`~cttlstm_cli.evaluation.compare.Comparison`.

        Raises :class:`SuiteInterrupted` when Ctrl-C stopped a training (what was saved is kept),
        :class:`CttlstmError` for anything refused."""
        from cttlstm_cli.evaluation.runner import shared_lpips
        from cttlstm_cli.locking import RunLock

        require_output_folder(self.out)
        lock = RunLock(self.out)

        def open_folder() -> None:
            self._refuse_foreign()  # before the lock, which would leave its file in the user's folder
            lock.acquire()
            try:
                self._check_folder()
                self._prepare_data()
            except BaseException:
                lock.release()
                raise

        # Rank 0 alone locks, checks and writes the folder; the others read what it decided.
        self.group.on_main(open_folder, f"rank 0 could not open the suite folder {self.out} (see its message); every rank stops")
        if not self.group.is_main:
            self.state = SuiteState.read(self.out)
        try:
            for model in self.models:
                if not self.state.models.get(model.name, ModelState()).trained:
                    self._probe(model)
            lpips_model = None
            for model in self.models:
                self._probe(model)
                self._train(model)
                if lpips_model is None and "lpips" in self.suite.eval.metrics and not self.state.models[model.name].report:
                    lpips_model = shared_lpips(self.suite.eval.metrics, None, self.device)
                self._evaluate(model, lpips_model)
            if not self.group.is_main:
                return None  # the comparison and the pictures are rank 0's files
            cmp = self._compare()
            self._pictures()
            self._emit("done")
            return cmp
        finally:
            lock.release()


# --------------------------------------------------------------------------- the summary


def model_summary(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Per horizon: the model's metrics, the trivial predictors', and the
    :class:`~cttlstm_cli.evaluation.verdict.Verdict` (MSE change against the better one, every metric lost)."""
    from cttlstm_cli.evaluation.verdict import verdict

    return [{"metrics": h["metrics"], "trivial": {n: b["metrics"] for n, b in h.get("baselines", {}).items()},
             **verdict(h).to_dict()} for h in report["horizons"]]


def summary_rows(out: Path, models: list[ResolvedModel], state: SuiteState) -> list[dict[str, Any]]:
    """One JSON row per model: parameters, FLOPs, training time and :func:`model_summary`
    (each report checked against the report format, like compare reads it)."""
    from cttlstm_cli.evaluation.report import read_report_file

    rows = []
    for m in models:
        st = state.models.get(m.name, ModelState())
        report = read_report_file(out / st.report)[0] if st.report else None
        probe = st.probe or {}
        rows.append({
            "name": m.name,
            "model": report["model"] if report else probe.get("model"),
            "recipe": str(m.source),
            "note": m.note,
            "parameters": report["parameters"] if report else probe.get("params"),
            "flops_per_step": probe.get("flops_per_step"),
            "step_seconds": probe.get("step_seconds"),
            "train_seconds": st.train_seconds,
            "steps": st.steps,
            "horizons": model_summary(report) if report else [],
        })
    return rows


def write_summary(out: Path, suite: Suite, models: list[ResolvedModel], state: SuiteState) -> list[Path]:
    """``summary.json`` and ``summary.md``: each model against the trivial predictors."""
    from cttlstm_cli.evaluation.verdict import TRIVIAL_LABELS
    from cttlstm_cli.timing import format_duration

    rows = summary_rows(out, models, state)
    payload = {"suite": suite.name, "budget": suite.budget.model_dump(), "convention": suite.eval.convention,
               "split": suite.eval.split, "models": rows,
               "train_seconds": sum(r["train_seconds"] for r in rows)}
    lines = [f"# Suite {suite.name}", "", suite.description.strip(), "",
             f"Budget: {suite.budget.steps:,} optimizer steps of {suite.budget.batch_size} clips, seed {suite.budget.seed}; "
             f"evaluation: {suite.eval.split} split, {suite.eval.convention} convention.", "",
             "| model | parameters | training | " + " | ".join(
                 f"{suite.data.input_frames}→{f} MSE vs best trivial" for f in suite.eval.future_frames) + " | loses to a trivial predictor on |",
             "|---|---:|---:|" + "---:|" * len(suite.eval.future_frames) + "---|"]
    for r in rows:
        cells = []
        losses = []
        for h in r["horizons"]:
            change = h.get("mse_change")
            cells.append("-" if change is None else f"{100 * change:+.0f}% ({TRIVIAL_LABELS.get(h['best_trivial'], h['best_trivial'])})")
            losses += [f"{suite.data.input_frames}→{h['future_frames']} {metric.upper()} ("
                       + ", ".join(TRIVIAL_LABELS.get(b["predictor"], b["predictor"]) for b in beaten) + ")"
                       for metric, beaten in h["loses_to"].items()]
        lines.append(f"| {r['name']} ({r['model']}) | {r['parameters']:,} | {format_duration(r['train_seconds'])} | "
                     + " | ".join(cells) + f" | {'; '.join(losses) or 'nothing'} |")
    lines += ["", f"Training time of the whole suite: {format_duration(payload['train_seconds'])}.", ""]
    return [write_json_atomic(out / f"{SUMMARY_NAME}.json", payload), write_text_atomic(out / f"{SUMMARY_NAME}.md", "\n".join(lines))]


def suite_status(out: str | Path) -> dict[str, Any]:
    """What is done in a suite's folder: per model its phases, and the comparison and pictures."""
    import json

    out = Path(out)
    stored_path = out / RESOLVED_NAME
    if not stored_path.is_file():
        raise CttlstmError(f"{out} holds no suite run (no {RESOLVED_NAME}); start one with 'cttlstm suite run SUITE.yaml --out {out}'")
    try:
        stored = json.loads(stored_path.read_text())
        names = list(stored["models"])
        suite_name = str(stored["suite"]["name"])
        steps = int(stored["suite"]["budget"]["steps"])
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise CttlstmError(f"{stored_path} is damaged; delete {out} to run the suite again") from None
    state = SuiteState.read(out)
    models = []
    for name in names:
        st = state.models.get(name, ModelState())
        step = st.steps if st.trained else _last_step(out / name)
        models.append({"name": name, "probed": st.probe is not None, "trained": st.trained, "step": step, "steps": steps,
                       "train_seconds": st.train_seconds, "evaluated": bool(st.report and (out / st.report).is_file()),
                       "report": st.report})
    done = all(m["trained"] and m["evaluated"] for m in models) and state.compared and state.pictures
    return {"suite": suite_name, "folder": str(out), "models": models, "compared": state.compared,
            "pictures": state.pictures, "done": done}


def _last_step(run_dir: Path) -> int:
    """The step of the newest training line in ``run_dir``'s metrics.jsonl (0 when none)."""
    import json

    step = 0
    try:
        with open(run_dir / METRICS_LOG, encoding="utf-8") as fh:
            for line in fh:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict) and isinstance(record.get("step"), int):
                    step = max(step, record["step"])
    except OSError:
        return 0
    return step


def run_suite(suite_path: str | Path, out: str | Path, device: torch.device | str = "cpu", on_event: EventFn | None = None) -> Any:
    """Load ``suite_path`` and run it into ``out`` (see the module docstring); returns the comparison."""
    from cttlstm_cli.suite.schema import load_suite

    suite = load_suite(suite_path)
    return SuiteRun(suite, suite_path, out, device, on_event).run()


__all__ = [
    "SuiteEvent", "SuiteInterrupted", "SuiteRun", "SuiteState", "model_summary", "run_suite", "suite_status",
    "summary_rows", "write_summary",
]
