"""scripts/setup.sh installs into the project's own virtual environment and nowhere else.

The test runs the real script on a copy of the working tree: a fresh ``.venv`` gets torch,
cttlstm and the LPIPS weights, and the interpreter the script was given (the system Python,
whatever the suite itself runs in) lists exactly the packages it listed before.
It installs torch into a new environment, so it takes minutes; pip's own cache keeps the
downloads (the registries are reachable wherever the set-up itself can run).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # installs torch into a new environment: minutes

REPO = Path(__file__).resolve().parents[1]
#: the interpreter under every virtual environment: the "system Python" of the README
BASE_PYTHON = Path(sys.base_prefix) / "bin" / "python3"


def _pip_freeze(python: Path) -> list[str]:
    out = subprocess.run(
        [str(python), "-m", "pip", "list", "--format=freeze", "--disable-pip-version-check"],
        capture_output=True, text=True, check=True,
    )
    return sorted(out.stdout.splitlines())


def _copy_working_tree(dest: Path) -> None:
    """The tracked and untracked-but-not-ignored files, as a fresh clone of this tree would have."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, check=True,
    ).stdout.split(b"\0")
    for raw in filter(None, listed):
        src = REPO / os.fsdecode(raw)
        if src.is_file():
            target = dest / os.fsdecode(raw)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)


@pytest.mark.timeout(1800)
def test_setup_installs_into_the_project_venv_and_leaves_the_system_python_unchanged(tmp_path: Path) -> None:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.fail("this test copies the working tree with git; run it from a clone")
    project = tmp_path / "project with space"
    _copy_working_tree(project)
    before = _pip_freeze(BASE_PYTHON)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "CTTLSTM_VENV", "PYTHONPATH")}
    env["PYTHON"] = str(BASE_PYTHON)
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if ".venv" not in p)

    proc = subprocess.run(["bash", "scripts/setup.sh"], cwd=project, env=env, capture_output=True, text=True)

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _pip_freeze(BASE_PYTHON) == before
    venv = project / ".venv"
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import cttlstm_cli, torch; print(cttlstm_cli.__file__)"],
        capture_output=True, text=True, check=True, cwd=tmp_path,  # not the suite's cwd: `-c` imports from there first
    ).stdout.strip()
    assert Path(where).resolve() == (project / "cttlstm_cli" / "__init__.py").resolve()
    version = subprocess.run([str(venv / "bin" / "cttlstm"), "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith("cttlstm ")
    weights = venv / "share" / "cttlstm" / "lpips" / "alexnet.ckpt"
    assert weights.is_file() and weights.stat().st_size > 1_000_000

    # A second run finds everything in place and installs nothing.
    again = subprocess.run(["bash", "scripts/setup.sh"], cwd=project, env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert "installing" not in again.stdout
    assert _pip_freeze(BASE_PYTHON) == before
