"""The TAU family (``arch: tau``; Tan et al., CVPR 2023): SimVP's skeleton (:mod:`..simvp`) with
temporal attention units and the differential divergence loss.

- :mod:`.config`: the recipe section :class:`TAUConfig`;
- :mod:`.model`: :class:`TAU` (registered as ``tau``), :func:`differential_divergence`;
- :mod:`.flops`: the analytic multiply-accumulate count of its mixer (SimVP's counts the rest);
- :mod:`.reference`: the literal network and divergence, the oracle of the tests.
"""

from cttlstm_cli.models.tau.config import TAUConfig
from cttlstm_cli.models.tau.model import TAU, differential_divergence

__all__ = ["TAU", "TAUConfig", "differential_divergence"]
