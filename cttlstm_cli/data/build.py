"""One entry point for every dataset ``cttlstm prepare`` knows: :func:`prepare_dataset`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cttlstm_cli.data.prepare import PrepareResult, default_workers
from cttlstm_cli.errors import CttlstmError

DATASETS = ("mmnist", "kth", "ssv2", "folder")
#: frame size (H, W) each dataset is prepared at when none is given
DEFAULT_SIZES: dict[str, tuple[int, int]] = {"mmnist": (64, 64), "kth": (128, 128), "ssv2": (128, 128), "folder": (64, 64)}


def prepare_dataset(
    dataset: str,
    source: str | Path | None,
    out: str | Path,
    *,
    size: tuple[int, int] | None = None,
    workers: int | None = None,
    seed: int = 0,
    gray: bool = False,
    progress: bool = True,
    **options: Any,
) -> PrepareResult:
    """Prepare ``dataset`` from ``source`` into ``out`` (HDF5 shards and a manifest).

    ``options`` are the dataset's own: mmnist ``mnist, train, val, test, frames, test_frames,
    test_seq, download``; kth ``protocol, val_persons, sequences``; ssv2 ``subset, labels_dir,
    max_frames``; folder ``fractions, max_frames``. ``gray`` stores one channel (ssv2, folder).
    """
    if dataset not in DATASETS:
        raise CttlstmError(f"unknown dataset {dataset!r}; choose one of: {', '.join(DATASETS)}")
    workers = workers or default_workers()
    h, w = size or DEFAULT_SIZES[dataset]
    if dataset == "mmnist":
        if source is not None:
            raise CttlstmError("mmnist takes no SOURCE; use --mnist for the digit file")
        if h != w:
            raise CttlstmError(f"Moving-MNIST frames are square; got {h}x{w}")
        from cttlstm_cli.data.mmnist import build_mmnist

        return build_mmnist(out, size=h, seed=seed, workers=workers, progress=progress, **options)
    if source is None:
        raise CttlstmError(f"{dataset} needs a SOURCE folder (see 'cttlstm prepare --help')")
    if not Path(source).exists():
        raise CttlstmError(f"SOURCE not found: {source}")
    if dataset == "kth":
        from cttlstm_cli.data.kth import build_kth

        return build_kth(source, out, size=(h, w), workers=workers, progress=progress, **options)
    channels = 1 if gray else 3
    if dataset == "ssv2":
        from cttlstm_cli.data.ssv2 import build_ssv2

        return build_ssv2(source, out, size=(h, w), channels=channels, seed=seed, workers=workers, progress=progress, **options)
    from cttlstm_cli.data.folder import build_folder

    return build_folder(source, out, size=(h, w), channels=channels, seed=seed, workers=workers, progress=progress, **options)
