"""Ray Tune sweeps over group size and model size, and the scaling analysis (revela.tuning)."""
