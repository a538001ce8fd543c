"""
The same over gRPC. Start a server that serves it (memmq
--transport=grpc), then: python3 examples/grpc_client.py [SERVER ...]
"""

import sys

from twisted.internet import task

from memmq.client import rpc


async def main(reactor, *servers):
    c = rpc.new(servers=list(servers) or ["localhost:8081"])
    sub = await c.subscribe("example")
    await c.publish("example", b"bar")
    data = await sub.get()
    print(data.decode())
    await c.close()


task.react(main, sys.argv[1:])
