"""The SimVP family (``arch: simvp``; SimVP v2 / gSTA, Tan et al., arXiv 2211.12509).

- :mod:`.config`: the recipe section :class:`SimVPConfig`;
- :mod:`.model`: :class:`SimVPBase` (encoder, translator, decoder, the block-wise forward) and
  :class:`SimVP`, its gSTA translator (registered as ``simvp``);
- :mod:`.flops`: the analytic multiply-accumulate count of the skeleton, and gSTA's mixer;
- :mod:`.reference`: the literal network, the oracle of the tests (TAU's reference builds on it).
"""

from cttlstm_cli.models.simvp.config import SimVPConfig
from cttlstm_cli.models.simvp.model import SimVP, SimVPBase

__all__ = ["SimVP", "SimVPBase", "SimVPConfig"]
