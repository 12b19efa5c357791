"""Model families behind one interface and one registry.

- :mod:`~cttlstm_cli.models.interface`: :class:`VideoModel`, the contract every family implements,
  and :class:`ModelConfig`, the base of every family's recipe section;
- :mod:`~cttlstm_cli.models.registry`: ``register_model`` / ``create_model`` and the
  ``cttlstm.models`` entry points of third-party families;
- :mod:`~cttlstm_cli.models.layers`: reusable blocks (CTT module, TT convolution, LSTM update);
- one folder per family: :mod:`~cttlstm_cli.models.convrnn` (Conv-TT-LSTM, ConvLSTM, classic TTD);
- :mod:`~cttlstm_cli.models.checkpoint`: checkpoint I/O for every family.
"""

from cttlstm_cli.models import convrnn  # noqa: F401 - registers the built-in family
from cttlstm_cli.models.interface import ModelConfig, RecurrentVideoModel, VideoModel, teacher_mask, unwrap
from cttlstm_cli.models.registry import (
    DEFAULT_ARCH,
    create_model,
    model_class,
    model_names,
    register_importer,
    register_model,
)

__all__ = [
    "DEFAULT_ARCH",
    "ModelConfig",
    "RecurrentVideoModel",
    "VideoModel",
    "create_model",
    "model_class",
    "model_names",
    "register_importer",
    "register_model",
    "teacher_mask",
    "unwrap",
]
