"""``cttlstm predict``: render one or several models' continuation of one clip as a GIF or MP4."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import typer

from cttlstm_cli.cli.app import app
from cttlstm_cli.cli.common import DEVICE_OPTION, Progress, console, err_console

#: rollouts of at least this many steps report their progress off a terminal too (shorter ones end at once,
#: and their output stays exactly what scripts read); on a terminal, any rollout longer than the default 10
PROGRESS_STEPS = 100


@app.command(
    epilog=(
        "Examples:\n\n"
        "  cttlstm predict clip.mp4 --steps 10                      (newest runs/*/best.pt, writes pred.gif)\n\n"
        "  cttlstm predict frames/ --steps 30 --checkpoint runs/mmnist-1 --out pred.mp4\n\n"
        "  cttlstm predict seq.npy --steps 10 --context 10 --save-npy\n\n"
        "  cttlstm predict clip.gif --steps 10 --checkpoint convttlstm-mnist.pt --size 64 64   (an authors' file)\n\n"
        "  cttlstm predict --test-clip 3 --steps 30 -k runs/convttlstm -k runs/convlstm --save-npy   (one grid; pred.npz)"
    )
)
def predict(
    clip: Path | None = typer.Argument(
        None,
        help="mp4, avi, webm, mov, gif, a folder of frame images, or .npy ([T,H,W] or [T,H,W,C]); or use --test-clip.",
    ),
    steps: int = typer.Option(..., "--steps", "-n", min=1, help="Frames to predict."),
    checkpoint: list[Path] | None = typer.Option(
        None, "--checkpoint", "-k", metavar="PATH",
        help="Checkpoint or run directory (default: the newest runs/*/best.pt); repeat to compare models in one grid.",
    ),
    test_clip: int | None = typer.Option(
        None, "--test-clip", min=0,
        help="Instead of CLIP: clip N (0-based) of the first checkpoint's prepared test split, cut as "
        "evaluate --future STEPS cuts it.",
    ),
    data: Path | None = typer.Option(
        None, "--data", help="Prepared dataset for --test-clip (default: the first checkpoint's data.path)."
    ),
    context: int | None = typer.Option(
        None, "--context", min=1,
        help="Context frames (default: the first recipe's data.input_frames; 10 for the authors' files).",
    ),
    start: int | None = typer.Option(None, "--start", min=0, help="First context frame of CLIP (0-based); default: 0, or the clip's last context frames when it is shorter than context+steps."),
    out: Path = typer.Option(Path("pred.gif"), "--out", "-o", help="Output animation; .gif or .mp4."),
    fps: float = typer.Option(4.0, "--fps", help="Frames per second of the animation."),
    scale: int | None = typer.Option(None, "--scale", min=1, max=16, help="Integer zoom of the frames (default: up to ~128 px)."),
    size: tuple[int, int] | None = typer.Option(None, "--size", help="Frame size H W for checkpoints without a recipe (default 64 64)."),
    save_npy: bool = typer.Option(
        False, "--save-npy",
        help="Also write the raw predictions \\[steps, C, H, W] float32: OUT with .npy (one checkpoint) "
        "or .npz, one array per model.",
    ),
    no_error: bool = typer.Option(False, "--no-error-panel", help="Leave out the |error| panels."),
    device: str = DEVICE_OPTION,
) -> None:
    """Predict the frames after a clip's context and render context + predictions.

    The clip is converted to the model's frame size and channels. Context: with --start S,
    frames S..S+context-1; otherwise, when the clip has at least context+steps frames, its
    first context frames, and the following steps frames are shown as ground truth (panels:
    ground truth | prediction | |error|); when it is shorter, its last context frames, and
    the predictions are shown alone. Every frame carries a counter (t=12 predicted 2/10).
    With several --checkpoint the models (same frame size and channels) predict from the same
    context: ground truth | each model, labelled by its name | each model's |error|.
    Each checkpoint used is named on stderr with its training step; steps whose predictions
    and animation cannot fit in memory are refused, saying how many would.
    """
    from cttlstm_cli.atomic import refuse_writing_over_inputs
    from cttlstm_cli.devices import open_device
    from cttlstm_cli.errors import CttlstmError
    from cttlstm_cli.predict import panel_titles, prepare_prediction, raw_path, render, save_raw
    from cttlstm_cli.rendering import ANIMATION_EXTENSIONS, check_fps, write_animation

    if out.suffix.lower() not in ANIMATION_EXTENSIONS:
        raise CttlstmError(f"--out must end in .gif or .mp4, got {out.name}")
    check_fps(fps)  # before the model runs: a bad rate would otherwise end a finished rollout
    if size is not None and (size[0] < 1 or size[1] < 1):
        raise CttlstmError(f"--size must be two positive numbers, got {size[0]} {size[1]}")
    if data is not None and test_clip is None:
        raise CttlstmError("--data applies to --test-clip only")
    dev = open_device(device)
    job = prepare_prediction(clip, checkpoint or None, steps, context, start, size, dev, test_clip, data)
    inputs = [p for p in (clip, data, *(m.checkpoint for m in job.models)) if p is not None]
    refuse_writing_over_inputs(out, inputs)
    if save_npy:
        refuse_writing_over_inputs(raw_path(out, len(job.models)), inputs, "--out (its --save-npy file)")
    replacing = out.exists()
    job.check_memory(scale, error_panel=not no_error)
    for m in job.models:  # after every check: a refusal stays the only line on stderr
        err_console.print(f"checkpoint: {m.checkpoint} ({m.summary})", markup=False, highlight=False, soft_wrap=True)
    long = steps >= PROGRESS_STEPS or (err_console.is_terminal and steps > 10)
    with Progress(err_console) if long else nullcontext() as progress:
        result = job.run(progress)
        if progress is not None:
            progress(f"rendering {len(result.context) + result.future_frames:,} frames")
        frames = render(result, scale, error_panel=not no_error)  # one model: ground truth | prediction | |error|
        raw = save_raw(result, out) if save_npy else None
        if progress is not None:
            progress(f"writing {out}")
        try:
            write_animation(out, frames, fps)
        except BaseException:
            if raw is not None:
                raw.unlink(missing_ok=True)
            raise
    source = job.source
    truth = "beside the ground truth" if result.truth is not None else "(clip too short for ground truth)"
    where = f"{source}: " if test_clip is not None else ""
    console.print(
        f"{where}context frames {result.start + 1}-{result.start + len(result.context)} of {result.clip_frames}, "
        f"{result.future_frames} predicted {truth}"
    )
    if len(result.labels) > 1:
        titles = panel_titles(result, error_panel=not no_error)
        console.print("panels: " + " | ".join(titles), markup=False, soft_wrap=True)  # one line, labels verbatim
    console.print(f"{'replaced' if replacing else 'wrote'} {out}" + (f" and {raw}" if raw is not None else ""))
