"""Training: the loss, optimizer step and (later) the full training loop."""
