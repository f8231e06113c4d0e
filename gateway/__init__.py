"""voxgate: the I/O shell around the `policies` decision core."""

__version__ = "0.1.0"
