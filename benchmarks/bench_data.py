"""Training-data throughput: clips per second the training DataLoader delivers.

Reads the recipe's prepared training split exactly as ``cttlstm train`` does (random
clips, the recipe's batch size, persistent workers) for each worker count asked for,
and prints clips/s, so it can be set against the model's step rate (``bench_step.py``):
a GPU never starves while the loader delivers more clips per second than it trains on.

    python benchmarks/bench_data.py mmnist --workers 0 1 2
    python benchmarks/bench_data.py kth --set data.path=/data/kth-prepared --workers 2 4 8 --batches 100
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import date
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cttlstm_cli.data.dataset import EpochIndexed, EpochSampler, make_loader  # noqa: E402
from cttlstm_cli.errors import CttlstmError  # noqa: E402
from cttlstm_cli.recipe import load_recipe  # noqa: E402
from cttlstm_cli.training.data import open_training_data  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe", help="bundled recipe name or path")
    ap.add_argument("--set", action="append", default=[], help="recipe override, as for cttlstm train")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--batches", type=int, default=50, help="batches timed per worker count (after one untimed)")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()

    recipes = Path(__file__).resolve().parents[1] / "recipes"
    path = Path(args.recipe) if Path(args.recipe).is_file() else recipes / f"{args.recipe}.yaml"
    recipe = load_recipe(path, args.set)
    train_set, _ = open_training_data(recipe)
    batch = recipe.train.batch_size
    batches = min(args.batches, len(train_set) // batch - 1)  # type: ignore[arg-type]
    results = []
    for workers in args.workers:
        sampler = EpochSampler(range(len(train_set)), batch)  # type: ignore[arg-type]
        loader = make_loader(EpochIndexed(train_set), batch, sampler, workers, torch.device("cpu"), True)
        it = iter(loader)
        next(it)  # worker start-up is paid once per run, not per epoch
        start = time.perf_counter()
        for _ in range(batches):
            next(it)
        seconds = time.perf_counter() - start
        clips_per_s = batches * batch / seconds
        results.append({"workers": workers, "clips_per_s": clips_per_s})
        print(f"workers {workers:2d}: {clips_per_s:9.1f} clips/s  ({batches} batches of {batch})", flush=True)
        del it, loader
    meta = {
        "date": date.today().isoformat(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "recipe": path.stem,
        "clip": [recipe.data.clip_frames, recipe.data.channels, *recipe.data.frame_size],
    }
    print(json.dumps(meta))
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=2))


if __name__ == "__main__":
    try:
        main()
    except CttlstmError as err:
        sys.exit(f"error: {err}")
