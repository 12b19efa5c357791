"""scripts/setup.sh installs into the project's own virtual environment and nowhere else.

The test runs the real script on a copy of the working tree: a new ``.venv`` gets torchvision,
cttlstm with its dependencies and the LPIPS weights, and the interpreter the script was given (the
system Python, whatever the suite itself runs in) lists exactly the packages it listed before.

The new environment starts with torch and what torch needs already in it, hard-linked from the
suite's own environment (:func:`_seed_torch`): installing torch's 750 MB again took two minutes of
every suite run, and the script's torch step is run for real wherever the suite itself is set up
(``.ci/run`` runs the script on a fresh clone, torch included, before it runs this test).
pip's own cache keeps the other downloads.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from packaging.requirements import Requirement

pytestmark = pytest.mark.slow  # installs cttlstm's dependencies into a new environment

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


def _torch_closure() -> list[importlib.metadata.Distribution]:
    """torch and every distribution it requires, recursively (extras left out), as installed here."""
    found: dict[str, importlib.metadata.Distribution] = {}
    todo = ["torch"]
    while todo:
        name = todo.pop()
        key = name.lower().replace("_", "-")
        if key in found:
            continue
        dist = importlib.metadata.distribution(name)
        found[key] = dist
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return list(found.values())


def _seed_torch(venv: Path) -> list[str]:
    """Put torch and its requirements into ``venv`` as hard links of this environment's files (copies
    across file systems), so that the set-up finds torch importable and does not install it again.
    A link is a file of its own name: pip or Python replacing or removing one in ``venv`` leaves
    this environment's file as it was. Returns the distributions' names."""
    site = Path(sysconfig.get_path("purelib"))
    target = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                 capture_output=True, text=True, check=True).stdout.strip())
    names = []
    for dist in _torch_closure():
        names.append(dist.metadata["Name"])
        for file in dist.files or []:
            src = Path(dist.locate_file(file)).resolve()
            try:
                rel = src.relative_to(site)
            except ValueError:
                continue  # console scripts (torchrun) live outside site-packages: not needed to import torch
            if not src.is_file():
                continue
            dest = target / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(src, dest)
            except OSError:
                shutil.copy2(src, dest)
    return names


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

    venv = project / ".venv"
    subprocess.run([str(BASE_PYTHON), "-m", "venv", str(venv)], check=True)
    seeded = _seed_torch(venv)
    assert "torch" in seeded and len(seeded) > 3  # torch, and what it needs (sympy, filelock, ...)

    proc = subprocess.run(["bash", "scripts/setup.sh"], cwd=project, env=env, capture_output=True, text=True)

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _pip_freeze(BASE_PYTHON) == before
    assert "installing torch and" in proc.stdout  # the set-up did install: cttlstm and its dependencies
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
