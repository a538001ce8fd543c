"""
The gRPC definitions memmq shares with asim/mq: C{mq.proto} and the modules
grpcio-tools generates from it (C{mq_pb2}, C{mq_pb2_grpc}), and the thread
that runs gRPC's asyncio loop beside the reactor (L{memmq.rpc.bridge}).

The generated modules are committed; regenerate them with

    python -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. --pyi_out=. memmq/rpc/mq.proto

from the checkout's root (see L{PROTOC_ARGUMENTS}).
"""

__all__ = ["HOPS_METADATA", "PROTO", "PROTOC_ARGUMENTS", "SERVICE"]

PROTO = "memmq/rpc/mq.proto"
SERVICE = "mq.MQ"
# Run from the checkout's root, so that the generated imports are absolute
# (from memmq.rpc import mq_pb2).
PROTOC_ARGUMENTS = ["-I.", "--python_out=.", "--grpc_python_out=.", "--pyi_out=.", PROTO]
# The hop count of a proxied publish (memmq.hops' X-Memmq-Hops), as gRPC
# metadata.
HOPS_METADATA = "x-memmq-hops"
