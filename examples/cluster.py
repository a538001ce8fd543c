"""
Clustering and sharding over several servers. Start three (memmq
--address=:8081, :8082 and :8083), then: python3 examples/cluster.py
(or name other servers: python3 examples/cluster.py SERVER ...)
"""

import sys

from twisted.internet import task

from memmq import client


async def main(reactor, *servers):
    servers = list(servers) or ["127.0.0.1:8081", "127.0.0.1:8082", "127.0.0.1:8083"]
    everywhere = client.new(servers=servers)       # publish to and subscribe on every server
    sub = await everywhere.subscribe("example")
    await everywhere.publish("example", b"to every server")
    for _ in servers:                              # it arrives once from each of them
        print((await sub.get()).decode())

    sharded = client.new(servers=servers, selector=client.selector.Shard())
    await sharded.publish("example", b"to one server")
    print((await sub.get()).decode())              # servers[crc32(topic) % len(servers)] alone
    await sharded.close()
    await everywhere.close()


task.react(main, sys.argv[1:])
