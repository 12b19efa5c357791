"""Model families: the registry, the recipe's ``model.arch``, the contract check, renamed keys,
checkpoints of the version before families existed, and a third-party family installed by pip."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import imageio.v3 as iio
import pytest
import torch
from torch import Tensor, nn

from cttlstm_cli.errors import CttlstmError, RecipeNotice
from cttlstm_cli.models import ModelConfig, RecurrentVideoModel, VideoModel, create_model, model_class, model_names, register_model
from cttlstm_cli.models import registry
from cttlstm_cli.checkpoint import load_model, load_model_and_recipe
from cttlstm_cli.models.convrnn import ConvRNN, ConvRNNConfig
from cttlstm_cli.recipe import load_recipe, recipe_from_dict

from conftest import RECIPES, REPO

LEGACY = Path(__file__).parent / "fixtures" / "legacy-438a4fa"
EXAMPLE = REPO / "examples" / "cttlstm-tiny-family"
SMOKE = str(RECIPES / "smoke.yaml")


# -- registry and recipes ------------------------------------------------------------------------


@pytest.mark.slow
def test_builtin_family_is_the_default_and_bundled_recipes_name_it() -> None:
    assert "convrnn" in model_names()
    assert isinstance(recipe_from_dict({}).model, ConvRNNConfig)
    for path in RECIPES.glob("*.yaml"):
        with warnings.catch_warnings():
            warnings.simplefilter("error", RecipeNotice)  # bundled recipes use today's keys
            recipe = load_recipe(path)
        assert recipe.model.arch in model_names()
        assert type(create_model(recipe.model, recipe.data.channels, check=False)) is model_class(recipe.model.arch)
        if "arch" not in path.read_text():
            assert recipe.model.arch == "convrnn"


def test_recipe_round_trips_through_its_dict() -> None:
    recipe = load_recipe(RECIPES / "ssv2.yaml")
    again = recipe_from_dict(recipe.to_dict())
    assert again == recipe and again.to_dict()["model"]["arch"] == "convrnn"
    assert again.to_dict()["model"]["classes"] == recipe.model.classes


def test_unknown_arch_names_the_registered_families(cli, tmp_path: Path) -> None:
    with pytest.raises(CttlstmError, match=r"model\.arch: unknown model family 'nope'; registered: .*convrnn"):
        recipe_from_dict({"model": {"arch": "nope"}})
    result = cli("train", SMOKE, "--out", tmp_path / "run", "--set", "model.arch=nope")
    assert result.code == 2 and result.err.count("\n") == 1
    assert "model.arch: unknown model family 'nope'" in result.err and "convrnn" in result.err
    assert not (tmp_path / "run").exists()
    # A family's own keys are checked by its own config class.
    with pytest.raises(CttlstmError, match=r"model\.hidden: unknown key"):
        recipe_from_dict({"model": {"arch": "convrnn", "hidden": 3}})


@pytest.mark.parametrize(
    "model,expected,notices",
    [
        ({"order": 2, "steps": 4}, {"ctt_order": 2, "history": 4}, ["model.steps is now model.history", "model.order is now model.ctt_order"]),
        ({"cell": "convlstm_ttd", "order": 4}, {"ttd_order": 4, "ctt_order": 3}, ["model.order is now model.ttd_order"]),
    ],
)
def test_renamed_keys_still_load_with_one_notice_each(model: dict, expected: dict, notices: list[str]) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfg = recipe_from_dict({"model": model}).model
    assert {k: getattr(cfg, k) for k in expected} == expected
    texts = [str(w.message) for w in caught if issubclass(w.category, RecipeNotice)]
    assert len(texts) == len(notices) and all(any(n in t for t in texts) for n in notices)


def test_renamed_key_notice_on_the_command_line_and_conflicts(cli, tmp_path: Path) -> None:
    result = cli("profile", "smoke", "--no-time", "--json", "--set", "model.history=null", "--set", "model.steps=4")
    assert result.code == 2  # history: null is not a number; the rename itself was accepted
    old = tmp_path / "old.yaml"
    old.write_text((RECIPES / "smoke.yaml").read_text().replace("ctt_order:", "order:").replace("history:", "steps:"))
    result = cli("profile", old, "--no-time", "--json")
    assert result.code == 0, result.err
    assert [ln for ln in result.err.splitlines() if ln.startswith("notice: ")] == [
        "notice: model.steps is now model.history (M, the past hidden states of the CTT module); the old key still works",
        "notice: model.order is now model.ctt_order (N, the CTT order); the old key still works",
    ]
    new = json.loads(cli("profile", "smoke", "--no-time", "--json").out)
    assert json.loads(result.out)[0]["params"] == new[0]["params"]
    with pytest.raises(CttlstmError, match="model.steps is the old name of model.history; give only one"):
        recipe_from_dict({"model": {"steps": 3, "history": 3}})


# -- the contract ---------------------------------------------------------------------------------


@pytest.fixture
def temporary_family() -> Iterator[str]:
    """A name that tests may register a family under; unregistered afterwards."""
    name = "test-family"
    yield name
    registry._FAMILIES.pop(name, None)


def _family(name: str, crop: bool = False, fail: bool = False) -> type[VideoModel]:
    class Config(ModelConfig):
        arch: Literal["test-family"] = "test-family"

    class Copy(RecurrentVideoModel):
        """Predicts the last frame again, optionally cropped (a broken contract)."""

        config_class = Config

        def __init__(self, config: Config, image_channels: int = 1) -> None:
            super().__init__(config, image_channels)
            self.scale = nn.Parameter(torch.ones(()))

        def init_state(self, batch, height, width, device=None, dtype=None) -> Tensor:
            return torch.zeros(())

        def step(self, frame: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
            if fail:
                raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")
            return self.scale * (frame[..., :3, :3] if crop else frame), state

    return register_model(name)(Copy)


def test_a_family_that_keeps_the_contract_runs(temporary_family: str) -> None:
    _family(temporary_family)
    model = create_model(recipe_from_dict({"model": {"arch": temporary_family}}).model, 2)
    frames = torch.rand(3, 4, 2, 8, 8)
    assert torch.equal(model(frames, future_frames=2), frames[:, [3, 3]])
    assert model(frames, 2, context_frames=2, teacher_forcing=1.0).shape == (3, 3, 2, 8, 8)
    assert model.counted_macs(8, 8) == 0 and model.macs_per_step(8, 8) == 0  # a multiplication by a scalar only
    assert model.downsampling == 1 and model.num_classes is None and model.name == temporary_family


@pytest.mark.parametrize(
    "broken,message",
    [
        (dict(crop=True), r"model family 'test-family' broke the model contract: prediction output should be \[1, 2, 1, 4, 4\], got \[1, 2, 1, 3, 3\]"),
        (dict(fail=True), r"model family 'test-family' broke the model contract: its forward failed \(RuntimeError: mat1 and mat2"),
    ],
)
def test_a_family_that_breaks_the_contract_is_named(temporary_family: str, broken: dict, message: str) -> None:
    _family(temporary_family, **broken)
    with pytest.raises(CttlstmError, match=message):
        create_model(recipe_from_dict({"model": {"arch": temporary_family}}).model)


def test_register_model_checks_what_it_registers(temporary_family: str) -> None:
    with pytest.raises(TypeError, match="not a VideoModel subclass"):
        register_model(temporary_family)(nn.Linear)
    with pytest.raises(TypeError, match="arch must default to 'other'"):
        register_model("other")(_family(temporary_family))
    class Impostor(ConvRNN):
        pass

    with pytest.raises(TypeError, match="model family 'convrnn' is already registered by cttlstm_cli.models.convrnn.model.ConvRNN"):
        register_model("convrnn")(Impostor)


def test_classifier_contract_and_reference_share_one_interface() -> None:
    from cttlstm_cli.models.convrnn.reference import ReferenceConvRNN

    cfg = ConvRNNConfig(blocks=[1, 1], channels=[4, 4], rank=2, kernel=3, skip_stride=None, classes=3, encoder_channels=[4])
    model = create_model(cfg).double()
    assert model.num_classes == 3 and model.downsampling == 2
    reference = ReferenceConvRNN(model)
    registry.check_contract(reference)  # the oracle keeps the same contract
    frames = torch.rand(2, 4, 1, 8, 8, dtype=torch.float64)
    (a, la), (b, lb) = model(frames, 2, classify=True), reference(frames, 2, classify=True)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(la, lb, rtol=1e-10, atol=1e-10)


# -- checkpoints and run directories of the version before model families -----------------------


@pytest.fixture(scope="module")
def legacy_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Moving-MNIST at the legacy run's frame size (its own data folder is long gone)."""
    from cttlstm_cli.cli import main

    root = tmp_path_factory.mktemp("legacy") / "data"
    args = ["prepare", "mmnist", "--out", str(root), "--size", "16", "--train", "16", "--val", "8", "--test", "8", "--offline", "--quiet"]
    assert main(args) == 0
    return root


@pytest.mark.parametrize("name", ["run", "convlstm_ttd.pt", "convlstm_classifier.pt", "convttlstm_parallel.pt"])
def test_legacy_checkpoints_predict_exactly_as_before(name: str) -> None:
    expected = torch.load(LEGACY / "expected.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RecipeNotice)  # stored recipes load quietly
        model, recipe = load_model_and_recipe(LEGACY / name / "best.pt" if name == "run" else LEGACY / name)
    assert recipe is not None and recipe.model.arch == "convrnn"
    # Equal to float32 rounding: the fixtures were computed on another CPU, and oneDNN's kernels for
    # another SIMD width round the last bit differently (up to 6e-8 here); a checkpoint loaded into the
    # wrong place would be off by orders of magnitude more.
    with torch.no_grad():
        torch.testing.assert_close(model(expected["frames"], future_frames=4), expected[name], rtol=1e-6, atol=1e-6)
        if model.num_classes is not None:
            logits = model(expected["frames"], 2, context_frames=4, classify=True)[1]
            torch.testing.assert_close(logits, expected[name + ":logits"], rtol=1e-6, atol=1e-6)


def test_legacy_run_directory_evaluates_and_predicts(cli, legacy_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(LEGACY / "run", run)
    result = cli("evaluate", run, "--data", legacy_data, "--json", "--quiet")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert report["model"] == "Conv-TT-LSTM" and report["parameters"] == sum(p.numel() for p in load_model(run).parameters())
    assert report["num_samples"] == 16 and set(report["metrics"]) == {"mse", "psnr", "ssim"}  # 8 videos of 20 frames, 5 -> 5
    assert (run / "eval-test-5-paper" / "report.json").is_file()
    clip = tmp_path / "clip.gif"
    iio.imwrite(clip, (torch.rand(12, 16, 16) * 255).to(torch.uint8).numpy(), extension=".gif")
    result = cli("predict", clip, "--checkpoint", run, "--steps", "3", "--out", tmp_path / "pred.gif")
    assert result.code == 0, result.err
    assert iio.imread(tmp_path / "pred.gif", index=None).shape[0] == 5 + 3


# -- a third-party family, installed by pip, through every command --------------------------------


def _pip_install(source: Path, target: Path) -> None:
    """``pip install`` a package folder into ``target`` (offline: setuptools is already here)."""
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
         "--no-build-isolation", "--no-index", "--target", str(target), str(source)],
        check=True, capture_output=True,
    )  # fmt: skip


def _cttlstm(site: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(REPO)]))
    return subprocess.run([sys.executable, "-m", "cttlstm_cli", *map(str, args)], capture_output=True, text=True, env=env)


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("plugin")
    shutil.copytree(EXAMPLE, root / "src")
    _pip_install(root / "src", root / "site")
    return root / "site"


@pytest.mark.slow
def test_example_family_from_docs_runs_through_every_command(plugin_site: Path, legacy_data: Path, tmp_path: Path) -> None:
    docs = (REPO / "docs" / "model.md").read_text()
    source = (EXAMPLE / "cttlstm_tiny_family" / "__init__.py").read_text()
    assert "## Adding a model family" in docs and "@register_model(\"tinygru\")" in source
    assert 'tinygru = "cttlstm_tiny_family"' in (EXAMPLE / "pyproject.toml").read_text()

    model = ["--set", "model={arch: tinygru, hidden: 8}", "--set", f"data.path={legacy_data}", "--set", "data.frame_size=[16,16]"]
    run = tmp_path / "run"
    train = _cttlstm(plugin_site, "train", SMOKE, "--out", run, "--max-steps", "2", "--quiet", "--device", "cpu",
                     "--set", "train.epoch_clips=16", "--set", "train.val_clips=8", *model)  # fmt: skip
    assert train.returncode == 0, train.stderr
    assert "arch: tinygru" in (run / "recipe.yaml").read_text()

    evaluate = _cttlstm(plugin_site, "evaluate", run, "--json", "--quiet", "--device", "cpu")
    assert evaluate.returncode == 0, evaluate.stderr
    report = json.loads(evaluate.stdout)
    assert report["model"] == "TinyGRU-8" and report["num_samples"] == 16
    assert report["parameters"] == (1 + 8) * 16 * 9 + 16 + (1 + 8) * 8 * 9 + 8 + 8 + 1

    clip = tmp_path / "clip.gif"
    iio.imwrite(clip, (torch.rand(9, 16, 16) * 255).to(torch.uint8).numpy(), extension=".gif")
    predict = _cttlstm(plugin_site, "predict", clip, "--checkpoint", run, "--steps", "4", "--out", tmp_path / "p.gif", "--device", "cpu")
    assert predict.returncode == 0, predict.stderr
    assert iio.imread(tmp_path / "p.gif", index=None).shape[0] == 5 + 4

    profile = _cttlstm(plugin_site, "profile", SMOKE, "--json", "--timed-steps", "1", "--batch-size", "2", "--device", "cpu", *model)
    assert profile.returncode == 0, profile.stderr
    row = json.loads(profile.stdout)[0]
    assert row["arch"] == "tinygru" and row["model"] == "TinyGRU-8" and row["params"] == report["parameters"]
    # counted by torch: the gate, candidate and head convs of one step, per pixel
    assert not row["flops_analytic"] and row["flops_per_step"] == 16 * 16 * ((1 + 8) * 16 * 9 + (1 + 8) * 8 * 9 + 8)
    assert row["step_seconds"] > 0


@pytest.mark.slow
@pytest.mark.parametrize(
    "body,message",
    [
        ("import no_such_module\n", "model family 'tinygru': its plugin 'cttlstm_tiny_family' failed to import (ModuleNotFoundError: No module named 'no_such_module')"),
        ("", "model family 'tinygru': its plugin 'cttlstm_tiny_family' registered no family of that name"),
    ],
)
def test_a_plugin_that_fails_is_named_in_one_line(tmp_path: Path, body: str, message: str) -> None:
    src = tmp_path / "src"
    shutil.copytree(EXAMPLE, src)
    (src / "cttlstm_tiny_family" / "__init__.py").write_text(body)
    _pip_install(src, tmp_path / "site")
    result = _cttlstm(tmp_path / "site", "train", SMOKE, "--out", tmp_path / "run", "--set", "model={arch: tinygru}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: --set model={{arch: tinygru}}: model.arch: {message}"]  # the --set wrote it
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_plugin_that_breaks_the_contract_writes_nothing(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(EXAMPLE, src)
    module = src / "cttlstm_tiny_family" / "__init__.py"
    # one frame too many: a plausible off-by-one in a family's own forward
    module.write_text(module.read_text() + (
        "\n    def forward(self, frames, future_frames=10, **kwargs):\n"
        "        return super().forward(frames, future_frames + 1, **kwargs)\n"
    ))  # fmt: skip
    _pip_install(src, tmp_path / "site")
    result = _cttlstm(tmp_path / "site", "train", SMOKE, "--out", tmp_path / "run", "--set", "model={arch: tinygru}",
                      "--set", f"data.path={tmp_path / 'data'}")  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: model family 'tinygru' broke the model contract: prediction output should be [1, 2, 1, 4, 4], got [1, 3, 1, 4, 4]"
    ]
    assert not (tmp_path / "run").exists() and not (tmp_path / "data").exists()


def test_a_run_begun_with_the_old_keys_resumes(cli, legacy_data: Path, tmp_path: Path) -> None:
    """A run directory whose recipe.yaml predates the renames (and ``arch``) still takes --resume."""
    import yaml

    run = tmp_path / "run"
    args = ["--out", run, "--quiet", "--device", "cpu", "--set", f"data.path={legacy_data}", "--set", "data.frame_size=[16,16]",
            "--set", "train.epoch_clips=16", "--set", "train.val_clips=8"]  # fmt: skip
    assert cli("train", SMOKE, *args, "--max-steps", "2").code == 0
    stored = yaml.safe_load((run / "recipe.yaml").read_text())
    model = stored["model"]
    del model["arch"], model["ttd_order"]
    model["order"], model["steps"] = model.pop("ctt_order"), model.pop("history")
    (run / "recipe.yaml").write_text(yaml.safe_dump(stored, sort_keys=False))
    result = cli("train", SMOKE, *args, "--max-steps", "3", "--resume")
    assert result.code == 0, result.err
    assert torch.load(run / "last.pt", weights_only=True)["step"] == 3
    # A real difference is still refused.
    result = cli("train", SMOKE, *args, "--max-steps", "4", "--resume", "--set", "model.rank=2")
    assert result.code == 2 and "recipe differs from the run" in result.err and "model.rank" in result.err


def test_frames_a_model_cannot_take_are_refused_before_anything_is_written(cli, tmp_path: Path) -> None:
    args = ["--set", "model.encoder_channels=[4,4]", "--set", "data.frame_size=[30,30]", "--set", f"data.path={tmp_path / 'data'}"]
    result = cli("train", SMOKE, "--out", tmp_path / "run", *args)
    assert result.code == 2 and result.err.strip() == (
        "error: data.frame_size 30x30 does not suit Conv-TT-LSTM: its frames must be multiples of 4, "
        "set by model.encoder_channels; choose another data.frame_size or model.encoder_channels"
    )
    assert not (tmp_path / "run").exists() and not (tmp_path / "data").exists()
    assert cli("profile", SMOKE, "--no-time", *args).code == 2
