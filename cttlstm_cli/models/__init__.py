"""The model core: cells, the CTT module, the network and checkpoint I/O."""

from cttlstm_cli.models.network import VideoPredictionNetwork
from cttlstm_cli.recipe import ModelConfig


def build_model(cfg: ModelConfig, image_channels: int = 1) -> VideoPredictionNetwork:
    """Build the video-prediction network described by a recipe's ``model`` section."""
    return VideoPredictionNetwork(cfg, image_channels)


__all__ = ["VideoPredictionNetwork", "build_model"]
