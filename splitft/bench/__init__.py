"""Tools: the `splitft bench` benchmarks. Each prints JSON with ratios measured side by side in one
run (docs/benchmarks.md has the commands and figures)."""
