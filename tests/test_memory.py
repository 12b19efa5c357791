"""Micro-batches: the same optimizer step in less memory, sized from an activation estimate."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cttlstm_cli.models import create_model
from cttlstm_cli.recipe import load_recipe
from cttlstm_cli.training import memory
from cttlstm_cli.training.memory import activation_bytes_per_clip, choose_micro_batch, resolve_micro_batch
from cttlstm_cli.training.step import train_step
from cttlstm_cli.training.trainer import Trainer

from conftest import RECIPES
from synthetic import BouncingSquares


def smoke(*sets: str):
    return load_recipe(RECIPES / "smoke.yaml", list(sets))


@pytest.mark.parametrize("teacher_forcing", [1.0, 0.5, 0.0])
def test_micro_batches_give_the_full_batch_step(teacher_forcing: float) -> None:
    recipe = smoke()
    # float64, so that free-running rollouts do not amplify float32 rounding into the comparison
    clips = BouncingSquares(8, 10, 32)[0:8].double()
    results = []
    for micro in (None, 2):
        torch.manual_seed(0)
        model = create_model(recipe.model).double()
        opt = torch.optim.SGD(model.parameters(), lr=0.0)  # keep the weights: compare the step's gradients
        loss = train_step(model, opt, clips, recipe, teacher_forcing, generator=torch.Generator().manual_seed(3), micro_batch=micro)
        results.append((loss, [p.grad.clone() for p in model.parameters()]))
    (loss_full, full), (loss_micro, micro_grads) = results
    torch.testing.assert_close(loss_micro, loss_full, rtol=1e-6, atol=1e-7)
    for a, b in zip(full, micro_grads):
        assert (a - b).abs().max() <= 1e-6 * a.abs().max()
    with pytest.raises(ValueError, match="does not divide"):
        train_step(model, opt, clips, recipe, 1.0, micro_batch=3)


def test_choose_micro_batch_takes_the_largest_divisor_that_fits() -> None:
    gib = 2**30
    assert choose_micro_batch(16, gib, 100 * gib) == 16
    assert choose_micro_batch(16, gib, 10 * gib) == 4  # 8 x 1.4 GiB > 8 GiB budget, 4 x 1.4 fits
    assert choose_micro_batch(12, gib, 6 * gib) == 3  # 4 x 1.4 GiB > 4.8 GiB budget
    assert choose_micro_batch(16, gib, gib // 2) == 1  # nothing fits: one clip at a time


def test_activation_estimate_scales_with_pixels_and_matches_a_real_backward() -> None:
    small, large = smoke(), smoke("data.frame_size=[64,64]")
    model = create_model(small.model)
    per_clip_32 = activation_bytes_per_clip(model, small, torch.device("cpu"))
    per_clip_64 = activation_bytes_per_clip(model, large, torch.device("cpu"))
    assert 3.0 <= per_clip_64 / per_clip_32 <= 4.5
    # The estimate counts what autograd really keeps: a 32x32 clip's saved tensors at 32x32.
    assert per_clip_32 > 0
    clips = torch.rand(4, 10, 1, 32, 32)
    saved = {}

    def keep(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        model(clips, 5, 5, 1.0)
    real = sum(v for k, v in saved.items() if k not in params) / 4
    assert 0.7 <= per_clip_32 / real <= 1.3


def test_trainer_splits_the_batch_when_memory_is_short(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = smoke()
    model = create_model(recipe.model)
    per_clip = activation_bytes_per_clip(model, recipe, torch.device("cpu"))
    monkeypatch.setattr(memory, "available_memory", lambda device: int(per_clip * 2 * memory.SAFETY / 0.8) + 1)
    messages: list[str] = []
    trainer = Trainer(recipe, tmp_path / "run", torch.device("cpu"), BouncingSquares(64, 10, 32), BouncingSquares(16, 10, 32, seed=1), log=messages.append)
    assert trainer.micro_batch.size == 2
    assert any("micro-batches of 2" in m for m in messages)
    trainer.fit(max_steps=2)
    assert resolve_micro_batch(model, smoke("train.micro_batch=4"), torch.device("cpu")).size == 4
