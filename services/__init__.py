"""splitft control plane: jobs, devices and edge servers over REST, scheduling, SQL persistence.

Imported as `splitft_control` (the `services/` folder is its source root). No torch on any request path.
"""
