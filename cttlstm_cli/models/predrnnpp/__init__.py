"""The PredRNN++ family (``arch: predrnnpp``; Wang et al., ICML 2018).

- :mod:`.config`: the recipe section :class:`PredRNNPPConfig`;
- :mod:`.cells`: the causal LSTM (Eq. 1) and the gradient highway unit (Eq. 2), fast forms;
- :mod:`.model`: :class:`PredRNNPP`, patches, the zigzag stack and the head (registered as ``predrnnpp``);
- :mod:`.flops`: the analytic multiply-accumulate and parameter counts;
- :mod:`.reference`: the literal per-step equations, the oracle of the tests.
"""

from cttlstm_cli.models.predrnnpp.config import PredRNNPPConfig
from cttlstm_cli.models.predrnnpp.model import PredRNNPP

__all__ = ["PredRNNPP", "PredRNNPPConfig"]
