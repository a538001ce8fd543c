"""
Publish and subscribe on the default client, which talks to
localhost:8081, as asim/mq's Go client example does. Start a server
(memmq), then: python3 examples/publish_subscribe.py
"""

from twisted.internet import task

from memmq import client


async def main(reactor):
    sub = await client.subscribe("example")        # ch, err := client.Subscribe("example")
    await client.publish("example", b"bar")        # err := client.Publish("example", []byte("bar"))
    data = await sub.get()                         # data := <-ch
    print(data.decode())
    await client.default().close()


task.react(main)
