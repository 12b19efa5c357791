"""Training-step and inference throughput: the fast path against the plain reference.

The reference is the literal per-step algorithm (``model.use_reference()``: one conv
over the channel concatenation per gate, every preprocessing conv recomputed each
step), in eager fp32. Each variant is timed in the same process, after warm-up, and
reported as seconds per step and as a ratio to the reference.

    python benchmarks/bench_step.py                       # the CPU goal: 32x32, batch 2
    python benchmarks/bench_step.py --device cuda --size 128 --batch 16 --recipe kth --compile
    python benchmarks/bench_step.py --json out.json

Speed goals live here, not in the tests (which check that every fast path equals the
reference).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cttlstm_cli.models import build_model  # noqa: E402
from cttlstm_cli.recipe import load_recipe  # noqa: E402
from cttlstm_cli.training.step import make_optimizer, train_step  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, warmup: int, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="mmnist", help="bundled recipe name or path (model + frame counts)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--size", type=int, default=32, help="frame height and width")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--teacher-forcing", type=float, default=1.0, help="ground-truth ratio of the timed steps")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile of the fast path")
    ap.add_argument("--channels-last", action="store_true", help="also time channels_last memory format")
    ap.add_argument("--inference-future", type=int, default=30, help="10 -> F inference throughput")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()

    recipes = Path(__file__).resolve().parents[1] / "recipes"
    path = Path(args.recipe) if Path(args.recipe).is_file() else recipes / f"{args.recipe}.yaml"
    device = torch.device(args.device)
    torch.manual_seed(0)
    variants: list[tuple[str, bool, str, bool, bool]] = [
        # name, reference, precision, compile, channels_last
        ("reference fp32", True, "fp32", False, False),
        ("fast fp32", False, "fp32", False, False),
        ("fast bf16", False, "bf16", False, False),
    ]
    if args.channels_last:
        variants += [("fast bf16 channels_last", False, "bf16", False, True)]
    if args.compile:
        variants += [("fast bf16 compiled", False, "bf16", True, False)]

    results = []
    base = None
    for name, reference, precision, compiled, channels_last in variants:
        recipe = load_recipe(path, [f"train.precision={precision}", f"data.frame_size=[{args.size},{args.size}]"])
        torch.manual_seed(0)
        net = build_model(recipe.model, recipe.data.channels).to(device).use_reference(reference)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        net = net.to(memory_format=memory_format)
        model = torch.compile(net) if compiled else net
        clips = torch.rand(args.batch, recipe.data.clip_frames, recipe.data.channels, args.size, args.size, device=device)
        optimizer = make_optimizer(net, recipe, device)
        scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None

        def step() -> None:
            train_step(model, optimizer, clips, recipe, args.teacher_forcing, scaler, torch.Generator().manual_seed(0))

        train_s = timed(step, device, args.warmup, args.repeats)
        context = clips[:, : recipe.data.input_frames]

        def infer() -> None:
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                model(context, future_frames=args.inference_future)

        infer_s = timed(infer, device, 1, args.repeats)
        base = base or train_s
        row = {
            "variant": name,
            "train_step_s": train_s,
            "train_ratio": train_s / base,
            "train_clips_per_s": args.batch / train_s,
            f"infer_10to{args.inference_future}_clips_per_s": args.batch / infer_s,
        }
        results.append(row)
        print(
            f"{name:28s} train {train_s:8.3f} s/step  ratio {train_s / base:5.2f}  "
            f"infer 10->{args.inference_future} {args.batch / infer_s:8.2f} clips/s",
            flush=True,
        )
    meta = {
        "date": date.today().isoformat(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "recipe": path.stem,
        "size": args.size,
        "batch": args.batch,
        "teacher_forcing": args.teacher_forcing,
    }
    print(json.dumps(meta))
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=2))


if __name__ == "__main__":
    main()
