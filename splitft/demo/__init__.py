"""Tools: `splitft demo`, the main job end to end (`loop`: control plane, edge, agents; `sdk`: one
device through the SDK)."""
