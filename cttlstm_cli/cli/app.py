"""The Typer application every command registers on (``@app.command()`` in ``cttlstm_cli/cli/<command>.py``).

Apart from the package's ``__init__`` (which imports the command modules and runs the app), so that a
command module imports the app without importing the package that imports it: no import cycle.
"""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperOption

from cttlstm_cli import __version__


def _value_type(option: TyperOption, ctx: Any) -> str | None:
    """The value column of an option in ``--help``: nothing for a flag, which takes no value
    (typer's rich help writes ``<bool>`` beside ``--quiet`` as if one had to be given)."""
    return None if option.is_flag else _typer_value_type(option, ctx)


_typer_value_type = TyperOption.display_type_rich
TyperOption.display_type_rich = _value_type  # type: ignore[method-assign]

app = typer.Typer(
    name="cttlstm",
    help="Convolutional Tensor-Train LSTM (Su et al., NeurIPS 2020): prepare data, train, evaluate, predict, profile.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cttlstm {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Convolutional Tensor-Train LSTM toolkit."""
