"""Evaluate a trained model on a prepared dataset: the library behind ``cttlstm evaluate``.

Nothing here prints. :func:`evaluate_checkpoint` loads a checkpoint (ours, a run
directory, or the authors' released file), reads the test clips and returns an
:class:`EvaluationReport`, a plain-data report that ``to_dict()`` turns into the dict that
:func:`combined_report` checks against the report format (:mod:`cttlstm_cli.evaluation.report`)
and that is written as ``report.json`` and printed by ``--json``.

Frame prediction: for every horizon F the split is cut into non-overlapping clips of
``I + F`` frames (I = the recipe's ``data.input_frames``, 10 in the paper); the model sees
the first I frames and predicts F frames recursively, ``model(clips[:, :I], future_frames=F)``;
the predictions are compared with ``clips[:, I:]`` frame by frame under a metric convention
(``docs/metrics.md``). Per-frame curves are means over clips; each headline value is the
mean of its curve.

Beside every frame-predicting model the same clips are scored for two trivial predictors
(:data:`TRIVIAL_PREDICTORS`): repeating the last context frame, and a blank (all-zero)
frame. A model that does not beat the better of them has learnt nothing about motion; the
report keeps them under each horizon's ``baselines``.

Activity recognition (a checkpoint whose model has a classifier): every video of the split
gives one clip from its observed beginning (``EarlyActivityDataset``); the logits after
predicting the recipe's ``data.future_frames`` frames give top-1 accuracy, overall and per
activity group (the manifest's ``groups``), as in the paper's Tables 1 and 3. The predicted
frames of those clips are scored with the frame metrics as well.

Under torchrun (a process group joined, :func:`cttlstm_cli.distributed.setup_distributed`) every rank
scores its share of the clips (every world-th one) and the metric sums, clip counts and activity labels
are added up across ranks, so that every rank returns the report one process would have made.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from cttlstm_cli.atomic import write_json_atomic
from cttlstm_cli.data.dataset import make_loader, split_batch
from cttlstm_cli.errors import CttlstmError
from cttlstm_cli.evaluation.metrics import MetricAccumulator, get_convention, parse_metrics
from cttlstm_cli.evaluation.report import BASELINE_NAMES, default_output_dir, report_label, report_payload
from cttlstm_cli.checkpoint import load_model_and_recipe, resolve_checkpoint_path
from cttlstm_cli.models import VideoModel
from cttlstm_cli.recipe import DataConfig, Recipe

#: metrics evaluated by default for checkpoints without a recipe (the authors' files)
DEFAULT_EVAL_METRICS = ("mse", "psnr", "ssim", "lpips")
#: context length for checkpoints without a recipe (the paper's 10 -> F protocol)
DEFAULT_CONTEXT = 10

#: ``progress(description, done, total)``; called once with done=0 before each pass
ProgressFn = Callable[[str, int, int], None]


def copy_last_frame(context: torch.Tensor, future: int) -> torch.Tensor:
    """The trivial "nothing moves" prediction: the last context frame, ``future`` times."""
    return context[:, -1:].expand(-1, future, *context.shape[2:])


def blank_frame(context: torch.Tensor, future: int) -> torch.Tensor:
    """The trivial "nothing there" prediction: all-zero frames (Moving-MNIST's background)."""
    return context.new_zeros(context.shape[0], future, *context.shape[2:])


#: trivial predictors scored beside every model: ``name -> predict(context [B, I, C, H, W], F)``
TRIVIAL_PREDICTORS: dict[str, Callable[[torch.Tensor, int], torch.Tensor]] = dict(zip(BASELINE_NAMES, (copy_last_frame, blank_frame)))


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
    #: the same metrics for each of :data:`TRIVIAL_PREDICTORS`: ``{name: {"metrics", "per_frame"}}``
    baselines: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "future_frames": self.future_frames,
            "num_samples": self.num_samples,
            "metrics": dict(self.metrics),
            "per_frame": {k: list(v) for k, v in self.per_frame.items()},
        }
        if self.baselines:
            out["baselines"] = {name: {"metrics": dict(b["metrics"]), "per_frame": dict(b["per_frame"])} for name, b in self.baselines.items()}
        return out


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
def predict_and_score(
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
    classify: bool = False,
    baselines: dict[str, MetricAccumulator] | None = None,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Predict ``future`` frames from the first ``context`` of every clip ``[I+F, C, H, W]`` of
    ``dataset`` and accumulate the frame metrics against the rest.

    ``baselines`` maps names of :data:`TRIVIAL_PREDICTORS` to accumulators that score those
    predictors on the same clips.

    With ``classify`` (labelled clips, a model with a classifier) also returns the labels and
    the predicted classes ``(labels, predictions)`` of every clip, in order.
    """
    total = len(dataset)  # type: ignore[arg-type]
    done = 0
    if progress:
        progress(description, 0, total)
    labels_all: list[torch.Tensor] = []
    predicted_all: list[torch.Tensor] = []
    loader = make_loader(dataset, batch_size, None, workers, device, drop_last=False)
    with contextlib.closing(loader):  # its workers stop here, also when a batch raises
        for batch in loader:
            clips, labels = split_batch(batch)
            clips = clips.to(device, non_blocking=True).float()
            if classify:
                pred, logits = model(clips[:, :context], future_frames=future, classify=True)
                labels_all.append(labels.cpu())
                predicted_all.append(logits.argmax(dim=1).cpu())
            else:
                pred = model(clips[:, :context], future_frames=future)
            target = clips[:, context : context + future]
            if pred is not None:  # None: a classifier that predicts no frames
                accumulator.update(pred.float(), target)
            for name, baseline in (baselines or {}).items():
                baseline.update(TRIVIAL_PREDICTORS[name](clips[:, :context], future), target)
            done += clips.shape[0]
            if progress:
                progress(description, done, total)
    if not classify:
        return None
    return torch.cat(labels_all), torch.cat(predicted_all)


def activity_accuracy(
    labels: torch.Tensor, predicted: torch.Tensor, groups: dict[str, list[int]] | None, label_names: list[str] | None
) -> dict[str, Any]:
    """Top-1 accuracy overall, per activity group (the paper's Table 1) and per class."""
    correct = predicted == labels
    result: dict[str, Any] = {"top1": float(correct.double().mean()), "num_samples": int(labels.numel())}
    if groups:
        per_group: dict[str, Any] = {}
        for name, ids in groups.items():
            mask = torch.isin(labels, torch.as_tensor(list(ids), dtype=labels.dtype))
            n = int(mask.sum())
            per_group[name] = {"top1": float(correct[mask].double().mean()) if n else None, "num_samples": n}
        result["per_group"] = per_group
    per_class: dict[str, Any] = {}
    for label in sorted(set(labels.tolist())):
        mask = labels == label
        name = label_names[label] if label_names and 0 <= label < len(label_names) else str(label)
        per_class[name] = {"top1": float(correct[mask].double().mean()), "num_samples": int(mask.sum())}
    result["per_class"] = per_class
    return result


def evaluate_model(
    model: VideoModel,
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
    baselines: bool = True,
) -> EvaluationReport:
    """Evaluate an already loaded ``model`` on ``data_cfg``'s ``split`` (see the module doc).

    ``baselines`` scores the :data:`TRIVIAL_PREDICTORS` on the same clips (frame-predicting
    models only)."""
    from cttlstm_cli.data.dataset import EarlyActivityDataset, open_dataset

    from cttlstm_cli.distributed import joined_group

    device = torch.device(device)
    group = joined_group(device)  # under torchrun (a group joined): the clips are shared among the ranks
    conv = get_convention(convention)
    metric_names = parse_metrics(metrics)
    if not future or any(int(f) < 1 for f in future):
        raise CttlstmError(f"--future must be at least 1 frame, got {list(future)}")
    if limit is not None and limit < 1:
        raise CttlstmError(f"--limit must be at least 1, got {limit}")
    channels = model.image_channels
    if channels != data_cfg.channels:
        raise CttlstmError(f"the model predicts {channels} channel(s) but the data has {data_cfg.channels}")
    model.check_data(*data_cfg.frame_size, int(data_cfg.input_frames))
    workers = data_cfg.resolved_workers() if workers is None else workers
    context = int(data_cfg.input_frames)
    model = model.to(device).eval()
    horizons: list[HorizonResult] = []
    accuracy = None
    classify = model.num_classes is not None
    if classify:
        # activity recognition: one clip per video from its observed beginning, the recipe's horizon
        future = [int(data_cfg.future_frames)]
    for f in (int(f) for f in future):
        if classify:
            dataset: Dataset = EarlyActivityDataset.from_recipe(data_cfg, split)
        else:
            dataset = open_dataset(data_cfg, split, mode="sequential", clip_frames=context + f)
        acc = MetricAccumulator(conv, metric_names, lpips_model, device=device)
        trivial = (
            {name: MetricAccumulator(conv, metric_names, lpips_model, device=device) for name in TRIVIAL_PREDICTORS}
            if baselines and model.predicts_frames
            else {}
        )
        description = f"{context}->{f}" + (" + activity" if classify else "")
        clips = _limited(dataset, limit)
        if group.world > 1:  # under torchrun each rank scores its share; the sums are added below
            clips = Subset(clips, group.share(len(clips)))  # type: ignore[arg-type]
        found = predict_and_score(
            model, clips, context, f, acc, device, batch_size, workers, progress if group.is_main else None, description, classify, trivial
        )
        if group.world > 1:
            for scored_here in ([acc] if model.predicts_frames else []) + list(trivial.values()):
                scored_here.all_reduce(num_frames=f)
            if found is not None:
                every = group.gather(found)
                found = torch.cat([labels for labels, _ in every]), torch.cat([pred for _, pred in every])
        if found is not None:
            manifest = dataset.base.manifest  # type: ignore[attr-defined]
            accuracy = activity_accuracy(*found, manifest.get("groups"), manifest.get("label_names"))
        if model.predicts_frames:
            rep = acc.report()
            scored = {name: b.report() for name, b in trivial.items()}
            horizons.append(
                HorizonResult(
                    f,
                    rep.num_samples,
                    rep.headline,
                    rep.curves,
                    {name: {"metrics": r.headline, "per_frame": r.curves} for name, r in scored.items()},
                )
            )
        else:
            horizons.append(HorizonResult(f, int(accuracy["num_samples"]) if accuracy else 0, {}, {}))
    return EvaluationReport(
        checkpoint=checkpoint,
        model=model.name,
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
    baselines: bool = True,
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
        baselines=baselines,
    )


def shared_lpips(metrics: Sequence[str] | None, weights: str | Path | None, device: torch.device) -> Any:
    """The LPIPS network to share among several evaluations, or None to let each checkpoint
    load it only if its recipe asks for LPIPS: loaded here when ``metrics`` names LPIPS or
    ``weights`` are given."""
    if (metrics is not None and "lpips" in metrics) or weights is not None:
        from cttlstm_cli.evaluation.lpips import load_lpips

        return load_lpips(weights, device=device)
    return None


def write_reports(
    reports: Sequence[dict[str, Any]], sources: Sequence[str | Path], split: str, out: str | Path | None = None
) -> list[Path]:
    """Write ``report.json`` and ``per_frame.png`` for evaluated checkpoints; returns the files written.

    One report goes to ``out`` (default :func:`default_output_dir`). Several go together to
    ``out`` as ``{"convention", "checkpoints": [...]}`` with one plot of all, or without ``out``
    each to its own default folder. ``sources`` are the checkpoints as the user named them.
    Each ``report.json`` is :func:`combined_report`'s, checked by the format every reader uses.
    """
    from cttlstm_cli.evaluation.plots import plot_per_frame

    def write(folder: Path, shown: Sequence[dict[str, Any]]) -> list[Path]:
        written = [write_json_atomic(folder / "report.json", combined_report(shown))]
        if any(h["per_frame"] for r in shown for h in r["horizons"]):  # classifiers alone have no curves
            written.append(plot_per_frame(list(shown), folder / "per_frame.png", [report_label(r["checkpoint"]) for r in shown]))
        return written

    def own_folder(source: str | Path, rep: dict[str, Any]) -> Path:
        return default_output_dir(source, split, [h["future_frames"] for h in rep["horizons"]], rep["convention"])

    if len(reports) == 1:
        return write(Path(out) if out is not None else own_folder(sources[0], reports[0]), reports)
    if out is not None:
        return write(Path(out), reports)
    return [path for src, rep in zip(sources, reports) for path in write(own_folder(src, rep), [rep])]


def combined_report(reports: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The JSON object of evaluated checkpoints' reports, as ``report.json`` holds it and ``--json``
    prints it: the report for one, ``{"convention", "checkpoints": [...]}`` (the first one's
    convention) for several; built through the report format that compare and the suite read
    (:func:`cttlstm_cli.evaluation.report.report_payload`, metrics that were not finite as null)."""
    return report_payload(reports)


__all__ = [
    "DEFAULT_CONTEXT",
    "DEFAULT_EVAL_METRICS",
    "TRIVIAL_PREDICTORS",
    "blank_frame",
    "copy_last_frame",
    "EvaluationReport",
    "HorizonResult",
    "data_config_for",
    "evaluate_checkpoint",
    "activity_accuracy",
    "combined_report",
    "predict_and_score",
    "shared_lpips",
    "write_reports",
    "evaluate_model",
    "parse_future",
    "write_json_atomic",
]
