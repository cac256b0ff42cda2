"""Training: the optimizer step (loop), checkpoints, the worker loop and the Ray Train driver."""
