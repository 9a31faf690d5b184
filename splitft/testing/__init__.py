"""Tiny Hugging Face models built from a config and saved to a directory, for tests, demos and benchmarks."""
