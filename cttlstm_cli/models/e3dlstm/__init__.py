"""The E3D-LSTM family (``arch: e3dlstm``): Eidetic 3D LSTM (Wang et al., ICLR 2019).

- :mod:`.config`: the recipe section :class:`E3DLSTMConfig`;
- :mod:`.cells`: the E3D-LSTM cell, its recall gate and the causal 3D convolution;
- :mod:`.model`: :class:`E3DLSTM`, the network (registered as ``e3dlstm``), with the fast ``prefix``;
- :mod:`.flops`: the analytic FLOP count;
- :mod:`.reference`: the literal per-step algorithm, the oracle of the tests.
"""

from cttlstm_cli.models.e3dlstm.config import E3DLSTMConfig
from cttlstm_cli.models.e3dlstm.model import E3DLSTM

__all__ = ["E3DLSTM", "E3DLSTMConfig"]
