"""The CPU tutorial's promise, measured: recipes/tutorial.yaml trains in at most 10 minutes on a
2-core machine to a validation MSE at least 40% below the best trivial predictor and an SSIM above the
blank frame's (a blur where the digits might be scores below an empty frame on SSIM).

Runs the real commands a new user runs, ``cttlstm train`` (Moving-MNIST is prepared first and
not timed: it is a one-off) and ``cttlstm evaluate --split val``, times the training wall clock
and prints the model's MSE over the predicted frames beside the two trivial predictors' (copy
the last context frame; a blank frame). Exits 1 when a goal is missed.

    python benchmarks/bench_tutorial.py --out /tmp/bench-tutorial
    python benchmarks/bench_tutorial.py --out /tmp/t --set train.epochs=2 --max-minutes 100   (a quick look)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def cttlstm(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI as a user would; stop with its message when it fails."""
    proc = subprocess.run([sys.executable, "-m", "cttlstm_cli", *args], cwd=REPO, text=True, capture_output=True)
    if proc.returncode != 0:
        sys.exit(f"cttlstm {' '.join(args)} failed:\n{proc.stderr}")
    return proc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default=str(REPO / "recipes" / "tutorial.yaml"))
    ap.add_argument("--out", type=Path, required=True, help="a new folder for the data and the run")
    ap.add_argument("--set", action="append", default=[], help="recipe override, as for cttlstm train")
    ap.add_argument("--max-minutes", type=float, default=10.0, help="the training-time goal")
    ap.add_argument("--min-gain", type=float, default=0.40, help="required MSE reduction below the best trivial predictor")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()

    if args.out.exists():
        shutil.rmtree(args.out)
    data, run = args.out / "data", args.out / "run"
    sets = [f"--set=data.path={data}", *(f"--set={s}" for s in args.set)]
    # The dataset is built once per machine, so it is prepared here, outside the timed training.
    from cttlstm_cli.data.dataset import ensure_mmnist
    from cttlstm_cli.recipe import load_recipe

    recipe = load_recipe(args.recipe, [f"data.path={data}", *args.set])
    ensure_mmnist(recipe.data, progress=False)

    start = time.perf_counter()
    cttlstm("train", args.recipe, "--out", str(run), "--quiet", *sets)
    train_s = time.perf_counter() - start
    report = json.loads(cttlstm("evaluate", str(run), "--split", "val", "--metrics", "mse,ssim", "--json", "-q").stdout)
    horizon = report["horizons"][0]
    mse, ssim = horizon["metrics"]["mse"], horizon["metrics"]["ssim"]
    trivial = {name: b["metrics"]["mse"] for name, b in horizon["baselines"].items()}
    trivial_ssim = {name: b["metrics"]["ssim"] for name, b in horizon["baselines"].items()}
    best = min(trivial, key=trivial.__getitem__)
    gain = 1 - mse / trivial[best]
    result = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads",
        "recipe": str(args.recipe),
        "overrides": args.set,
        "train_minutes": round(train_s / 60, 2),
        "val_clips": horizon["num_samples"],
        "future_frames": horizon["future_frames"],
        "convention": report["convention"],
        "mse": mse,
        "trivial_mse": trivial,
        "gain_over_best_trivial": round(gain, 4),
        "ssim": ssim,
        "trivial_ssim": trivial_ssim,
        "goals_met": train_s / 60 <= args.max_minutes and gain >= args.min_gain and ssim > max(trivial_ssim.values()),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    sys.exit(0 if result["goals_met"] else 1)


if __name__ == "__main__":
    main()
