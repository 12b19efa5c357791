"""The top-level command: version, bare help, interrupts and closed pipes."""

from __future__ import annotations

import subprocess
import sys

import pytest
import typer

import cttlstm_cli.cli as cli_module
from cttlstm_cli import __version__
from cttlstm_cli.cli import main


def test_version_and_bare_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"cttlstm {__version__}"
    assert main([]) == 0
    assert "prepare" in capsys.readouterr().out


@pytest.mark.parametrize("raised", [KeyboardInterrupt(), typer.Abort()])
def test_an_interrupt_anywhere_exits_130_with_one_line(raised, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def interrupted(**_kwargs):
        raise raised

    monkeypatch.setattr(cli_module, "app", interrupted)
    assert main(["train", "smoke"]) == 130
    assert capsys.readouterr().err == "interrupted\n"


def test_help_into_a_closed_pipe_has_no_traceback() -> None:
    code = "import sys; from cttlstm_cli.cli import entry_point; sys.argv = ['cttlstm', 'prepare', '--help']; entry_point()"
    # `true` exits at once, long before the CLI has imported torch: its first write meets a closed pipe.
    proc = subprocess.run(f"{sys.executable} -c \"{code}\" | true", shell=True, capture_output=True, text=True, timeout=120)
    assert "Traceback" not in proc.stderr, proc.stderr
