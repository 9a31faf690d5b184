"""What the `splitft` commands run, one module per command group.

These modules import what they need at module level (the model stack, the edge, the control
plane), so `splitft.cli.main` imports only the one the chosen command names; the parsers in
`splitft.cli` stay light enough for the control-plane image, which has no torch.
"""
