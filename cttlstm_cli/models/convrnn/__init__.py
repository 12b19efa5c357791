"""The conv-RNN family (``arch: convrnn``): Conv-TT-LSTM, ConvLSTM and the classic-TTD ConvLSTM.

- :mod:`.config`: the recipe section :class:`ConvRNNConfig`;
- :mod:`.cells`: the recurrent cells (fast forms);
- :mod:`.model`: :class:`ConvRNN`, the paper's 12-layer network (registered as ``convrnn``);
- :mod:`.flops`: the paper's analytic FLOP count;
- :mod:`.authors`: import of the authors' released checkpoints;
- :mod:`.reference`: the literal per-step algorithms, the oracle of tests and benchmarks.
"""

from cttlstm_cli.models.convrnn import authors as _authors  # noqa: F401 - registers the checkpoint importer
from cttlstm_cli.models.convrnn.config import CELL_NAMES, ConvRNNConfig
from cttlstm_cli.models.convrnn.model import ConvRNN

__all__ = ["CELL_NAMES", "ConvRNN", "ConvRNNConfig"]
