"""Training-step and inference throughput of any model family: the fast path against its reference.

A family with a literal per-step reference implementation (``cttlstm_cli/models/<family>/reference.py``,
``reference_model(network)``) is timed against it, in eager fp32 with PyTorch's default
convolutions; the others against their own fast fp32 path. Every variant is built in the same
process, warmed up, then timed round-robin (one call of each per round) so that a shared machine's
drift hits all alike. Reported: the median seconds per step, and the median over rounds of each
round's ratio to the first variant.

    python benchmarks/bench_step.py                       # the CPU goal: Conv-TT-LSTM, 32x32, batch 2
    python benchmarks/bench_step.py --recipe mmnist mmnist-convlstm mmnist-predrnnpp mmnist-e3dlstm ssv2-3dcnn
    python benchmarks/bench_step.py --device cuda --size 128 --batch 16 --recipe kth --compile
    python benchmarks/bench_step.py --json out.json

Inference is 10 -> F prediction clips/s (classifiers: clips classified per second). Speed goals
live here, not in the tests (which check that every fast path equals its reference).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cttlstm_cli.devices import retain_freed_memory  # noqa: E402
from cttlstm_cli.models import create_model  # noqa: E402
from cttlstm_cli.models.registry import reference_model  # noqa: E402
from cttlstm_cli.models.layers.conv import CpuConv, set_cpu_conv  # noqa: E402
from cttlstm_cli.recipe import load_recipe  # noqa: E402
from cttlstm_cli.training.step import make_optimizer, to_channels_last, train_step  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(fns: dict[str, Callable[[], None]], device: torch.device, warmup: int, repeats: int) -> dict[str, list[float]]:
    """Seconds per call of each function, timed round-robin after ``warmup`` calls each.

    Round-robin, so that slow drifts of a shared machine hit every variant alike.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def bench_recipe(path: Path, args: argparse.Namespace, device: torch.device) -> list[dict]:
    """Time every variant of one recipe's model; returns one row per variant."""
    torch.manual_seed(0)
    probe = load_recipe(path)
    reference_of = reference_model(probe.model.arch)
    # name, reference, precision, compile, channels_last, cpu conv
    variants: list[tuple[str, bool, str, bool, bool, CpuConv]] = []
    if reference_of is not None:
        variants += [("reference fp32", True, "fp32", False, False, "onednn")]
    variants += [("fast fp32", False, "fp32", False, False, "auto")]
    if device.type == "cpu":
        variants += [("fast fp32, oneDNN convs only", False, "fp32", False, False, "onednn")]
    # bf16 runs channels-last by default (train.channels_last); NCHW shows what that buys.
    variants += [
        ("fast bf16", False, "bf16", False, True, "auto"),
        ("fast bf16, NCHW", False, "bf16", False, False, "auto"),
    ]
    if args.compile:
        variants += [("fast bf16 compiled", False, "bf16", True, True, "auto")]

    train_fns: dict[str, Callable[[], None]] = {}
    infer_fns: dict[str, Callable[[], None]] = {}
    for name, reference, precision, compiled, channels_last, cpu_conv in variants:
        recipe = load_recipe(path, [f"train.precision={precision}", f"data.frame_size=[{args.size},{args.size}]"])
        torch.manual_seed(0)
        net = create_model(recipe.model, recipe.data.channels).to(device)
        if reference:
            net = reference_of(net)  # type: ignore[misc]
        if channels_last:
            net = to_channels_last(net)
        model = torch.compile(net) if compiled else net
        clips = torch.rand(args.batch, recipe.data.clip_frames, recipe.data.channels, args.size, args.size, device=device)
        classes = net.num_classes
        labels = None if classes is None else torch.arange(args.batch, device=device) % classes
        optimizer = make_optimizer(net, recipe, device)
        scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None

        def train(model=model, optimizer=optimizer, clips=clips, recipe=recipe, scaler=scaler, cpu_conv=cpu_conv, labels=labels) -> None:
            set_cpu_conv(cpu_conv)
            train_step(model, optimizer, clips, recipe, args.teacher_forcing, scaler, torch.Generator().manual_seed(0), labels)

        def infer(
            model=model, context=clips[:, : recipe.data.input_frames], bf16=precision == "bf16", cpu_conv=cpu_conv,
            classify=not net.predicts_frames,
        ) -> None:  # fmt: skip
            set_cpu_conv(cpu_conv)
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                model(context, future_frames=args.inference_future, classify=classify)

        train_fns[name], infer_fns[name] = train, infer

    train_times = interleaved(train_fns, device, args.warmup, args.repeats)
    infer_times = interleaved(infer_fns, device, 1, args.repeats)
    set_cpu_conv("auto")
    baseline = train_times[variants[0][0]]
    results = []
    print(f"{path.stem}: {probe.model.display_name}, ratios to '{variants[0][0]}'", flush=True)
    for name, *_ in variants:
        train_s = statistics.median(train_times[name])
        infer_s = statistics.median(infer_times[name])
        # Each round times every variant back to back, so the ratio is taken per round (a slow
        # spell of a shared machine hits both sides of it) and the median over rounds reported.
        ratios = [t / r for t, r in zip(train_times[name], baseline)]
        ratio = statistics.median(ratios)
        row = {
            "recipe": path.stem,
            "model": probe.model.display_name,
            "variant": name,
            "train_step_s": train_s,
            "train_step_s_rounds": train_times[name],
            "train_ratio": ratio,
            "train_ratio_to": variants[0][0],
            "train_clips_per_s": args.batch / train_s,
            f"infer_10to{args.inference_future}_clips_per_s": args.batch / infer_s,
        }
        results.append(row)
        print(
            f"  {name:30s} train {train_s:8.3f} s/step  ratio {ratio:5.2f} (rounds {min(ratios):.2f}-{max(ratios):.2f})  "
            f"infer 10->{args.inference_future} {args.batch / infer_s:8.2f} clips/s",
            flush=True,
        )
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", nargs="+", default=["mmnist"], help="bundled recipe names or paths (model + frame counts)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--size", type=int, default=32, help="frame height and width")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--teacher-forcing", type=float, default=1.0, help="ground-truth ratio of the timed steps")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds; every round runs each variant once")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile of the fast path")
    ap.add_argument("--inference-future", type=int, default=30, help="10 -> F inference throughput")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--no-retain-memory", action="store_true", help="leave glibc's default of unmapping freed blocks")
    args = ap.parse_args()
    retained = False if args.no_retain_memory else retain_freed_memory()

    recipes = Path(__file__).resolve().parents[1] / "recipes"
    paths = [Path(r) if Path(r).is_file() else recipes / f"{r}.yaml" for r in args.recipe]
    device = torch.device(args.device)
    results = []
    for path in paths:
        results += bench_recipe(path, args, device)
    meta = {
        "date": date.today().isoformat(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "recipes": [p.stem for p in paths],
        "size": args.size,
        "batch": args.batch,
        "teacher_forcing": args.teacher_forcing,
        "repeats": args.repeats,
        "retain_freed_memory": retained,
        "statistic": "median over round-robin rounds (ratio: median of per-round ratios)",
    }
    print(json.dumps(meta))
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=2))


if __name__ == "__main__":
    main()
