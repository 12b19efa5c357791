"""cttlstm: the Convolutional Tensor-Train LSTM toolkit.

Notebook use::

    from cttlstm_cli import load_model
    model = load_model("runs/mmnist/best.pt")      # or the authors' convttlstm-mnist.pt
    future = model.predict(frames, 10)              # frames [T, C, H, W] or [B, T, C, H, W] in [0, 1]
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from cttlstm_cli.checkpoint import load_model


def __getattr__(name: str) -> Any:
    # Keep `import cttlstm_cli` (and `cttlstm --help`) free of the torch import cost.
    if name == "load_model":
        from cttlstm_cli.checkpoint import load_model

        return load_model
    raise AttributeError(name)


__all__ = ["__version__", "load_model"]
