"""The Typer application every command registers on (``@app.command()`` in ``cttlstm_cli/cli/<command>.py``).

Apart from the package's ``__init__`` (which imports the command modules and runs the app), so that a
command module imports the app without importing the package that imports it: no import cycle.
"""

from __future__ import annotations

import inspect
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


def reflow(text: str) -> str:
    """``text`` with the line breaks inside each paragraph made spaces, so that ``--help`` wraps the
    prose at the terminal's width (typer keeps a docstring's breaks, which splits lines mid-sentence on
    a narrow terminal). Paragraphs with an indented line (examples) or a leading ``\\b`` keep theirs."""
    paragraphs = inspect.cleandoc(text).split("\n\n")
    kept = (p.startswith("\b") or any(line[:1].isspace() for line in p.splitlines()) for p in paragraphs)
    return "\n\n".join(p if keep else " ".join(p.split("\n")) for p, keep in zip(paragraphs, kept))


def reflow_help(typer_app: typer.Typer) -> None:
    """Give every command of ``typer_app`` (and of its sub-apps) its docstring :func:`reflow`-ed as
    its help, unless it was given one."""
    for info in typer_app.registered_commands:
        if info.help is None and info.callback is not None and info.callback.__doc__:
            info.help = reflow(info.callback.__doc__)
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            reflow_help(group.typer_instance)


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
