"""Wire codecs for tensors, chosen per session and per direction.

Lossless `raw`; elementwise `fp16`, `bf16`, `int8` (per-row, optionally stochastic rounding) and
`int4` (blockwise, 32 values per scale); and for gradients only `topk:<fraction>` and
`lowrank:<rank>` with error feedback. `spec` parses codec strings, `encoder` holds the per-session
state and the stateless decoder; each codec is its own module with encode/decode. `splitft.wire.codec`
puts the result into protobuf parts.

Only the torch-free spec parsing is re-exported here, so the control plane (no torch installed)
can validate a job's codec; import `TensorEncoder`, `decode_payload`, ... from their modules.
"""

from __future__ import annotations

from splitft.compress.spec import (
    ACTIVATION_GRAMMAR,
    GRAMMAR,
    CodecSpec,
    DirectionCodecs,
    parse_codec,
    parse_codecs,
)

__all__ = ["ACTIVATION_GRAMMAR", "GRAMMAR", "CodecSpec", "DirectionCodecs", "parse_codec", "parse_codecs"]
