"""The emulator (Offsite-Tuning): a model whose trunk is a uniformly layer-dropped, optionally
distilled stand-in, so a device can tune its adapters with no edge and plug them into the full model."""
