"""``cttlstm prepare``: turn raw data into HDF5 shards plus a manifest."""

from __future__ import annotations

from pathlib import Path

import typer

from cttlstm_cli.cli.app import app
from cttlstm_cli.cli.common import console, err_console
from cttlstm_cli.errors import CttlstmError
from cttlstm_cli.schema import MAX_WORKERS

def parse_size(text: str | None, default: tuple[int, int] | None) -> tuple[int, int] | None:
    """``64`` -> (64, 64); ``120x160`` or ``120,160`` -> (120, 160) (H, W); ``default`` when not given."""
    if text is None:
        return default
    parts = text.lower().replace(",", "x").split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise CttlstmError(f"--size must be N or HxW, got {text!r}") from None
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) < 1:
        raise CttlstmError(f"--size must be N or HxW with positive numbers, got {text!r}")
    return values[0], values[1]


def _int_list(text: str | None, name: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise CttlstmError(f"{name} must be comma-separated integers, got {text!r}") from None


def _fractions(text: str) -> tuple[float, float, float]:
    try:
        values = [float(x) for x in text.split(",")]
    except ValueError:
        raise CttlstmError(f"--split must be three fractions TRAIN,VAL,TEST, got {text!r}") from None
    if len(values) != 3 or min(values) < 0 or abs(sum(values) - 1.0) > 1e-6:
        raise CttlstmError(f"--split must be three non-negative fractions that sum to 1, got {text!r}")
    return values[0], values[1], values[2]


@app.command(
    epilog=(
        "Examples:\n\n"
        "  cttlstm prepare mmnist --out data/mmnist\n\n"
        "  cttlstm prepare mmnist --out data/mmnist --mnist train-images-idx3-ubyte.gz --test-seq mnist_test_seq.npy\n\n"
        "  cttlstm prepare mmnist --out data/smoke-mmnist --size 32 --train 1000 --val 200 --test 200\n\n"
        "  cttlstm prepare kth --out data/kth                      (downloads KTH, about 1 GB, into the cache)\n\n"
        "  cttlstm prepare kth --out data/kth --mirror http://mirror.example.org/kth/\n\n"
        "  cttlstm prepare kth ~/datasets/kth --out data/kth --protocol openstl --workers 8\n\n"
        "  cttlstm prepare ssv2 ~/datasets/ssv2 --out data/ssv2-41 --subset 41\n\n"
        "  cttlstm prepare folder my_videos/ --out data/mine --size 64x64 --gray --split 0.8,0.1,0.1\n\n"
        "  cttlstm prepare --verify data/kth                     (check a prepared dataset)"
    )
)
def prepare(
    dataset: str = typer.Argument(None, metavar="DATASET", help="mmnist, kth, ssv2 or folder."),
    source: Path = typer.Argument(None, help="Raw data: KTH folder or zips (omit it to download KTH), SSv2 folder, or a folder of videos (not for mmnist)."),
    out: Path = typer.Option(None, "--out", "-o", help="Output folder (manifest.json + HDF5 shards); required."),
    verify: Path = typer.Option(
        None, "--verify", metavar="DIR",
        help="Check a prepared dataset instead of preparing one: every shard present, its size and sha256 as the manifest "
        "records, every chunk readable (HDF5 fletcher32), the counts adding up. Exit 1 when something is damaged; "
        "exit 2 with one line for a manifest that breaks the format or does not describe its shards (frame size, "
        "channels, dtype, a source in two splits).",
    ),  # fmt: skip
    workers: int = typer.Option(None, "--workers", "-j", min=1, max=MAX_WORKERS, help="Decoding processes (default: all cores)."),
    size: str = typer.Option(None, "--size", help="Frame size N or HxW (mmnist: canvas, default 64; kth: 128; ssv2: 128; folder: 64)."),
    seed: int = typer.Option(0, "--seed", help="Seed for generation (mmnist) and random splits (folder, ssv2 val)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    # mmnist
    mnist: Path = typer.Option(None, "--mnist", help="mmnist: MNIST training images (IDX, IDX .gz, .npy or .npz)."),
    test_seq: Path = typer.Option(None, "--test-seq", help="mmnist: import mnist_test_seq.npy (uint8 [T, N, 64, 64], time-major) as the test split."),
    train: int = typer.Option(10000, "--train", min=0, help="mmnist: training sequences."),
    val: int = typer.Option(1000, "--val", min=0, help="mmnist: validation sequences."),
    test: int = typer.Option(3000, "--test", min=0, help="mmnist: test sequences."),
    frames: int = typer.Option(20, "--frames", min=1, help="mmnist: frames per train/val sequence."),
    test_frames: int = typer.Option(None, "--test-frames", min=1, help="mmnist: frames per test sequence (default --frames; 40 for a 10->30 test)."),
    offline: bool = typer.Option(
        False, "--no-download", "--offline",
        help="Never touch the network. kth: use only files already in the cache (e.g. cttlstm prepare kth --out data/kth --no-download); "
        "mmnist: use --mnist, the cache or the bundled fallback.",
    ),  # fmt: skip
    # kth
    protocol: str = typer.Option("openstl", "--protocol", help="kth: openstl (resize 160x120 -> 128x128) or paper (center crop 120x120, up-sample to 128x128)."),
    val_persons: str = typer.Option("15,16", "--val-persons", help="kth: persons (of 1-16) held out for validation; '' for none."),
    sequences: Path = typer.Option(None, "--sequences", help="kth: the 00sequences.txt file (default: found inside SOURCE)."),
    mirror: str = typer.Option(
        None, "--mirror", metavar="URL",
        help="kth without SOURCE: fetch the KTH files from this host or local copy instead of KTH's site "
        "(http(s):// or file:// URL, or a folder; default $CTTLSTM_KTH_MIRROR), e.g. --mirror /mnt/datasets/kth.",
    ),  # fmt: skip
    # ssv2
    subset: str = typer.Option(None, "--subset", help="ssv2: '41' for the paper's 41-category subset, or a JSON file {group: \\[templates]}."),
    labels: Path = typer.Option(None, "--labels", help="ssv2: folder with the label JSON files (default: found inside SOURCE)."),
    max_frames: int = typer.Option(None, "--max-frames", min=1, help="ssv2/folder: keep at most this many frames per video."),
    # folder
    gray: bool = typer.Option(False, "--gray", help="folder/ssv2: store gray frames (1 channel) instead of RGB."),
    split: str = typer.Option("0.8,0.1,0.1", "--split", help="folder: TRAIN,VAL,TEST fractions of the videos."),
) -> None:
    """Prepare a dataset: decode, resize and store it as HDF5 shards with a manifest.

    DATASET is mmnist (generated Moving-MNIST-2), kth (KTH actions: a folder of .avi
    files at any depth, or the six action .zip archives; without SOURCE they are
    downloaded into the cache, resumably, and verified), ssv2 (Something-Something V2
    .webm videos with their label JSON files) or folder (your own videos: mp4, avi,
    webm, mov, gif, or sub-folders of frame images). Unreadable files are skipped and
    listed in the manifest. An interrupted prepare, run again with the same options,
    keeps its finished shards (unless SOURCE changed in between: then it starts over,
    and says so); an output prepared with other options is never overwritten, and a
    second prepare into an --out in use is refused. See docs/prepare.md.
    """
    from cttlstm_cli.data.build import prepare_dataset

    if verify is not None:
        if dataset is not None or out is not None:
            raise CttlstmError("--verify DIR checks a prepared dataset; give it alone, without DATASET or --out")
        _verify(verify, progress=not quiet)
        return
    if dataset is None:
        raise CttlstmError("missing DATASET: mmnist, kth, ssv2 or folder (see 'cttlstm prepare --help')")
    if out is None:
        raise CttlstmError("missing --out DIR: the folder to write the prepared dataset to")
    if mirror is not None and (dataset != "kth" or source is not None):
        raise CttlstmError("--mirror only chooses where 'cttlstm prepare kth' without SOURCE downloads from; nothing is downloaded here")
    if dataset == "mmnist":
        options = dict(mnist=mnist, train=train, val=val, test=test, frames=frames, test_frames=test_frames,
                       test_seq=test_seq, download=not offline)  # fmt: skip
    elif dataset == "kth":
        options = dict(protocol=protocol, val_persons=_int_list(val_persons, "--val-persons") or [], sequences=sequences)
        if source is None:
            options.update(mirror=mirror, download=not offline)
    elif dataset == "ssv2":
        options = dict(subset=subset, labels_dir=labels, max_frames=max_frames)
    else:
        options = dict(fractions=_fractions(split), max_frames=max_frames)
    result = prepare_dataset(
        dataset, source, out, size=parse_size(size, None), workers=workers, seed=seed, gray=gray, progress=not quiet, **options
    )
    _report(result)


def _verify(root: Path, progress: bool) -> None:
    """Print the per-shard report of a prepared dataset; exit 1 when anything is damaged."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from cttlstm_cli.data.verify import verify_dataset

    with Progress(TextColumn("verifying {task.description}"), BarColumn(), MofNCompleteColumn(), console=err_console,
                  transient=True, disable=not (progress and err_console.is_terminal)) as bar:  # fmt: skip
        task = bar.add_task(str(root), total=None)

        def advance(file: str, done: int, total: int) -> None:
            bar.update(task, description=file, completed=done, total=total)

        result = verify_dataset(root, progress=advance)
    for line in result.lines():
        (console if result.ok else err_console).print(line, highlight=False, soft_wrap=True)
    if not result.ok:
        raise typer.Exit(1)


def _report(result) -> None:
    m = result.manifest
    for note in result.notes:
        console.print(note, highlight=False, soft_wrap=True, markup=False)
    if result.up_to_date:
        console.print(f"{result.root} is already prepared with these options; nothing to do.", highlight=False)
        return
    parts = [f"{name} {s['videos']} videos / {s['frames']} frames in {len(s['shards'])} shard(s)" for name, s in m["splits"].items()]
    h, w = m["frame_size"]
    console.print(f"prepared {m['dataset']} at {result.root} ({h}x{w}, {m['channels']} channel(s)) in {result.seconds:.1f} s", highlight=False)
    for p in parts:
        console.print(f"  {p}", highlight=False)
    if result.resumed_shards:
        console.print(f"  resumed: kept {result.resumed_shards} finished shard(s) from the interrupted run", highlight=False)
    if m["skipped"]:
        err_console.print(f"skipped {len(m['skipped'])} file(s) (listed in manifest.json 'skipped'):", highlight=False)
        for s in m["skipped"][:10]:
            err_console.print(f"  {s['source']}: {s['reason']}", highlight=False, soft_wrap=True, markup=False)
        if len(m["skipped"]) > 10:
            err_console.print(f"  ... and {len(m['skipped']) - 10} more", highlight=False)
