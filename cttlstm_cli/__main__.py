"""``python -m cttlstm_cli`` runs the same Typer app as the ``cttlstm`` script."""

from cttlstm_cli.cli import entry_point

if __name__ == "__main__":
    entry_point()
