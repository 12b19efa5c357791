"""Model families behind one interface and one registry.

- :mod:`~cttlstm_cli.models.interface`: :class:`VideoModel`, the contract every family implements,
  and :class:`ModelConfig`, the base of every family's recipe section;
- :mod:`~cttlstm_cli.models.registry`: ``register_model`` / ``create_model`` and the
  ``cttlstm.models`` entry points of third-party families;
- :mod:`~cttlstm_cli.models.layers`: reusable blocks (CTT module, TT convolution, LSTM update);
- one folder per family, each registering itself when imported (every sub-package but ``layers``):
  :mod:`~cttlstm_cli.models.convrnn` (Conv-TT-LSTM, ConvLSTM, classic TTD), ....

Nothing here imports the recipe or anything above it: checkpoint files, which carry a recipe, are read
and written by :mod:`cttlstm_cli.checkpoint` beside :mod:`cttlstm_cli.recipe`.
"""

import importlib
import pkgutil

from cttlstm_cli.models.interface import (
    ModelConfig,
    RecurrentVideoModel,
    ReferenceModel,
    Sampling,
    VideoModel,
    teacher_mask,
    unwrap,
)
from cttlstm_cli.models.registry import (
    DEFAULT_ARCH,
    create_model,
    model_class,
    model_names,
    register_importer,
    register_model,
)

#: sub-packages of this one that are not model families
_NOT_FAMILIES = {"layers"}

# Every other sub-package is a built-in family, and importing it registers it.
for _info in pkgutil.iter_modules(__path__):
    if _info.ispkg and _info.name not in _NOT_FAMILIES:
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = [
    "DEFAULT_ARCH",
    "ModelConfig",
    "RecurrentVideoModel",
    "ReferenceModel",
    "Sampling",
    "VideoModel",
    "create_model",
    "model_class",
    "model_names",
    "register_importer",
    "register_model",
    "teacher_mask",
    "unwrap",
]
