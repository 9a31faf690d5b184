"""The placement options' names, torch-free: the CLI parses them without loading the model stack
(`splitft.model.placement` turns them into torch devices and dtypes)."""

from __future__ import annotations

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
DTYPE_NAMES = ("float32", "bfloat16", "float16")
DEVICE_MAPS = ("auto", "balanced")
