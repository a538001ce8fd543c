"""
Tests for memmq.testing: the in-memory client double is a real Client over
in-memory brokers, usable without a reactor or sockets.
"""

from __future__ import annotations

from pathlib import Path

from twisted.internet.task import Clock
from twisted.trial.reporter import TestResult
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

import memmq.testing
from memmq.broker import Broker
from memmq.client import Client, ITransport, Subscription, selector
from memmq.errors import InvalidTopic, MemmqError, PublishError, SubscribeError
from memmq.interfaces import ISubscriber
from memmq.testing import MemoryClient, MemoryTransport
from tests.support import Recorder


@implementer(ISubscriber)
class MemoryClientTests(SynchronousTestCase):
    """
    L{MemoryClient}: publish, subscribe, attach, unsubscribe, close.
    """

    def test_exports(self) -> None:
        """
        The module says what it offers, and offers what it says.
        """
        for name in memmq.testing.__all__:
            self.assertTrue(hasattr(memmq.testing, name), name)
        self.assertEqual(set(memmq.testing.__all__), {"MEMORY_SERVER", "MemoryClient", "MemoryTransport"})

    def test_is_a_client(self) -> None:
        """
        The double is a Client, over a transport that is an ITransport.
        """
        client = MemoryClient()
        self.assertIsInstance(client, Client)
        self.assertTrue(verifyObject(ITransport, client.transport))
        self.assertIsInstance(client.transport, MemoryTransport)

    def test_publish_and_get(self) -> None:
        """
        A message published after subscribing is taken with get(), at once;
        the broker counts it.
        """
        client = MemoryClient()
        subscription = self.successResultOf(client.subscribe("t"))
        self.assertIsInstance(subscription, Subscription)
        self.assertEqual(subscription.connected, 1)
        self.assertIsNone(self.successResultOf(client.publish("t", b"one")))
        waiting = subscription.get()
        client.publish("t", b"two")
        self.assertEqual(self.successResultOf(waiting), b"one")
        self.assertEqual(self.successResultOf(subscription.get()), b"two")
        self.assertEqual(client.broker.topic("t").published, 2)

    def test_callback(self) -> None:
        """
        subscribe(topic, callback) passes each payload to the callback.
        """
        client = MemoryClient()
        got: list[bytes] = []
        self.successResultOf(client.subscribe("t", got.append))
        client.publish("t", b"x")
        self.assertEqual(got, [b"x"])

    def test_attach(self) -> None:
        """
        attach() delivers Messages to an ISubscriber.
        """
        client = MemoryClient()
        recorder = Recorder()
        client.attach("t", recorder)
        client.publish("t", b"m")
        self.assertEqual([(m.topic, m.payload) for m in recorder.messages], [("t", b"m")])

    def test_shared_broker(self) -> None:
        """
        Two clients over one broker see each other's messages, and a message
        published on the broker directly.
        """
        broker = Broker()
        publisher, subscriber = MemoryClient(broker), MemoryClient(broker)
        subscription = self.successResultOf(subscriber.subscribe("t"))
        publisher.publish("t", b"across")
        broker.publish("t", b"direct")
        self.assertEqual(self.successResultOf(subscription.get()), b"across")
        self.assertEqual(self.successResultOf(subscription.get()), b"direct")

    def test_unsubscribe(self) -> None:
        """
        unsubscribe() frees the topic on the broker; a waiting get() fails.
        """
        client = MemoryClient()
        subscription = self.successResultOf(client.subscribe("t"))
        waiting = subscription.get()
        self.successResultOf(client.unsubscribe(subscription))
        self.assertIsNone(client.broker.topic("t"))
        self.failureResultOf(waiting, MemmqError)

    def test_close(self) -> None:
        """
        close() ends every subscription; the client refuses more.
        """
        client = MemoryClient()
        self.successResultOf(client.subscribe("t"))
        self.successResultOf(client.close())
        self.assertIsNone(client.broker.topic("t"))
        self.failureResultOf(client.publish("t", b"late"), MemmqError)

    def test_invalid_topic(self) -> None:
        """
        An invalid topic fails as with a real client.
        """
        client = MemoryClient()
        self.failureResultOf(client.publish("", b"x"), InvalidTopic)
        self.failureResultOf(client.subscribe(""), InvalidTopic)

    def test_since(self) -> None:
        """
        Replay is refused, as by a server without --persist.
        """
        failure = self.failureResultOf(MemoryClient(retries=0).subscribe("t", since=0), SubscribeError)
        self.assertIn("--persist", str(failure.value))

    def test_several_brokers(self) -> None:
        """
        With several brokers the selector applies: All publishes to each.
        """
        brokers = {"a:1": Broker(), "b:1": Broker()}
        client = MemoryClient(brokers=brokers, selector=selector.All())
        subscription = self.successResultOf(client.subscribe("t"))
        client.publish("t", b"x")
        self.assertEqual([b.topic("t").published for b in brokers.values()], [1, 1])
        self.assertEqual([self.successResultOf(subscription.get()) for _ in range(2)], [b"x", b"x"])

    def test_server_missing(self) -> None:
        """
        A server with no broker is a refused connection: a PublishError
        naming it, after the retries (run on the client's clock).
        """
        client = MemoryClient(reactor=Clock(), retries=0)
        client.transport.brokers.clear()
        failure = self.failureResultOf(client.publish("t", b"x"), PublishError)
        self.assertIn("connection refused", str(failure.value))

    def test_pause(self) -> None:
        """
        A paused subscription holds messages on the broker's side until it
        resumes.
        """
        client = MemoryClient()
        recorder = Recorder()
        subscription = client.attach("t", recorder)
        subscription.pause()
        client.publish("t", b"held")
        self.assertEqual(recorder.messages, [])
        subscription.resume()
        self.assertEqual([m.payload for m in recorder.messages], [b"held"])


class ReadmeExampleTests(SynchronousTestCase):
    """
    The README's "Testing your application" example runs and passes.
    """

    def test_example(self) -> None:
        """
        The example's code block, run as a test module, passes.
        """
        readme = (Path(__file__).parent.parent / "README.rst").read_text()
        section = readme.split("Testing your application\n", 1)[1]
        block = section.split(".. code-block:: python\n", 1)[1]
        lines = []
        for line in block.splitlines()[1:]:
            if line and not line.startswith("    "):
                break
            lines.append(line[4:])
        namespace: dict = {"__name__": "test_greet"}
        exec(compile("\n".join(lines), "README.rst", "exec"), namespace)
        result = TestResult()
        namespace["GreetTests"]("test_greet").run(result)
        self.assertEqual((result.errors, result.failures, result.successes), ([], [], 1))
