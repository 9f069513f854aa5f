"""p2pshare: a peer-to-peer file and compute sharing daemon."""

__version__ = "0.1.0"
