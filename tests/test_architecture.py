"""The shape of the code: no import cycle between cttlstm's modules, and a command line that starts
without torch (``cttlstm --help`` of any command, ``--version``, and the timing leaf import no torch)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "cttlstm_cli"


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """``{module: modules of cttlstm_cli it imports}``, every import counted: at the top, inside functions
    (lazy ones too: a cycle through a lazy import is still a cycle of concerns), relative or absolute.
    A package's implicit import by its submodules is not an edge."""
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}

    def known(name: str) -> str | None:
        while name and name not in paths:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {name: set() for name in paths}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                targets = [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            for target in targets:
                found = known(target) if target.startswith("cttlstm_cli") else None
                if found and found != name:
                    graph[name].add(found)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_import_graph_is_read_as_it_is() -> None:
    """The graph sees the imports that exist (so that an empty list of cycles means something)."""
    graph = import_graph()
    assert "cttlstm_cli.timing" in graph["cttlstm_cli.training.trainer"]
    assert "cttlstm_cli.evaluation.report" in graph["cttlstm_cli.evaluation.runner"]
    assert "cttlstm_cli.cli.app" in graph["cttlstm_cli.cli.train"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_imports_itself_round_a_cycle() -> None:
    assert cycles(import_graph()) == []


#: what a model family may import besides cttlstm_cli.models: leaves that know nothing of recipes or runs
MODEL_LAYER_MAY_IMPORT = {"cttlstm_cli", "cttlstm_cli.errors", "cttlstm_cli.schema", "cttlstm_cli.devices"}


def test_models_import_nothing_above_themselves() -> None:
    """Models, layers and the registry never reach up to recipes, data, training, evaluation or the CLI."""
    above = {
        (name, target)
        for name, targets in import_graph().items()
        if name.startswith("cttlstm_cli.models")
        for target in targets
        if not target.startswith("cttlstm_cli.models") and target not in MODEL_LAYER_MAY_IMPORT
    }
    assert above == set()


_TORCH_FREE = """
import sys
from cttlstm_cli.cli import main
import cttlstm_cli.timing
commands = [[], ["--version"]] + [[*c, "--help"] for c in (["train"], ["evaluate"], ["predict"], ["prepare"], ["profile"],
            ["compare"], ["suite"], ["suite", "run"])]
for args in commands:
    try:
        main(args)
    except SystemExit:
        pass
loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
print("torch modules:", len(loaded), loaded[:3])
"""


def test_the_command_line_starts_without_torch() -> None:
    """``cttlstm --help`` used to import torch and every family (3.6 s; 11 s on a busy machine)."""
    proc = subprocess.run([sys.executable, "-c", _TORCH_FREE], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("torch modules: 0 []"), proc.stdout[-500:]
    assert "Usage: cttlstm train" in proc.stdout and "Usage: cttlstm suite run" in proc.stdout
