"""
Tests for memmq.cli: the command-line client run as a real child process
against a real server.
"""

from __future__ import annotations

import json
import os
import select
import sys

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from tests.support import REPO, Child, RunningServer, bounded, child_env, dead_port, spawn_memmq, until


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
    def test_summary(self) -> None:
        """
        When its input is published, the command says on stderr how many
        messages it published, in how long, and how many failed; with stderr
        not a terminal, that is all it says there.
        """
        server = RunningServer(self)
        child = spawn_memmq(self, "--client", "--topic=sum", "--publish", f"--servers={server.url}")
        child.transport.write(b"".join(b"%d\n" % i for i in range(500)))
        child.transport.closeStdin()
        self.assertEqual((yield bounded(child.ended)), 0, child.stderr)
        lines = child.stderr.decode().splitlines()
        self.assertEqual(len(lines), 1, lines)
        self.assertRegex(lines[0], r"^memmq: published 500 messages to 'sum' in \d+\.\d\d s, \d+/s; 0 failed$")
        self.assertNotIn("\r", child.stderr.decode())

    @inlineCallbacks
    def test_progress_on_a_terminal(self) -> None:
        """
        With stderr a terminal, a progress line is rewritten in place while
        publishing, and cleared before the summary.
        """
        server = RunningServer(self)
        master, slave = os.openpty()
        self.addCleanup(os.close, master)
        seen = bytearray()

        def read_terminal() -> bytes:
            while select.select([master], [], [], 0)[0]:
                try:
                    data = os.read(master, 65536)
                except OSError:
                    break
                if not data:
                    break
                seen.extend(data)
            return bytes(seen)

        child = Child()
        argv = [sys.executable, "-m", "memmq", "--client", "--topic=tty", "--publish", f"--servers={server.url}"]
        process = reactor.spawnProcess(child, argv[0], argv, env=child_env(), path=REPO,
                                       childFDs={0: "w", 1: "r", 2: slave})
        os.close(slave)
        # Cleanups run last first: kill it if it is still running, then wait.
        self.addCleanup(lambda: child.status is None and bounded(child.ended).addErrback(lambda f: None))
        self.addCleanup(lambda: child.status is None and process.signalProcess("KILL"))
        child.transport.write(b"first\nsecond\n")
        yield until(lambda: b"\rmemmq: published 2 (" in read_terminal())
        child.transport.closeStdin()
        self.assertEqual((yield bounded(child.ended)), 0, bytes(seen))
        yield until(lambda: b"published 2 messages to 'tty'" in read_terminal())
        text = bytes(seen).decode()
        self.assertIn("\r\x1b[K", text)
        self.assertRegex(text, r"\r\x1b\[Kmemmq: published 2 messages to 'tty' in \d+\.\d\d s, \d+/s; 0 failed")

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
        self.assertEqual(errors[0], f"memmq: publish to 't' failed on https://{dead}: connection refused")
        self.assertRegex(errors[1], r"^memmq: published 0 messages to 't' in \d+\.\d\d s; 1 failed$")
        self.assertEqual(len(errors), 2, errors)
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
    def test_pattern_and_group(self) -> None:
        """
        --pattern subscribes to every matching topic, printing each message
        with its own topic; two subscribers in one --group share them.
        """
        server = RunningServer(self)
        children = [
            spawn_memmq(self, "--client", "--pattern=orders.*", "--group=g", "--subscribe",
                        "--output_format=line", f"--servers={server.url}")
            for _ in range(2)
        ]
        yield until(lambda: server.broker.subscribers == 2)
        for n in range(10):
            yield server.client.publish(server.url, "orders.eu" if n % 2 else "orders.us", b"%d" % n)
        yield until(lambda: sum(c.stdout.count(b"\n") for c in children) == 10)
        lines = sorted(line for c in children for line in c.stdout.splitlines())
        self.assertEqual(lines, sorted(b"orders.%s: %d" % (b"eu" if n % 2 else b"us", n) for n in range(10)))
        self.assertTrue(all(c.stdout for c in children))
        for child in children:
            child.transport.signalProcess("TERM")
            self.assertEqual((yield bounded(child.ended)), 0, child.stderr)

    @inlineCallbacks
    def _formatted(self, output_format: str, payloads: list[bytes]) -> bytes:
        server = RunningServer(self)
        child = spawn_memmq(self, "--client", "--topic=fmt", "--subscribe", f"--output_format={output_format}",
                       f"--servers={server.url}")
        yield until(lambda: server.broker.topic("fmt") is not None)
        for payload in payloads:
            yield server.client.publish(server.url, "fmt", payload)
        yield until(lambda: child.stdout.count(b"\n") >= len(payloads))
        child.transport.signalProcess("TERM")
        self.assertEqual((yield bounded(child.ended)), 0, child.stderr)
        return child.stdout

    @inlineCallbacks
    def test_json_format(self) -> None:
        """
        --output_format=json: one JSON object per line with the topic, the
        time received, the payload as text (a multi-line one stays one line),
        and base64 with "encoding": "base64" for a payload not in UTF-8.
        """
        out = yield self._formatted("json", [b"two\nlines", "ü".encode(), b"\xff\x00", b""])
        records = [json.loads(line) for line in out.decode().splitlines()]
        self.assertEqual(
            [(r["topic"], r["payload"], r["encoding"]) for r in records],
            [("fmt", "two\nlines", "utf-8"), ("fmt", "ü", "utf-8"), ("fmt", "/wA=", "base64"), ("fmt", "", "utf-8")],
        )
        for record in records:
            self.assertRegex(record["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00$")

    @inlineCallbacks
    def test_line_format(self) -> None:
        """
        --output_format=line: each payload after its topic and ": ".
        """
        out = yield self._formatted("line", [b"one", b""])
        self.assertEqual(out, b"fmt: one\nfmt: \n")

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
