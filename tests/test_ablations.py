"""The paper's Table 4 ablations as recipes: they validate, differ only in the CTT module's kernel and order,
and build the models (and parameter counts) docs/ablations.md states."""

from __future__ import annotations

import re

import pytest
import torch

from cttlstm_cli.models.registry import create_model
from cttlstm_cli.recipe import load_recipe

from conftest import RECIPES, REPO

#: recipe -> (model.ctt_kernel, model.ctt_order, parameters, Table 4's MSE x10^3, SSIM, LPIPS x10^3)
ABLATIONS: dict[str, tuple[int, int, int, str, str, str]] = {
    "mmnist-ablation-cttd1x1-order1": (1, 1, 2_372_017, "31.52", "0.810", "148.7"),
    "mmnist-ablation-cttd1x1-order3": (1, 3, 2_373_937, "34.84", "0.800", "151.2"),
    "mmnist-ablation-cttd5x5-order1": (5, 1, 2_648_497, "33.08", "0.806", "140.1"),
    "mmnist-ablation-cttd5x5-order3": (5, 3, 2_687_281, "28.88", "0.831", "104.1"),
}
DOC = REPO / "docs" / "ablations.md"


def _without_ablated_keys(name: str) -> dict:
    """The recipe as data, less its name and the two keys the ablation varies (ctt_kernel: its effective value)."""
    raw = load_recipe(RECIPES / f"{name}.yaml").to_dict()
    raw.pop("name")
    for key in ("ctt_kernel", "ctt_order"):
        raw["model"].pop(key)
    return raw


@pytest.mark.parametrize("name", ABLATIONS)
def test_recipe_validates_with_its_setting(name: str) -> None:
    path = RECIPES / f"{name}.yaml"
    recipe = load_recipe(path)
    kernel, order, _, mse, ssim, lpips = ABLATIONS[name]
    assert recipe.name == name
    m = recipe.model
    setting = (m.arch, m.cell, m.ctt_kernel, m.ctt_order, m.history, m.rank, m.kernel)
    assert setting == ("convrnn", "convttlstm", kernel, order, 3, 8, 5)
    assert list(recipe.eval.future_frames) == [30] and recipe.eval.convention == "paper"
    header = "".join(line for line in path.read_text().splitlines(keepends=True) if line.startswith("#"))
    assert "Table 4" in header and f"MSE {mse}" in header and f"SSIM {ssim}" in header and f"LPIPS {lpips}" in header


def test_recipes_differ_only_in_ctt_kernel_and_order() -> None:
    names = list(ABLATIONS)
    first = _without_ablated_keys(names[0])
    for name in names[1:]:
        assert _without_ablated_keys(name) == first, name
    settings = {(ABLATIONS[n][0], ABLATIONS[n][1]) for n in names}
    assert settings == {(1, 1), (1, 3), (5, 1), (5, 3)}
    # and from recipes/mmnist.yaml (the paper's Conv-TT-LSTM) only in those keys and the evaluated horizons
    mmnist = load_recipe(RECIPES / "mmnist.yaml").to_dict()
    assert mmnist["model"].pop("ctt_kernel") is None and mmnist["model"].pop("ctt_order") == 3
    mmnist.pop("name")
    first["eval"]["future_frames"] = mmnist["eval"]["future_frames"]
    assert first == mmnist


@pytest.mark.parametrize("name", ABLATIONS)
def test_builds_with_the_documented_size(name: str) -> None:
    recipe = load_recipe(RECIPES / f"{name}.yaml")
    kernel, order, params, *_ = ABLATIONS[name]
    model = create_model(recipe.model, recipe.data.channels)
    assert sum(p.numel() for p in model.parameters()) == params
    assert f"{params:,}" in DOC.read_text()
    ctt = [m for n, m in model.named_modules() if ".tt." in n and isinstance(m, torch.nn.Conv2d)]
    gates = [m for n, m in model.named_modules() if n.endswith(("input_conv", "state_conv"))]
    assert ctt and {m.kernel_size for m in ctt} == {(kernel, kernel)}  # the CTT module's convs and cores
    assert gates and {m.kernel_size for m in gates} == {(5, 5)}  # the gate convolutions keep k = 5
    cores = [n for n, _ in model.named_modules() if re.search(r"\.tt\.cores\.\d+$", n)]
    assert len(cores) == (order - 1) * 12  # N - 1 cores in each of the 12 layers
    with torch.no_grad():  # it runs: 2 context frames of 16x16, 1 predicted
        out = model(torch.rand(1, 2, 1, 16, 16), future_frames=1)
    assert out.shape == (1, 1, 1, 16, 16)


def test_doc_lists_the_recipes_and_commands() -> None:
    text = DOC.read_text()
    for name, (_, _, _, mse, ssim, lpips) in ABLATIONS.items():
        row = next(line for line in text.splitlines() if f"recipes/{name}.yaml" in line and line.startswith("|"))
        assert all(v in row for v in (mse, ssim, lpips)), row
    for command in ("cttlstm train recipes/mmnist-ablation-", "cttlstm evaluate runs/abl-* --future 30",
                    "cttlstm compare runs/abl-* --out comparison/ablations"):
        assert command in text
