"""Recipe validation: one clear line naming the key, for files and --set overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cttlstm_cli.errors import CttlstmError
from cttlstm_cli.recipe import load_recipe

from conftest import RECIPES


@pytest.mark.parametrize("name", ["mmnist", "mmnist-convlstm", "kth", "kth-convlstm", "smoke", "ssv2", "ssv2-convlstm"])
def test_bundled_recipes_validate(name: str) -> None:
    recipe = load_recipe(RECIPES / f"{name}.yaml")
    assert recipe.name == name
    assert recipe.model.cell == ("convlstm" if "convlstm" in name else "convttlstm")


def test_kth_is_128_and_paper_setting() -> None:
    r = load_recipe(RECIPES / "kth.yaml")
    assert r.data.frame_size == (128, 128)
    assert (r.model.ctt_order, r.model.history, r.model.rank, r.model.kernel) == (3, 3, 8, 5)
    assert r.eval.future_frames == [20, 40]


def test_overrides_apply_and_validate() -> None:
    r = load_recipe(RECIPES / "mmnist.yaml", ["train.lr=1e-4", "model.blocks=[2, 2]", "model.channels=[8, 8]", "data.frame_size=[32,48]"])
    assert r.train.lr == 1e-4 and r.model.blocks == [2, 2] and r.data.frame_size == (32, 48)


@pytest.mark.parametrize(
    "override,message",
    [
        ("model.history=2", "model.history (M=2) must be >= model.ctt_order (N=3)"),
        ("data.input_frames=0", "data.input_frames: Input should be greater than or equal to 1"),
        ("train.lr=-0.1", "train.lr: Input should be greater than 0"),
        ("train.lr=1e38", "train.lr: must be at most 1e37 (the optimizer's float32 step overflows beyond it), got 1e+38"),
        ("train.lr=fast", "train.lr: Input should be a valid number"),
        ("model.colour=red", "model.colour: unknown key"),
        ("model.kernel=4", "model.kernel: must be odd"),
        ("model.cell=gru", "model.cell: Input should be 'convttlstm', 'convlstm' or 'convlstm_ttd'"),
        ("train.precision=fp8", "train.precision"),
        ("model.blocks=[3, 3]", "model.blocks (2 blocks) and model.channels (4 widths) differ"),
        ("eval.future_frames=[10, 0]", "eval.future_frames: every entry must be >= 1"),
        ("nonsense", "--set expects KEY=VALUE"),
        ("train.lr.x=1", "train.lr is not a section"),
    ],
)
def test_invalid_values_name_the_key(override: str, message: str) -> None:
    with pytest.raises(CttlstmError) as info:
        load_recipe(RECIPES / "mmnist.yaml", [override])
    text = str(info.value)
    assert message in text
    assert "\n" not in text


def test_broken_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(CttlstmError, match="not valid YAML"):
        load_recipe(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(CttlstmError, match="expected a mapping"):
        load_recipe(scalar)
    with pytest.raises(CttlstmError, match="recipe not found"):
        load_recipe(tmp_path / "missing.yaml")
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("trian: {lr: 0.1}\n")
    with pytest.raises(CttlstmError, match="trian: unknown key"):
        load_recipe(unknown)


def test_empty_files_are_refused_not_defaulted(tmp_path: Path) -> None:
    for text in ("", "\n# only comments\n", "{}\n"):
        empty = tmp_path / "empty.yaml"
        empty.write_text(text)
        with pytest.raises(CttlstmError, match=r"^recipe .*empty\.yaml is empty \(no sections\)"):
            load_recipe(empty)


def test_values_are_echoed_as_written_and_booleans_are_not_numbers(tmp_path: Path) -> None:
    from cttlstm_cli.recipe import as_given

    assert [as_given(v) for v in ("bxi", ["b", "i"], (64, 64), True, None, 2.5, {"a": 1})] == [
        "bxi", "[b, i]", "[64, 64]", "true", "null", "2.5", "{a: 1}"
    ]
    for override, key in [("train.batch_size=true", "train.batch_size"), ("data.stride=false", "data.stride"),
                          ("model.blocks=[true, 1, 1, 1]", "model.blocks.0")]:
        with pytest.raises(CttlstmError, match=rf"{key}: must be a number, not true or false$"):
            load_recipe(RECIPES / "mmnist.yaml", [override])
    # real booleans stay booleans
    assert load_recipe(RECIPES / "mmnist.yaml", ["train.compile=true", "train.channels_last=false"]).train.compile is True


def test_prediction_loss_kinds() -> None:
    from cttlstm_cli.models.losses import prediction_loss

    torch.manual_seed(0)
    pred, target = torch.rand(2, 3, 1, 4, 4), torch.rand(2, 3, 1, 4, 4)
    l1, l2 = (pred - target).abs().mean(), ((pred - target) ** 2).mean()
    assert torch.allclose(prediction_loss(pred, target), l1 + l2)
    assert torch.allclose(prediction_loss(pred, target, "l2"), l2)
    assert torch.allclose(prediction_loss(pred, target, "l1"), l1)
    assert load_recipe(RECIPES / "mmnist.yaml").train.loss == "l1+l2"  # the paper's
    assert load_recipe(RECIPES / "mmnist.yaml", ["train.loss=l2"]).train.loss == "l2"
    with pytest.raises(CttlstmError, match="train.loss"):
        load_recipe(RECIPES / "mmnist.yaml", ["train.loss=huber"])
