"""Reusable building blocks of the model families.

- :mod:`~cttlstm_cli.models.layers.conv`: the fast-path convolution (NNPACK or oneDNN on the CPU);
- :mod:`~cttlstm_cli.models.layers.ctt`: the convolutional tensor-train module of Conv-TT-LSTM;
- :mod:`~cttlstm_cli.models.layers.tt_conv`: a convolution with a classic tensor-train kernel;
- :mod:`~cttlstm_cli.models.layers.lstm`: the LSTM gate update;
- :mod:`~cttlstm_cli.models.layers.heads`: the activity classifier head.
"""

from cttlstm_cli.models.layers.conv import apply_conv, conv2d
from cttlstm_cli.models.layers.ctt import ConvTensorTrain, compose_convs
from cttlstm_cli.models.layers.heads import activity_classifier
from cttlstm_cli.models.layers.lstm import lstm_update
from cttlstm_cli.models.layers.tt_conv import TTConv2d, balanced_factors

__all__ = ["ConvTensorTrain", "activity_classifier", "TTConv2d", "apply_conv", "balanced_factors", "compose_convs", "conv2d", "lstm_update"]
