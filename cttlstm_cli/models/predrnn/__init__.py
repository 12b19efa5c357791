"""The PredRNN family (``arch: predrnn``; Wang et al., NeurIPS 2017).

- :mod:`.config`: the recipe section :class:`PredRNNConfig`;
- :mod:`.cells`: the spatio-temporal LSTM (Eq. 3), fast form;
- :mod:`.model`: :class:`PredRNN`, patches, the zigzag stack, the head and its sampling schedule;
- :mod:`.flops`: the analytic multiply-accumulate and parameter counts;
- :mod:`.reference`: the literal per-step equations, the oracle of the tests.
"""

from cttlstm_cli.models.predrnn.config import PredRNNConfig
from cttlstm_cli.models.predrnn.model import PredRNN

__all__ = ["PredRNN", "PredRNNConfig"]
