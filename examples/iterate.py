"""
A subscription as an async iterator, then with a callback. Start a server
(memmq), then: python3 examples/iterate.py [SERVER ...]
"""

import sys

from twisted.internet import defer, task

from memmq import client


async def main(reactor, *servers):
    c = client.new(servers=list(servers) or ["localhost:8081"])
    sub = await c.subscribe("example")             # subscribe first: only later messages arrive
    for word in (b"one", b"two", b"three"):
        await c.publish("example", word)
    async for data in sub:
        print(data.decode())
        if data == b"three":
            break
    await sub.close()                              # really closes its connections

    received = defer.Deferred()
    sub = await c.subscribe("example", lambda data: received.callback(data))
    await c.publish("example", b"four")
    print((await received).decode())
    await sub.close()
    await c.close()


task.react(main, sys.argv[1:])
