"""
memmq: an in-memory publish/subscribe message broker on Twisted,
wire-compatible with asim/mq.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
