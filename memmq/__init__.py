"""
memmq: an in-memory publish/subscribe message broker on Twisted,
wire-compatible with asim/mq.
"""

import os

# gRPC's C core logs to stderr by itself (a failed bind, a TLS handshake a
# client gave up on), in lines memmq already says better in one of its own;
# set GRPC_VERBOSITY (ERROR, INFO, DEBUG) to see them. Set before anything
# imports grpc, which reads it (README: Logging options).
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

__version__ = "0.1.0"

__all__ = ["__version__"]
