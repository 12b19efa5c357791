"""``cttlstm compare``: several runs' evaluate reports side by side, as the paper's Tables 1-3 and Figure 2."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.measure import Measurement
from rich.table import Table

from cttlstm_cli.cli.app import app
from cttlstm_cli.cli.common import console


def _is_number(text: str) -> bool:
    return text == "-" or text.rstrip("%kMG").replace(".", "", 1).replace(",", "").lstrip("-").isdigit()


def _rich(title: str, head: list[str], rows: list[list[str]], caption: str | None = None) -> Table:
    """A rich table of text cells: numeric columns right-aligned and never broken (their headers wrap
    at spaces), names folded rather than cut by an ellipsis, quoted rows (a cell "quoted ...") in italics."""
    table = Table(title=title, caption=caption, caption_justify="left", title_justify="left")
    for i, name in enumerate(head):
        numeric = bool(rows) and all(_is_number(cells[i]) for cells in rows)
        table.add_column(
            name,
            style="bold" if i == 0 else None,
            justify="right" if numeric else "left",
            overflow="fold",
            min_width=max(len(cells[i]) for cells in rows) if numeric else None,
        )
    for cells in rows:
        table.add_row(*cells, style="italic" if any(c.startswith("quoted") for c in cells) else None)
    return table


def _natural_width(table: Table) -> int:
    """The width ``table`` takes unsqueezed (rich caps its own measurement at the terminal's)."""
    wide = console.options.update(width=100_000, max_width=100_000)
    return Measurement.get(console, wide, table).maximum


def _print_fitting(title: str, head: list[str], rows: list[list[str]], keys: int, caption: str | None = None) -> None:
    """Print a table; one too wide for the terminal is printed in parts, each repeating the first
    ``keys`` columns (the files written keep the whole table)."""
    if _natural_width(_rich(title, head, rows, caption)) <= console.width:
        console.print(_rich(title, head, rows, caption))
        return
    parts: list[list[int]] = [[]]
    for i in range(keys, len(head)):
        cols = list(range(keys)) + parts[-1] + [i]
        trial = _rich(title, [head[c] for c in cols], [[r[c] for c in cols] for r in rows])
        if parts[-1] and _natural_width(trial) > console.width:
            parts.append([])
        parts[-1].append(i)
    for n, part in enumerate(parts, 1):
        cols = list(range(keys)) + part
        cells = [[r[c] for c in cols] for r in rows]
        last = n == len(parts)
        console.print(_rich(f"{title} ({n}/{len(parts)})", [head[c] for c in cols], cells, caption if last else None))


@app.command(
    epilog=(
        "Examples:\n\n"
        "  cttlstm compare runs/convlstm runs/convttlstm                 (their eval-*/report.json, side by side)\n\n"
        "  cttlstm compare runs/a/eval-test-10-30-paper/report.json runs/b --paper   (and the paper's own rows)\n\n"
        "  cttlstm compare runs/* --future 10 --convention paper --out tables/mnist\n\n"
        "  cttlstm profile mmnist mmnist-convlstm --json > profile.json\n\n"
        "  cttlstm compare runs/mmnist-1 runs/mmnist-convlstm-1 --profile profile.json --json"
    )
)
def compare(
    sources: list[str] = typer.Argument(
        ...,
        metavar="RUN_OR_REPORT",
        help="Run directories (their eval-*/report.json), evaluate output folders or report.json files; "
        "a combined report counts as several.",
    ),
    out: Path = typer.Option(
        Path("comparison"), "--out", "-o", help="Folder for comparison.md/.csv/.json and the figures."
    ),
    paper: bool = typer.Option(
        False, "--paper", help="Add the paper's published rows (quoted, paper convention) when comparable."
    ),
    profile: Path | None = typer.Option(
        None,
        "--profile",
        help="JSON list from 'cttlstm profile --json': measured minutes per epoch, matched by recipe or model.",
    ),
    convention: str | None = typer.Option(
        None, "--convention", "-c", help="Use only reports under this convention (paper, openstl, standard)."
    ),
    future: list[str] = typer.Option(
        None, "--future", "-f", help="Use only reports holding these horizons, and show only them (e.g. 10 or 10,30)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the comparison as one JSON object instead of tables."),
) -> None:
    """Compare evaluate reports of several runs: a Table-2-style table, a bubble chart, per-frame figures.

    Reads the report.json that 'cttlstm evaluate' wrote for each run and refuses, in one
    line, reports measured differently (convention, dataset, split, frame size, channels,
    context, no common horizon, different test clips). Adds FLOPs per step from each
    checkpoint and, with --profile, minutes per 10,000-clip epoch; for activity-recognition
    reports, top-1 accuracy per activity group and per observed fraction (the paper's
    Tables 1 and 3). Writes comparison.md/.csv/.json, bubbles.png (SSIM vs LPIPS, area
    proportional to parameters) and per_frame_<metric>.png into --out.
    """
    from cttlstm_cli.evaluation.compare import build_comparison, write_comparison
    from cttlstm_cli.evaluation.runner import parse_future

    horizons = parse_future(future)
    cmp = build_comparison(sources, paper_rows=paper, profile=profile, convention=convention, future=horizons)
    written = write_comparison(cmp, out)
    if as_json:
        payload = cmp.to_dict()
        payload["files"] = [str(p) for p in written]
        typer.echo(json.dumps(payload, indent=2))
        return
    if cmp.horizons and cmp.metrics:
        table = _rich(cmp.title(), cmp.table_header(), cmp.table_cells(), cmp.subtitle())
        if len(cmp.horizons) > 1 and _natural_width(table) > console.width:
            # too wide for this terminal: one table per horizon (the files keep them together)
            for f in cmp.horizons:
                _print_fitting(f"{cmp.title()}, {cmp.context_frames}→{f}", cmp.table_header([f], with_horizon=False),
                               cmp.table_cells([f]), 2, cmp.subtitle() if f == cmp.horizons[-1] else None)
        else:
            _print_fitting(cmp.title(), cmp.table_header(), cmp.table_cells(), 2, cmp.subtitle())
    if cmp.activity:
        head, rows = cmp.table1()
        if rows:
            _print_fitting("early activity recognition: top-1 accuracy (%) per activity group (Table 1)", head, rows, 3)
        head, rows = cmp.table3()
        _print_fitting("early activity recognition: overall top-1 accuracy (%) (Table 3)", head, rows, 1)
    if cmp.quoted_from:
        text = f"quoted rows (italic): published numbers of {cmp.quoted_from}, not measured here"
        console.print(text, highlight=False)
    for note in cmp.notes:
        console.print(f"note: {note}", highlight=False, soft_wrap=True)
    if cmp.horizons and cmp.measured and not any(p.name == "bubbles.png" for p in written):
        missing = [m.upper() for m in ("ssim", "lpips") if m not in cmp.metrics]
        why = f"the reports hold no {' and no '.join(missing)}" if missing else "no run has SSIM, LPIPS and a parameter count at one horizon"
        console.print(f"note: no bubbles.png (SSIM against LPIPS, the paper's Figure 2): {why}; "
                      "'cttlstm evaluate RUN --metrics mse,psnr,ssim,lpips' measures both", highlight=False, soft_wrap=True)
    console.print("wrote " + ", ".join(str(p) for p in written), highlight=False, soft_wrap=True)
