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
    test_seq, download``; kth ``protocol, val_persons, sequences`` and, without ``source``,
    ``mirror, download`` (the archives are fetched into the cache and verified first:
    :func:`cttlstm_cli.data.kth.fetch_kth`); ssv2 ``subset, labels_dir, max_frames``; folder
    ``fractions, max_frames``. ``gray`` stores one channel (ssv2, folder).
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
    if dataset == "kth" and source is None:
        return _fetch_and_prepare_kth(out, size=(h, w), workers=workers, progress=progress, **options)
    if dataset == "ssv2" and source is None:
        from cttlstm_cli.data.ssv2 import source_hint

        raise CttlstmError(source_hint())
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


def _fetch_and_prepare_kth(
    out: str | Path, *, mirror: str | None = None, download: bool = True, progress: bool = True, **options: Any
) -> PrepareResult:
    """Fetch (or find in the cache) and verify the KTH files, then prepare them like a SOURCE folder."""
    from cttlstm_cli.data import kth
    from cttlstm_cli.data import shards as fmt
    from cttlstm_cli.data.prepare import inspect_output

    out = Path(out)
    # refuse what would be refused after the download anyway, before fetching a gigabyte
    kth.check_options(options.get("protocol", "openstl"), options.get("val_persons"), options.get("sequences"))
    earlier_prepare = out.is_dir() and ((out / fmt.MANIFEST_NAME).exists() or fmt.read_state(out) is not None)
    if out.exists() and not earlier_prepare:
        inspect_output(out, {})  # not a folder, or a folder of other files
    files = kth.fetch_kth(mirror=mirror, download=download, progress=progress)
    from cttlstm_cli.data.prepare import _console

    for warning in files.warnings:  # on stderr, before the long decode rather than after it
        _console.print(f"warning: {warning}", style="yellow", highlight=False, soft_wrap=True)
    result = kth.build_kth(files.folder, out, progress=progress, fetched=files.record, **options)
    fetched = f"{len(files.transferred)} fetched now" if files.transferred else "all from the cache"
    result.notes.append(f"KTH files verified in {files.folder} ({fetched}; {files.record['total_videos']} videos)")
    result.warnings[:0] = files.warnings
    return result
