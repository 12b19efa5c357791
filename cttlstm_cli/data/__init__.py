"""Data layer: ``cttlstm prepare`` builders, the shard format and the training/evaluation Dataset."""
