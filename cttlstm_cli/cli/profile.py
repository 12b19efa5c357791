"""``cttlstm profile``: parameters, FLOPs and epoch time, side by side."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from cttlstm_cli.cli.app import app
from cttlstm_cli.cli.common import DEVICE_OPTION, SET_OPTION, Progress, console, err_console, resolve_recipe_path

DEFAULT_RECIPES = ["mmnist", "mmnist-convlstm"]


@app.command(
    epilog=(
        "Examples:\n\n"
        "  cttlstm profile recipes/mmnist.yaml recipes/mmnist-convlstm.yaml --no-time\n\n"
        "  cttlstm profile recipes/kth.yaml --device cuda --set train.precision=bf16\n\n"
        "  cttlstm profile recipes/smoke.yaml --json"
    )
)
def profile(
    recipes: list[str] = typer.Argument(None, help="Recipe files or bundled names (default: mmnist mmnist-convlstm)."),
    device: str = DEVICE_OPTION,
    batch_size: int | None = typer.Option(None, "--batch-size", "-b", min=1, help="Batch for the timing (default: the recipe's)."),
    no_time: bool = typer.Option(False, "--no-time", help="Skip the timed training steps."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list, one object per recipe."),
    timed_steps: int = typer.Option(2, "--timed-steps", min=1, help="Training steps timed after one warm-up step."),
    overrides: list[str] = SET_OPTION,
) -> None:
    """Report parameters, FLOPs per one-step prediction and the time of a 10,000-clip epoch.

    FLOPs follow the paper's Table 2 (multiplications for one-step prediction per
    sample), counted analytically and checked against torch's FLOP counter. The
    epoch time times full training steps (forward, backward, optimizer) after a
    warm-up step and extrapolates to an epoch of 10,000 clips, the paper's Time(m),
    whatever the recipe's train.epoch_clips (its own epoch gets a row of its own when
    it differs). Frames too large for the memory available are refused first.
    """
    from cttlstm_cli.devices import open_device
    from cttlstm_cli.profiling import prepare_profile, run_profile
    from cttlstm_cli.timing import PAPER_EPOCH_CLIPS
    from cttlstm_cli.recipe import load_recipe

    loaded = [load_recipe(resolve_recipe_path(r), overrides or []) for r in (recipes or DEFAULT_RECIPES)]
    dev = open_device(device)
    rows = []
    with Progress(err_console) as progress:
        jobs = []
        for recipe in loaded:  # every recipe is checked to fit before any is measured
            progress.note(f"{recipe.name}: building the model and checking that it fits in memory")
            jobs.append(prepare_profile(recipe, dev, batch_size, measure_time=not no_time, timed_steps=timed_steps))
        while jobs:
            job = jobs.pop(0)  # each model is freed once measured
            progress.prefix = f"{job.recipe.name} on {dev}: "
            rows.append(run_profile(job, progress))
            del job
    if as_json:
        typer.echo(json.dumps([r.to_dict() for r in rows], indent=2))
        return
    table = Table(title=f"cttlstm profile ({dev})")
    table.add_column("", style="bold")
    for r in rows:
        table.add_column(r.recipe, justify="right")
    add = table.add_row
    add("model", *(r.model for r in rows))
    add("parameters", *(f"{r.params:,}" for r in rows))
    add("frame", *(f"{r.frame_size[0]}x{r.frame_size[1]}" for r in rows))
    add("GFLOPs / step (paper def.)", *(f"{r.flops_per_step / 1e9:.2f}" if r.flops_analytic else "-" for r in rows))
    add("GFLOPs / step (counted)", *(f"{r.flops_per_step_counted / 1e9:.2f}" for r in rows))
    if not no_time:
        add("batch", *(str(r.batch_size) for r in rows))
        add("s / training step", *(f"{r.step_seconds:.3f}" for r in rows))
        add(f"min / {PAPER_EPOCH_CLIPS:,}-clip epoch (paper)", *(f"{r.epoch_10k_seconds / 60:.2f}" for r in rows))
        if any(r.epoch_clips != PAPER_EPOCH_CLIPS for r in rows):
            add(
                "min / recipe epoch (train.epoch_clips)",
                *(f"{r.recipe_epoch_seconds / 60:.2f} ({r.epoch_clips:,} clips)" for r in rows),
            )
        add("peak memory (MiB)", *(f"{r.peak_memory_bytes / 2**20:,.0f}" for r in rows))
    console.print(table)
