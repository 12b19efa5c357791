"""Training on a CPU that other work keeps busy: the threads cttlstm chooses for the load against torch's
default of one thread per core.

Times a training step of a recipe on the idle machine, then starts ``--busy`` processes that spin on the
CPU (as other jobs would) and times it again, in child processes of ``cttlstm profile``: once with the
threads cttlstm picks for the measured load (devices.use_cpu_threads), once with ``--threads`` set to
every core (torch's default). Each is timed ``--repeats`` times, alternating, so that drift hits both
alike. Prints the medians, their ratio and the busy step's ratio to the idle one.

    python benchmarks/bench_busy.py                       # the tutorial recipe, 2 busy processes
    python benchmarks/bench_busy.py --recipe smoke --busy 1 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPIN = "while True: pass"


def step_seconds(recipe: str, threads: int | None, batch: int | None) -> tuple[float, str, int]:
    """Seconds per training step that ``cttlstm profile`` measures, the thread line of its device and the
    batch it timed (``batch``, or the recipe's)."""
    args = [sys.executable, "-m", "cttlstm_cli", "profile", recipe, "--device", "cpu", "--json", "--timed-steps", "4", "--time-budget", "0"]
    if batch is not None:
        args += ["--batch-size", str(batch)]
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # let cttlstm choose, unless told
    if threads is not None:
        args += ["--threads", str(threads)]
    probe = "from cttlstm_cli.devices import use_cpu_threads; print(use_cpu_threads({}).describe())".format(threads)
    chosen = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=REPO).stdout.strip()
    out = subprocess.run(args, capture_output=True, text=True, env=env, cwd=REPO)
    if out.returncode != 0:
        sys.exit(out.stderr)
    row = json.loads(out.stdout)[0]
    return float(row["step_seconds"]), chosen, int(row["timed_batch_size"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default=str(REPO / "recipes" / "tutorial.yaml"))
    ap.add_argument("--busy", type=int, default=2, help="spinning processes to start (the other work)")
    ap.add_argument("--batch", type=int, default=None, help="clips per timed step (default: the recipe's batch)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    cores = len(os.sched_getaffinity(0))
    idle = [step_seconds(args.recipe, None, args.batch)[0] for _ in range(args.repeats)]
    spinners = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(args.busy)]
    try:
        chosen: list[float] = []
        default: list[float] = []
        lines = {}
        for _ in range(args.repeats):
            seconds, lines["chosen"], batch = step_seconds(args.recipe, None, args.batch)
            chosen.append(seconds)
            seconds, lines["default"], _ = step_seconds(args.recipe, cores, args.batch)
            default.append(seconds)
    finally:
        for spinner in spinners:
            spinner.kill()
    import torch

    result = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {cores} cores, torch {torch.__version__}",
        "recipe": args.recipe,
        "busy_processes": args.busy,
        "batch": batch,
        "idle_step_s": statistics.median(idle),
        "chosen_threads": lines["chosen"],
        "chosen_step_s": statistics.median(chosen),
        "all_cores_threads": lines["default"],
        "all_cores_step_s": statistics.median(default),
        "speedup": statistics.median(default) / statistics.median(chosen),
        "busy_over_idle": statistics.median(chosen) / statistics.median(idle),
        "runs": {"idle": idle, "chosen": chosen, "all_cores": default},
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
