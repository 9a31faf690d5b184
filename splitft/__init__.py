"""splitft: device-edge split fine-tuning of foundation models.

This package is the small core that the device SDK (`device_client`) and the edge server
(`edge_server`) share: the generated data-plane contract (`splitft.v1`), the error catalog, the
tensor codec, model families and span loading, and the `splitft` command line.
"""

__version__ = "0.1.0"
