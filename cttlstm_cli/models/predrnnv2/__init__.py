"""The PredRNN-V2 family (``arch: predrnnv2``; Wang et al., TPAMI 2022), PredRNN's network with its
paper's training: the memory-decoupling loss and reverse scheduled sampling.

- :mod:`.config`: the recipe section :class:`PredRNNV2Config`;
- :mod:`.model`: :class:`PredRNNV2` (the adapter, the decoupling term, the sampling schedules);
- :mod:`.flops`: the parameter count (the MACs are PredRNN's);
- :mod:`.reference`: PredRNN's literal equations plus the decoupling term written out, the tests' oracle.
"""

from cttlstm_cli.models.predrnnv2.config import PredRNNV2Config
from cttlstm_cli.models.predrnnv2.model import PredRNNV2

__all__ = ["PredRNNV2", "PredRNNV2Config"]
