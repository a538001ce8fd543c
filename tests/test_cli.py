"""
Tests for memmq.cli: the command-line client run as a real child process
against a real server.
"""

from __future__ import annotations

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from tests.support import RunningServer, bounded, dead_port, spawn_memmq, until


class PublishTests(TestCase):
    """
    memmq --client --publish: each line of standard input is one message.
    """

    timeout = 60

    @inlineCallbacks
    def test_lines_round_trip(self) -> None:
        """
        Lines arrive as messages exactly, in order: empty lines, UTF-8,
        bytes that are not UTF-8, a CR before the newline dropped (as Go's
        Scanner does), a last line without a newline; exit 0 at the end.
        """
        server = RunningServer(self)
        sub = yield server.client.subscribe(server.url, "lines")
        child = spawn_memmq(self, "--client", "--topic=lines", "--publish", f"--servers={server.url}")
        child.transport.write(b"first\n\nnachrichten \xc3\xbc\xe2\x9c\x93\n\xff\xfe raw\ncrlf\r\n  spaced  \nlast")
        child.transport.closeStdin()
        status = yield bounded(child.ended)
        self.assertEqual(status, 0, child.stderr)
        messages = yield sub.wait_for(7)
        self.assertEqual(messages, [
            b"first", b"", "nachrichten ü✓".encode(), b"\xff\xfe raw", b"crlf", b"  spaced  ", b"last",
        ])
        self.assertEqual(child.stdout, b"")

    @inlineCallbacks
    def test_many_lines(self) -> None:
        """
        Thousands of lines: all published, in order.
        """
        server = RunningServer(self)
        sub = yield server.client.subscribe(server.url, "many")
        child = spawn_memmq(self, "--client", "--topic=many", "--publish", f"--servers={server.url}")
        child.transport.write(b"".join(b"line %d\n" % i for i in range(3000)))
        child.transport.closeStdin()
        self.assertEqual((yield bounded(child.ended)), 0, child.stderr)
        messages = yield sub.wait_for(3000)
        self.assertEqual(messages, [b"line %d" % i for i in range(3000)])

    @inlineCallbacks
    def test_server_down(self) -> None:
        """
        With no server, the publish fails: one line on stderr naming the
        server and why, non-zero status, no traceback.
        """
        dead = f"127.0.0.1:{dead_port()}"
        child = spawn_memmq(self, "--client", "--topic=t", "--publish", f"--servers={dead}", "--retries=0")
        child.transport.write(b"lost\n")
        child.transport.closeStdin()
        status = yield bounded(child.ended)
        self.assertEqual(status, 1)
        errors = [line for line in child.stderr.decode().splitlines() if line.startswith("memmq: ")]
        self.assertEqual(errors, [f"memmq: publish to 't' failed on https://{dead}: connection refused"])
        self.assertNotIn(b"Traceback", child.stderr)

    @inlineCallbacks
    def test_bad_combination(self) -> None:
        """
        --client without --publish or --subscribe: one line, status 2.
        """
        child = spawn_memmq(self, "--client", "--topic=t")
        self.assertEqual((yield bounded(child.ended)), 2)
        self.assertEqual(
            child.stderr.decode().splitlines(),
            ["memmq: --client needs --publish or --subscribe (or both) (see memmq --help)"],
        )


class SubscribeTests(TestCase):
    """
    memmq --client --subscribe: each message on its own line.
    """

    timeout = 60

    @inlineCallbacks
    def test_prints_messages_until_terminated(self) -> None:
        """
        Each message is printed on its own line as it arrives; SIGTERM ends
        the command with status 0 and closes its subscription.
        """
        server = RunningServer(self)
        child = spawn_memmq(self, "--client", "--topic=out", "--subscribe", f"--servers={server.url}")
        yield until(lambda: server.broker.topic("out") is not None)
        for payload in (b"one", b"", "zwei ü".encode()):
            yield server.client.publish(server.url, "out", payload)
        yield until(lambda: child.stdout.count(b"\n") == 3)
        self.assertEqual(child.stdout, "one\n\nzwei ü\n".encode())
        child.transport.signalProcess("TERM")
        self.assertEqual((yield bounded(child.ended)), 0, child.stderr)
        yield until(lambda: server.broker.topic("out") is None)

    @inlineCallbacks
    def test_publish_and_subscribe(self) -> None:
        """
        Both together: the command's own lines come back to it, and it keeps
        subscribing after its input ends, until terminated.
        """
        server = RunningServer(self)
        child = spawn_memmq(self, "--client", "--topic=both", "--publish", "--subscribe", f"--servers={server.url}")
        child.transport.write(b"echo 1\necho 2\n")
        child.transport.closeStdin()
        yield until(lambda: child.stdout == b"echo 1\necho 2\n")
        yield server.client.publish(server.url, "both", b"from elsewhere")
        yield until(lambda: child.stdout.endswith(b"from elsewhere\n"))
        self.assertIsNone(child.status)
        child.transport.signalProcess("INT")
        self.assertEqual((yield bounded(child.ended)), 0, child.stderr)

    @inlineCallbacks
    def test_subscribe_server_down(self) -> None:
        """
        Subscribing with no server: one line naming it, status 1.
        """
        dead = f"127.0.0.1:{dead_port()}"
        child = spawn_memmq(self, "--client", "--topic=t", "--subscribe", f"--servers={dead}", "--retries=0")
        self.assertEqual((yield bounded(child.ended)), 1)
        errors = [line for line in child.stderr.decode().splitlines() if line.startswith("memmq: ")]
        self.assertEqual(errors, [f"memmq: cannot subscribe to 't' on https://{dead}: connection refused"])

    @inlineCallbacks
    def test_survives_server_restart(self) -> None:
        """
        The subscriber outlives a restart of its server: messages published
        after the restart are printed too.
        """
        first = RunningServer(self)
        child = spawn_memmq(self, "--client", "--topic=r", "--subscribe", f"--servers={first.url}")
        yield until(lambda: first.broker.topic("r") is not None)
        yield first.stop()
        second = RunningServer(self, certificate=first.certificate, address=f"127.0.0.1:{first.port}")
        yield until(lambda: second.broker.topic("r") is not None)
        yield second.client.publish(second.url, "r", b"after restart")
        yield until(lambda: child.stdout == b"after restart\n")
        self.assertIn(b"resubscribed to 'r'", child.stderr)
