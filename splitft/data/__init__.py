"""Data sets that build themselves on this machine (no hub): the demo's standard-library task."""
