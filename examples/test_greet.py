from twisted.trial.unittest import SynchronousTestCase

from memmq.testing import MemoryClient


def greet(client, name):  # the application's code, given a client
    return client.publish("greetings", f"hello {name}".encode())


class GreetTests(SynchronousTestCase):
    def test_greet(self):
        client = MemoryClient()
        subscription = self.successResultOf(client.subscribe("greetings"))
        self.successResultOf(greet(client, "ada"))
        self.assertEqual(self.successResultOf(subscription.get()), b"hello ada")
