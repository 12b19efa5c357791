"""Evaluate a trained model on a prepared dataset: the library behind ``cttlstm evaluate``.

Nothing here prints. :func:`evaluate_checkpoint` loads a checkpoint (ours, a run
directory, or the authors' released file), reads the test clips and returns an
:class:`EvaluationReport`, a plain-data report that ``to_dict()`` turns into the JSON
written as ``report.json`` and printed by ``--json``.

Frame prediction: for every horizon F the split is cut into non-overlapping clips of
``I + F`` frames (I = the recipe's ``data.input_frames``, 10 in the paper); the model sees
the first I frames and predicts F frames recursively, ``model(clips[:, :I], future_frames=F)``;
the predictions are compared with ``clips[:, I:]`` frame by frame under a metric convention
(``docs/metrics.md``). Per-frame curves are means over clips; each headline value is the
mean of its curve.

Activity recognition (a checkpoint whose model has a classifier): every video of the split
gives one clip from its observed beginning (``EarlyActivityDataset``); the logits after
predicting the recipe's ``data.future_frames`` frames give top-1 accuracy, overall and per
activity group (the manifest's ``groups``), as in the paper's Tables 1 and 3. The predicted
frames of those clips are scored with the frame metrics as well.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from cttlstm_cli.atomic import write_text_atomic
from cttlstm_cli.data.dataset import make_loader, split_batch
from cttlstm_cli.errors import CttlstmError
from cttlstm_cli.evaluation.metrics import MetricAccumulator, get_convention, parse_metrics
from cttlstm_cli.models.checkpoint import load_model_and_recipe, resolve_checkpoint_path
from cttlstm_cli.recipe import CELL_NAMES, DataConfig, Recipe

#: metrics evaluated by default for checkpoints without a recipe (the authors' files)
DEFAULT_EVAL_METRICS = ("mse", "psnr", "ssim", "lpips")
#: context length for checkpoints without a recipe (the paper's 10 -> F protocol)
DEFAULT_CONTEXT = 10

#: ``progress(description, done, total)``; called once with done=0 before each pass
ProgressFn = Callable[[str, int, int], None]


def parse_future(values: Sequence[str | int] | None) -> list[int] | None:
    """``--future`` values: integers, repeatable or comma lists (``10,30``); each >= 1; order kept, duplicates dropped."""
    if not values:
        return None
    out: list[int] = []
    for value in values:
        for part in str(value).replace(" ", "").split(","):
            if not part:
                continue
            try:
                n = int(part)
            except ValueError:
                raise CttlstmError(f"--future expects whole numbers of frames (e.g. 10 or 10,30), got {part!r}") from None
            if n < 1:
                raise CttlstmError(f"--future must be at least 1 frame, got {n}")
            if n not in out:
                out.append(n)
    if not out:
        raise CttlstmError("--future is empty")
    return out


@dataclass
class HorizonResult:
    """Frame metrics for one prediction horizon F."""

    future_frames: int
    num_samples: int
    metrics: dict[str, float]
    per_frame: dict[str, list[float]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "future_frames": self.future_frames,
            "num_samples": self.num_samples,
            "metrics": dict(self.metrics),
            "per_frame": {k: list(v) for k, v in self.per_frame.items()},
        }


@dataclass
class EvaluationReport:
    """Everything one checkpoint's evaluation found, with what it was measured on and how."""

    checkpoint: str
    model: str
    parameters: int
    convention: str
    convention_description: str
    data: dict[str, Any]
    split: str
    context_frames: int
    horizons: list[HorizonResult]
    accuracy: dict[str, Any] | None = None
    limit: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def primary(self) -> HorizonResult:
        """The first requested horizon (whose numbers the top-level ``metrics``/``per_frame`` hold)."""
        return self.horizons[0]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: top-level ``metrics``/``per_frame`` are the first horizon's; ``horizons`` has all."""
        primary = self.primary
        out: dict[str, Any] = {
            "convention": self.convention,
            "convention_description": self.convention_description,
            "metrics": dict(primary.metrics),
            "per_frame": {k: list(v) for k, v in primary.per_frame.items()},
            "future_frames": primary.future_frames,
            "num_samples": primary.num_samples,
            "context_frames": self.context_frames,
            "checkpoint": self.checkpoint,
            "model": self.model,
            "parameters": self.parameters,
            "data": dict(self.data),
            "split": self.split,
            "horizons": [h.to_dict() for h in self.horizons],
        }
        if self.accuracy is not None:
            out["accuracy"] = self.accuracy
        if self.limit is not None:
            out["limit"] = self.limit
        if self.notes:
            out["notes"] = list(self.notes)
        return out


def data_config_for(
    recipe: Recipe | None,
    data: str | Path | None,
    context: int | None = None,
    model_channels: int | None = None,
) -> DataConfig:
    """The ``data`` section evaluation reads: the recipe's (``--data`` overriding its path),
    or, for checkpoints without a recipe, one built from ``--data``'s manifest."""
    from cttlstm_cli.data import shards as fmt

    if recipe is not None:
        update: dict[str, Any] = {}
        if data is not None:
            update["path"] = str(data)
        if context is not None:
            update["input_frames"] = int(context)
        return recipe.data.model_copy(update=update)
    if data is None:
        raise CttlstmError(
            "this checkpoint carries no recipe (an authors' file?): pass --data DIR, a prepared dataset to evaluate on"
        )
    manifest = fmt.read_manifest(data)
    channels = int(manifest["channels"])
    if model_channels is not None and channels != model_channels:
        raise CttlstmError(f"dataset at {data} has {channels} channel(s) but the model predicts {model_channels}")
    dataset = manifest.get("dataset", "folder")
    return DataConfig(
        dataset=dataset if dataset in ("mmnist", "kth", "ssv2", "folder") else "folder",
        path=str(data),
        frame_size=tuple(manifest["frame_size"]),
        channels=channels,
        input_frames=int(context or DEFAULT_CONTEXT),
        future_frames=10,
        workers=0,
    )


def _limited(dataset: Dataset, limit: int | None) -> Dataset:
    if limit is not None and limit < len(dataset):  # type: ignore[arg-type]
        return Subset(dataset, range(limit))
    return dataset


@torch.no_grad()
def evaluate_frames(
    model: torch.nn.Module,
    dataset: Dataset,
    context: int,
    future: int,
    accumulator: MetricAccumulator,
    device: torch.device,
    batch_size: int = 16,
    workers: int = 0,
    progress: ProgressFn | None = None,
    description: str = "",
) -> None:
    """Feed every clip ``[I+F, C, H, W]`` of ``dataset`` through ``model`` and accumulate metrics."""
    total = len(dataset)  # type: ignore[arg-type]
    done = 0
    if progress:
        progress(description, 0, total)
    for batch in make_loader(dataset, batch_size, None, workers, device, drop_last=False):
        clips, _ = split_batch(batch)
        clips = clips.to(device, non_blocking=True).float()
        pred = model(clips[:, :context], future_frames=future)
        accumulator.update(pred.float(), clips[:, context : context + future])
        done += clips.shape[0]
        if progress:
            progress(description, done, total)


@torch.no_grad()
def evaluate_classifier(
    model: torch.nn.Module,
    dataset: Dataset,
    context: int,
    future: int,
    accumulator: MetricAccumulator,
    device: torch.device,
    groups: dict[str, list[int]] | None,
    label_names: list[str] | None,
    batch_size: int = 16,
    workers: int = 0,
    progress: ProgressFn | None = None,
    description: str = "",
) -> dict[str, Any]:
    """Top-1 accuracy (overall, per group, per class) on labelled clips; frame metrics go to ``accumulator``."""
    total = len(dataset)  # type: ignore[arg-type]
    done = 0
    if progress:
        progress(description, 0, total)
    labels_all, preds_all = [], []
    for clips, labels in make_loader(dataset, batch_size, None, workers, device, drop_last=False):
        clips = clips.to(device, non_blocking=True).float()
        outputs, logits = model(clips, future, context_frames=context, teacher_forcing=0.0, classify=True)
        # outputs are the I+F-1 one-step predictions; the last F are the future frames
        accumulator.update(outputs[:, context - 1 :].float(), clips[:, context : context + future])
        labels_all.append(labels.cpu())
        preds_all.append(logits.argmax(dim=1).cpu())
        done += clips.shape[0]
        if progress:
            progress(description, done, total)
    labels_t = torch.cat(labels_all)
    preds_t = torch.cat(preds_all)
    correct = preds_t == labels_t
    result: dict[str, Any] = {"top1": float(correct.double().mean()), "num_samples": int(labels_t.numel())}
    if groups:
        per_group: dict[str, Any] = {}
        for name, ids in groups.items():
            mask = torch.isin(labels_t, torch.as_tensor(list(ids), dtype=labels_t.dtype))
            n = int(mask.sum())
            per_group[name] = {"top1": float(correct[mask].double().mean()) if n else None, "num_samples": n}
        result["per_group"] = per_group
    per_class: dict[str, Any] = {}
    for label in sorted(set(labels_t.tolist())):
        mask = labels_t == label
        name = label_names[label] if label_names and 0 <= label < len(label_names) else str(label)
        per_class[name] = {"top1": float(correct[mask].double().mean()), "num_samples": int(mask.sum())}
    result["per_class"] = per_class
    return result


def evaluate_model(
    model: torch.nn.Module,
    data_cfg: DataConfig,
    *,
    checkpoint: str = "",
    split: str = "test",
    future: Sequence[int] = (10,),
    metrics: Sequence[str] | str = ("mse", "psnr", "ssim"),
    convention: str = "paper",
    lpips_model: Any = None,
    batch_size: int = 16,
    limit: int | None = None,
    device: torch.device | str = "cpu",
    workers: int | None = None,
    progress: ProgressFn | None = None,
) -> EvaluationReport:
    """Evaluate an already loaded ``model`` on ``data_cfg``'s ``split`` (see the module doc)."""
    from cttlstm_cli.data.dataset import EarlyActivityDataset, open_dataset

    device = torch.device(device)
    conv = get_convention(convention)
    metric_names = parse_metrics(metrics)
    if not future or any(int(f) < 1 for f in future):
        raise CttlstmError(f"--future must be at least 1 frame, got {list(future)}")
    if limit is not None and limit < 1:
        raise CttlstmError(f"--limit must be at least 1, got {limit}")
    channels = getattr(model, "image_channels", data_cfg.channels)
    if channels != data_cfg.channels:
        raise CttlstmError(f"the model predicts {channels} channel(s) but the data has {data_cfg.channels}")
    workers = data_cfg.resolved_workers() if workers is None else workers
    context = int(data_cfg.input_frames)
    model = model.to(device).eval()
    horizons: list[HorizonResult] = []
    accuracy = None
    is_classifier = getattr(model, "classifier", None) is not None
    if is_classifier:
        future = [int(data_cfg.future_frames)]
        dataset = EarlyActivityDataset.from_recipe(data_cfg, split)
        manifest = dataset.base.manifest
        acc = MetricAccumulator(conv, metric_names, lpips_model, device=device)
        accuracy = evaluate_classifier(
            model, _limited(dataset, limit), context, future[0], acc, device,
            manifest.get("groups"), manifest.get("label_names"), batch_size, workers, progress,
            f"{context}->{future[0]} + activity",
        )
        rep = acc.report()
        horizons.append(HorizonResult(future[0], rep.num_samples, rep.headline, rep.curves))
    else:
        for f in future:
            f = int(f)
            dataset = open_dataset(data_cfg, split, mode="sequential", clip_frames=context + f)
            acc = MetricAccumulator(conv, metric_names, lpips_model, device=device)
            evaluate_frames(model, _limited(dataset, limit), context, f, acc, device, batch_size, workers, progress, f"{context}->{f}")
            rep = acc.report()
            horizons.append(HorizonResult(f, rep.num_samples, rep.headline, rep.curves))
    cfg = getattr(model, "config", None)
    return EvaluationReport(
        checkpoint=checkpoint,
        model=CELL_NAMES.get(getattr(cfg, "cell", ""), type(model).__name__),
        parameters=sum(p.numel() for p in model.parameters()),
        convention=conv.name,
        convention_description=conv.describe(),
        data={
            "path": str(data_cfg.path),
            "dataset": data_cfg.dataset,
            "frame_size": list(data_cfg.frame_size),
            "channels": data_cfg.channels,
        },
        split=split,
        context_frames=context,
        horizons=horizons,
        accuracy=accuracy,
        limit=limit,
    )


def evaluate_checkpoint(
    checkpoint: str | Path,
    *,
    data: str | Path | None = None,
    split: str = "test",
    future: Sequence[int] | None = None,
    metrics: Sequence[str] | str | None = None,
    convention: str | None = None,
    lpips_model: Any = None,
    lpips_weights: str | Path | None = None,
    batch_size: int | None = None,
    limit: int | None = None,
    context: int | None = None,
    device: torch.device | str = "cpu",
    workers: int | None = None,
    prepare: bool = True,
    progress: ProgressFn | None = None,
) -> EvaluationReport:
    """Load ``checkpoint`` (file or run directory) and evaluate it; defaults come from its recipe.

    ``future``, ``metrics``, ``convention`` and ``batch_size`` default to the recipe's ``eval``
    section (for the authors' files: F=10, mse/psnr/ssim/lpips, paper, 16). LPIPS is loaded
    here (from ``lpips_weights`` or the default places) unless ``lpips_model`` is given.
    Moving-MNIST is prepared on demand when ``prepare`` (like ``cttlstm train``).
    """
    from cttlstm_cli.data.dataset import ensure_mmnist

    path = resolve_checkpoint_path(checkpoint)
    device = torch.device(device)
    model, recipe = load_model_and_recipe(path, device)
    data_cfg = data_config_for(recipe, data, context, model.image_channels)
    ev = recipe.eval if recipe is not None else None
    metric_names = parse_metrics(metrics if metrics is not None else (ev.metrics if ev else DEFAULT_EVAL_METRICS))
    conv = get_convention(convention or (ev.convention if ev else "paper"))
    future = list(future) if future else (list(ev.future_frames) if ev else [10])
    if prepare and data_cfg.dataset == "mmnist":
        ensure_mmnist(data_cfg, progress=False)
    if "lpips" in metric_names and lpips_model is None:
        from cttlstm_cli.evaluation.lpips import load_lpips

        lpips_model = load_lpips(lpips_weights, device=device)
    return evaluate_model(
        model,
        data_cfg,
        checkpoint=str(path),
        split=split,
        future=future,
        metrics=metric_names,
        convention=conv.name,
        lpips_model=lpips_model,
        batch_size=batch_size or (ev.batch_size if ev else 16),
        limit=limit,
        device=device,
        workers=workers,
        progress=progress,
    )


def default_output_dir(checkpoint: str | Path, split: str, future: Sequence[int], convention: str) -> Path:
    """Where a report goes without ``--out``: ``<run dir>/eval-<split>-<F>-<convention>`` for a
    run directory or its ``best.pt``, else ``<dir>/<stem>-eval-<split>-<F>-<convention>`` beside
    the checkpoint file (``F`` joined by ``-`` for several horizons). The convention is in the
    name so that reports under different conventions never overwrite each other."""
    path = Path(checkpoint)
    name = f"eval-{split}-{'-'.join(str(f) for f in future)}-{convention}"
    if path.is_dir():
        return path / name
    if path.name == "best.pt":
        return path.parent / name
    return path.parent / f"{path.stem}-{name}"


def write_json_atomic(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented JSON to a temporary name beside ``path``, then rename."""
    import json

    return write_text_atomic(path, json.dumps(data, indent=2) + "\n")


__all__ = [
    "DEFAULT_CONTEXT",
    "DEFAULT_EVAL_METRICS",
    "EvaluationReport",
    "HorizonResult",
    "data_config_for",
    "default_output_dir",
    "evaluate_checkpoint",
    "evaluate_classifier",
    "evaluate_frames",
    "evaluate_model",
    "parse_future",
    "write_json_atomic",
]
