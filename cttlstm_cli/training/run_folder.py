"""A training run's folder on disk: its files, where a new run goes, which earlier run ``--resume``
finds, and whether a stored recipe is the same run as the one given (what a resume may change)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cttlstm_cli.checkpoint import stored_recipe
from cttlstm_cli.errors import CttlstmError
from cttlstm_cli.recipe import Recipe

#: recipe keys that may change on --resume without making it another run
RESUMABLE_CHANGES = {"train.epochs", "data.workers", "data.path", "train.log_every", "train.checkpoint_every", "eval"}


@dataclass
class RunDir:
    """The files of one training run."""

    root: Path

    @property
    def recipe(self) -> Path:
        return self.root / "recipe.yaml"

    @property
    def last(self) -> Path:
        return self.root / "last.pt"

    @property
    def previous(self) -> Path:
        return self.root / "previous.pt"

    @property
    def best(self) -> Path:
        return self.root / "best.pt"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def checkpoints(self) -> tuple[Path, ...]:
        """The checkpoints ``--resume`` may continue from, in the order it tries them."""
        return (self.last, self.previous, self.best)

    def has_checkpoint(self) -> bool:
        """Whether any checkpoint exists (a run that got that far is never started over)."""
        return any(p.exists() for p in self.checkpoints)

    def stale_temporaries(self) -> list[Path]:
        """Temporary files of atomic writes cut short by a kill (``.last.tmp-<pid>.pt`` and the like)."""
        return sorted(p for p in self.root.glob(".*.tmp-*") if p.is_file())


def default_run_dir(recipe: Recipe, root: Path = Path("runs")) -> Path:
    """``runs/<recipe>-<YYYYmmdd-HHMMSS>``."""
    return root / f"{recipe.name}-{datetime.now():%Y%m%d-%H%M%S}"


def newest_run_dir(recipe: Recipe, root: Path = Path("runs")) -> Path | None:
    """The most recent ``runs/<recipe>-*`` holding a run (a recipe or a checkpoint), for ``--resume``
    without ``--out``; a run stopped before its first checkpoint counts, as it resumes from step 0."""
    run_files = ("recipe.yaml", "last.pt", "previous.pt", "best.pt")
    runs = [p for p in root.glob(f"{recipe.name}-*") if any((p / name).exists() for name in run_files)]
    return max(runs, key=lambda p: p.stat().st_mtime) if runs else None


def comparable_recipe(raw: Any, source: str) -> Any:
    """A stored recipe in today's keys and defaults (renamed keys renamed, keys added since, such as
    ``train.lr_schedule``, at their defaults), so that a run begun by an earlier version still compares
    equal to its recipe; as stored when it does not validate (it then differs from any valid recipe, and
    :func:`recipe_difference` names where)."""
    try:
        return stored_recipe(raw, source).to_dict()
    except CttlstmError:
        return raw


def recipe_difference(
    stored: dict[str, Any], current: dict[str, Any], prefix: str = "", ignore: set[str] | frozenset[str] = frozenset(RESUMABLE_CHANGES)
) -> str | None:
    """First key (dotted) whose value differs, ignoring the dotted keys ``ignore`` (by default
    :data:`RESUMABLE_CHANGES`, what a resume may change)."""
    for key in sorted(set(stored) | set(current)):
        path = f"{prefix}{key}"
        if path in ignore:
            continue
        a, b = stored.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found = recipe_difference(a, b, path + ".", ignore)
            if found:
                return found
        elif a != b:
            return path
    return None


def dig(tree: Any, keys: list[str]) -> Any:
    """The value at ``keys`` in nested mappings (None where a key is missing), for messages naming a recipe key."""
    for key in keys:
        tree = tree.get(key) if isinstance(tree, dict) else None
    return tree


__all__ = [
    "RESUMABLE_CHANGES",
    "RunDir",
    "comparable_recipe",
    "default_run_dir",
    "dig",
    "newest_run_dir",
    "recipe_difference",
]
