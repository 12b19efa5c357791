"""Importing torchvision next to a CPU-only torch.

torchvision's PyPI wheels are CUDA builds. Beside the CPU build of torch their compiled
extension (``torchvision/_C.so``) fails to load, torchvision carries on without it, and
then its import dies in ``_meta_registrations`` with ``operator torchvision::nms does not
exist``: it registers fake (meta) kernels for operators that nobody defined. We only need
``torchvision.models`` (AlexNet for LPIPS), never the custom ops, so declaring the operator
*schemas* (no kernels) is enough for the import to succeed. Calling one of those ops
afterwards fails loudly with "no kernel", which is the honest outcome.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

import torch

from cttlstm_cli.errors import CttlstmError

# Schemas as torchvision 0.2x's C++ extension defines them (csrc/ops/*.cpp). Only schemas:
# an op declared here has no kernel, so nothing can silently compute a wrong result.
TORCHVISION_OP_SCHEMAS: dict[str, str] = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "box_iou_rotated": "box_iou_rotated(Tensor boxes1, Tensor boxes2) -> Tensor",
    "roi_align": (
        "roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, "
        "SymInt pooled_width, int sampling_ratio, bool aligned) -> Tensor"
    ),
    "_roi_align_backward": (
        "_roi_align_backward(Tensor grad, Tensor rois, float spatial_scale, SymInt pooled_height, "
        "SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, SymInt width, "
        "int sampling_ratio, bool aligned) -> Tensor"
    ),
    "qroi_align": (
        "qroi_align(Tensor input, Tensor rois, float input_scale, int input_zero_point, float rois_scale, "
        "int rois_zero_point, float spatial_scale, SymInt pooled_height, SymInt pooled_width, "
        "int sampling_ratio, bool aligned) -> Tensor"
    ),
    "roi_pool": (
        "roi_pool(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, "
        "SymInt pooled_width) -> (Tensor, Tensor)"
    ),
    "_roi_pool_backward": (
        "_roi_pool_backward(Tensor grad, Tensor rois, Tensor argmax, float spatial_scale, "
        "SymInt pooled_height, SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, "
        "SymInt width) -> Tensor"
    ),
    "ps_roi_align": (
        "ps_roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, "
        "SymInt pooled_width, int sampling_ratio) -> (Tensor, Tensor)"
    ),
    "_ps_roi_align_backward": (
        "_ps_roi_align_backward(Tensor grad, Tensor rois, Tensor channel_mapping, float spatial_scale, "
        "SymInt pooled_height, SymInt pooled_width, int sampling_ratio, SymInt batch_size, "
        "SymInt channels, SymInt height, SymInt width) -> Tensor"
    ),
    "ps_roi_pool": (
        "ps_roi_pool(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, "
        "SymInt pooled_width) -> (Tensor, Tensor)"
    ),
    "_ps_roi_pool_backward": (
        "_ps_roi_pool_backward(Tensor grad, Tensor rois, Tensor channel_mapping, float spatial_scale, "
        "SymInt pooled_height, SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, "
        "SymInt width) -> Tensor"
    ),
    "deform_conv2d": (
        "deform_conv2d(Tensor input, Tensor weight, Tensor offset, Tensor mask, Tensor bias, "
        "SymInt stride_h, SymInt stride_w, SymInt pad_h, SymInt pad_w, SymInt dilation_h, "
        "SymInt dilation_w, SymInt groups, SymInt offset_groups, bool use_mask) -> Tensor"
    ),
    "_deform_conv2d_backward": (
        "_deform_conv2d_backward(Tensor grad, Tensor input, Tensor weight, Tensor offset, Tensor mask, "
        "Tensor bias, SymInt stride_h, SymInt stride_w, SymInt pad_h, SymInt pad_w, SymInt dilation_h, "
        "SymInt dilation_w, SymInt groups, SymInt offset_groups, bool use_mask) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor)"
    ),
}

# The Library object must outlive the import: torch removes its definitions when it is collected.
_SCHEMA_LIB: torch.library.Library | None = None


def _has_schema(name: str) -> bool:
    try:
        torch._C._get_schema(f"torchvision::{name}", "")
        return True
    except RuntimeError:
        return False


def declare_torchvision_op_schemas() -> list[str]:
    """Define (schema only) every torchvision op not already defined; return the names defined."""
    global _SCHEMA_LIB
    missing = [name for name in TORCHVISION_OP_SCHEMAS if not _has_schema(name)]
    if not missing:
        return []
    if _SCHEMA_LIB is None:
        # FRAGMENT: other code (a working torchvision extension) may own parts of the namespace.
        _SCHEMA_LIB = torch.library.Library("torchvision", "FRAGMENT")
    for name in missing:
        _SCHEMA_LIB.define(TORCHVISION_OP_SCHEMAS[name])
    return missing


def _forget_torchvision() -> None:
    # A failed import leaves half-initialised submodules behind; drop them so the retry
    # re-runs torchvision's registrations from the start.
    for mod in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[mod]


def import_torchvision() -> ModuleType:
    """Import torchvision, declaring missing ``torchvision::`` op schemas if a CUDA wheel needs them.

    Raises :class:`CttlstmError` when torchvision is absent or still fails to import.
    """
    try:
        return importlib.import_module("torchvision")
    except ModuleNotFoundError as exc:
        if exc.name == "torchvision":
            raise CttlstmError(
                "torchvision is not installed (LPIPS needs its AlexNet): run scripts/setup.sh, "
                "or evaluate without lpips via --metrics"
            ) from None
        raise
    except RuntimeError as exc:
        if "torchvision::" not in str(exc):
            raise
        first_error = exc
    _forget_torchvision()
    declare_torchvision_op_schemas()
    try:
        return importlib.import_module("torchvision")
    except RuntimeError as exc:
        raise CttlstmError(
            f"torchvision does not import with this torch ({torch.__version__}): {exc} "
            f"(first attempt: {first_error}); install the torchvision matching torch"
        ) from None
