"""scripts/setup.sh installs into the project's own virtual environment and nowhere else.

The test runs the real script on a copy of the working tree: the new ``.venv`` gets cttlstm (an
editable install of the copy) and the LPIPS weights, a second run installs nothing, and the interpreter
the script was given (the system Python, whatever the suite itself runs in) lists exactly the packages
it listed before.

The new environment starts with every dependency already in it, hard-linked from the suite's own
environment (:func:`_seed_dependencies`): installing torch's 750 MB and the other 1 GB again took one to
two minutes of every suite run, and the script's dependency steps run for real wherever the suite
itself is set up (``.ci/run`` runs the script on a fresh clone, before it runs this test).
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
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


def _project_requirements() -> list[Requirement]:
    """What pyproject.toml asks for, the ``test`` extra included (what ``pip install -e .[test]`` installs),
    and torchvision (scripts/setup.sh installs it on its own, without its dependencies)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    lines = [*project["dependencies"], *project.get("optional-dependencies", {}).get("test", []), "torchvision"]
    return [Requirement(line) for line in lines]


def _installed_closure(roots: list[Requirement]) -> list[importlib.metadata.Distribution]:
    """The distributions ``roots`` name and every one they require, recursively, with the extras asked
    for (``imageio[ffmpeg,pyav]``), as installed here."""
    found: dict[str, importlib.metadata.Distribution] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [(req.name, frozenset(req.extras)) for req in roots]
    while todo:
        name, extras = todo.pop()
        key = name.lower().replace("_", "-")
        if (key, extras) in seen:
            continue
        seen.add((key, extras))
        dist = importlib.metadata.distribution(name)
        found[key] = dist
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or any(req.marker.evaluate({"extra": extra}) for extra in ("", *extras)):
                todo.append((req.name, frozenset(req.extras)))
    return list(found.values())


def _seed_dependencies(venv: Path) -> list[str]:
    """Put every dependency of the project (:func:`_project_requirements`, recursively) into ``venv`` as
    hard links of this environment's files (copies across file systems), so that the set-up finds them
    installed and installs only cttlstm itself. A link is a file of its own name: pip or Python replacing
    or removing one in ``venv`` leaves this environment's file as it was. Returns the distributions' names."""
    site = Path(sysconfig.get_path("purelib"))
    target = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                 capture_output=True, text=True, check=True).stdout.strip())
    names = []
    for dist in _installed_closure(_project_requirements()):
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
    seeded = _seed_dependencies(venv)
    assert {"torch", "torchvision", "lpips", "h5py", "av", "pytest"} <= {name.lower() for name in seeded}

    proc = subprocess.run(["bash", "scripts/setup.sh"], cwd=project, env=env, capture_output=True, text=True)

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _pip_freeze(BASE_PYTHON) == before
    assert "installing torch and" in proc.stdout  # the set-up did install (cttlstm; its dependencies were there)
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
