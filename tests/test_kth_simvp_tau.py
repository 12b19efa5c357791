"""recipes/kth-simvp.yaml and recipes/kth-tau.yaml: OpenSTL's published KTH configurations load and build
models of the published parameter counts (OpenSTL's KTH table: SimVP+gSTA 15.6M, TAU 15.0M)."""

from __future__ import annotations

import pytest

from cttlstm_cli.models import create_model
from cttlstm_cli.recipe import load_recipe

from conftest import RECIPES


@pytest.mark.parametrize(
    "name,arch,drop_path,parameters,published_millions",
    [("kth-simvp", "simvp", 0.2, 15_632_961, 15.6), ("kth-tau", "tau", 0.1, 14_955_201, 15.0)],
)
def test_kth_recipe_is_the_published_configuration(name: str, arch: str, drop_path: float, parameters: int, published_millions: float) -> None:
    recipe = load_recipe(RECIPES / f"{name}.yaml")
    m, data, train = recipe.model, recipe.data, recipe.train
    assert (m.arch, m.hidden_spatial, m.hidden_temporal, m.spatial_blocks, m.temporal_blocks, m.mlp_ratio, m.drop_path) == (
        arch, 64, 256, 2, 6, 8.0, drop_path)  # fmt: skip
    # 128x128 gray KTH, 10 frames in and 20 out in training: two forwards of T = 10
    assert (data.dataset, data.frame_size, data.channels, data.input_frames, data.future_frames) == ("kth", (128, 128), 1, 10, 20)
    assert m.frames == data.input_frames
    assert (train.lr, train.batch_size, train.epochs, train.loss, train.grad_clip) == (1e-3, 16, 100, "l2", None)
    assert (train.lr_schedule, train.one_cycle.warmup, train.one_cycle.div_factor, train.one_cycle.final_div_factor) == ("onecycle", 0.3, 25.0, 1e4)
    assert recipe.eval.future_frames == [20, 40]  # the paper's KTH protocol, as recipes/kth.yaml
    counted = sum(p.numel() for p in create_model(m, data.channels).parameters())
    assert counted == parameters and round(counted / 1e6, 1) == published_millions
