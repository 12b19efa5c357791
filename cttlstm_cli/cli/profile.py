"""``cttlstm profile``: parameters, FLOPs and epoch time, side by side."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import typer
from rich.table import Table

from cttlstm_cli.cli.app import app
from cttlstm_cli.cli.common import DEVICE_OPTION, SET_OPTION, THREADS_OPTION, Progress, console, err_console, resolve_recipe_path

DEFAULT_RECIPES = ["mmnist", "mmnist-convlstm"]


@app.command(
    epilog=(
        "Examples:\n\n"
        "  cttlstm profile recipes/mmnist.yaml recipes/mmnist-convlstm.yaml --no-time\n\n"
        "  cttlstm profile recipes/kth.yaml --device cuda --set train.precision=bf16\n\n"
        "  cttlstm profile recipes/smoke.yaml --json\n\n"
        "  cttlstm profile kth --time-budget 0        (time the recipe's own batch, however long)"
    )
)
def profile(
    recipes: list[str] = typer.Argument(None, help="Recipe files or bundled names (default: mmnist mmnist-convlstm)."),
    device: str = DEVICE_OPTION,
    batch_size: int | None = typer.Option(None, "--batch-size", "-b", min=1, help="Batch for the timing (default: the recipe's)."),
    no_time: bool = typer.Option(False, "--no-time", help="Skip the timed training steps."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list, one object per recipe."),
    timed_steps: int = typer.Option(2, "--timed-steps", min=1, help="Training steps timed after one warm-up step."),
    time_budget: float = typer.Option(
        60.0, "--time-budget", min=0.0,
        help="Seconds the timing of one recipe may take: a slower batch is timed smaller and scaled up (0: no limit).",
    ),
    threads: int | None = THREADS_OPTION,
    overrides: list[str] = SET_OPTION,
) -> None:
    """Report parameters, FLOPs per one-step prediction and the time of a 10,000-clip epoch.

    FLOPs follow the paper's Table 2 (multiplications for one-step prediction per
    sample), counted analytically and checked against torch's FLOP counter. The
    epoch time times full training steps (forward, backward, optimizer) after a
    warm-up step and extrapolates to an epoch of 10,000 clips, the paper's Time(m),
    whatever the recipe's train.epoch_clips (its own epoch gets a row of its own when
    it differs). Frames too large for the memory available are refused first.

    Every recipe is counted before any is timed. The timing first times one clip and says how
    long it will take; where the recipe's batch would take longer than --time-budget (a paper
    recipe on a CPU: minutes a step), a smaller batch is timed and its time scaled up to the
    recipe's batch, marked as such. Ctrl-C prints what was measured until then.
    """
    from cttlstm_cli.devices import open_device
    from cttlstm_cli.profiling import count_profile, prepare_profile, time_profile
    from cttlstm_cli.timing import PAPER_EPOCH_CLIPS
    from cttlstm_cli.recipe import load_recipe

    loaded = [load_recipe(resolve_recipe_path(r), overrides or []) for r in (recipes or DEFAULT_RECIPES)]
    dev = open_device(device, threads)
    rows = []
    unfinished: str | None = None
    budget = time_budget or None
    try:
        with Progress(err_console) as progress:
            jobs = []
            for recipe in loaded:  # every recipe is checked to fit before any is measured
                unfinished = f"building {recipe.name}"
                progress.note(f"{recipe.name}: building the model and checking that it fits in memory")
                jobs.append(prepare_profile(recipe, dev, batch_size, measure_time=not no_time, timed_steps=timed_steps, max_seconds=budget))
            for job in jobs:  # the counts of every recipe come first: they take seconds
                unfinished = f"counting {job.recipe.name}"
                progress.prefix = f"{job.recipe.name} on {dev}: "
                rows.append(count_profile(job, progress))
            for i in range(len(jobs) if not no_time else 0):
                job = jobs[i]
                unfinished = f"timing {job.recipe.name}"
                progress.prefix = f"{job.recipe.name} on {dev}: "
                rows[i] = time_profile(job, rows[i], progress)
                jobs[i] = None  # type: ignore[call-overload]  # each model is freed once measured
                del job
            unfinished = None
    except KeyboardInterrupt:
        pass
    if unfinished is not None and not rows:
        err_console.print(f"interrupted while {unfinished}: nothing measured yet", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(130)
    if as_json:
        typer.echo(json.dumps([r.to_dict() for r in rows], indent=2))
        if unfinished is not None:
            err_console.print(f"interrupted while {unfinished}: the JSON holds what was measured before", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(130)
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
        timed = [r for r in rows if r.step_seconds is not None]

        def timed_row(label: str, text: Callable[[Any], str]) -> None:
            add(label, *(text(r) if r.step_seconds is not None else "-" for r in rows))

        timed_row("batch", lambda r: str(r.batch_size) + (f" (timed at {r.timed_batch_size})" if r.extrapolated else ""))
        timed_row("s / training step", lambda r: f"{r.step_seconds:.3f}")
        timed_row(f"min / {PAPER_EPOCH_CLIPS:,}-clip epoch (paper)", lambda r: f"{r.epoch_10k_seconds / 60:.2f}")
        if any(r.epoch_clips != PAPER_EPOCH_CLIPS for r in rows):
            timed_row("min / recipe epoch (train.epoch_clips)", lambda r: f"{r.recipe_epoch_seconds / 60:.2f} ({r.epoch_clips:,} clips)")
        add("peak memory (MiB)", *(f"{r.peak_memory_bytes / 2**20:,.0f}" if r.peak_memory_bytes is not None else "-" for r in rows))
        if any(r.extrapolated for r in timed):
            table.caption = "timed at a smaller batch within --time-budget, scaled up to the recipe's batch; peak memory only at the recipe's batch"
    console.print(table)
    if unfinished is not None:
        err_console.print(f"interrupted while {unfinished}: the table shows what was measured before", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(130)
