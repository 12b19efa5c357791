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
    proc = subprocess.run(f"{sys.executable} -c \"{code}\" | true", shell=True, capture_output=True, text=True, timeout=600)
    assert "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.slow
def test_a_strict_stdout_prints_non_utf8_paths(trained_smoke, tmp_path) -> None:
    """A terminal whose stdout is strict UTF-8 (PYTHONIOENCODING=utf-8:strict, or a UTF-8 locale without
    Python's UTF-8 mode) used to die with UnicodeEncodeError when a command printed such a path."""
    import os

    import numpy as np

    name = os.fsdecode(b"clip\xff.npy")
    np.save(tmp_path / name, np.random.default_rng(0).integers(0, 255, (8, 32, 32), dtype=np.uint8))
    out = os.fsdecode(b"pred\xff.gif")
    env = {**os.environ, "PYTHONIOENCODING": "utf-8:strict"}
    args = [sys.executable, "-m", "cttlstm_cli", "predict", name, "--steps", "2", "-k", str(trained_smoke.run), "--out", out]
    proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, timeout=600)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    assert proc.stdout.decode().splitlines()[-1] == "wrote pred\\xff.gif"
    assert (tmp_path / out).is_file() and b"Traceback" not in proc.stderr
