"""Options and helpers shared by several commands."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from cttlstm_cli.errors import CttlstmError

console = Console()
err_console = Console(stderr=True)

#: the repository's recipes/ folder (present in a clone or editable install)
RECIPES_DIR = Path(__file__).resolve().parents[2] / "recipes"

SET_OPTION = typer.Option(
    None, "--set", metavar="KEY=VALUE", help="Override a recipe value, e.g. --set train.lr=1e-4 (repeatable)."
)
DEVICE_OPTION = typer.Option("auto", "--device", "-d", help="auto, cpu, cuda or cuda:N.")


def resolve_recipe_path(text: str) -> Path:
    """A recipe path, or the bare name of a bundled recipe (``mmnist`` -> recipes/mmnist.yaml)."""
    path = Path(text)
    if path.is_file():
        return path
    bundled = RECIPES_DIR / f"{text}.yaml"
    if path.suffix == "" and bundled.is_file():
        return bundled
    raise CttlstmError(f"recipe not found: {text}")
