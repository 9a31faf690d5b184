"""The quantization schemes for frozen spans, by name (torch-free: the CLI parsers offer them).

`splitft.model.quantize` applies them; this module only names them and says what each costs per
weight, so parsers, docs and sizing can use the figures without importing the model stack.
"""

from __future__ import annotations

QUANTIZE_SCHEMES = ("none", "int8", "nf4")

# Bytes per frozen linear weight, scales included (measured by `splitft bench quantize`): int8 keeps
# one scale per output row, nf4 one absmax per 64 weights, itself quantized to 8 bits per 256.
BYTES_PER_WEIGHT = {"none": 4.0, "int8": 1.0, "nf4": 0.52}

# The device's precisions the planner chooses among (`splitft plan run --precisions`); what each
# means for the SDK (dtype, quantize) is `splitft.plan.candidates.PRECISION_SDK`.
PRECISIONS = ("fp32", "bf16", "int8")
