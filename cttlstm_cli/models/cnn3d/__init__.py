"""The 3D-CNN activity classifier (``arch: cnn3d``), the baseline of the paper's Tables 1 and 3.

- :mod:`.config`: the recipe section :class:`CNN3DConfig`;
- :mod:`.model`: :class:`CNN3D` (registered as ``cnn3d``).
"""

from cttlstm_cli.models.cnn3d.config import CNN3DConfig
from cttlstm_cli.models.cnn3d.model import CNN3D

__all__ = ["CNN3D", "CNN3DConfig"]
