"""
Tests for memmq.prompt: the interactive prompt, driven through
prompt_toolkit's pipe input against a real server, and as a real child
process.
"""

from __future__ import annotations

import sys
import threading

from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SkipTest, TestCase

from memmq.client import Client
from memmq.errors import SubscribeError
from memmq.prompt import Prompt
from tests.support import Child, RunningServer, bounded, child_env, dead_port, spawn, spawn_memmq, until


class _Recording(DummyOutput):
    """
    An output that keeps the text written to it (without the escapes a
    terminal would get).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._written: list[str] = []

    def write(self, data: str) -> None:
        with self._lock:
            self._written.append(data)

    def text(self) -> str:
        with self._lock:
            return "".join(self._written)


class _Session:
    """
    A L{Prompt} on C{topic} of C{server}, its keys from a pipe; what it
    shows is kept in C{printed} (or, with C{output}, drawn there).
    """

    def __init__(self, testcase: TestCase, server: RunningServer | None, topic: str = "t",
                 output=None, servers: list[str] | None = None) -> None:
        pipe = create_pipe_input()
        self.input = pipe.__enter__()
        # Cleanups run last first: the pipe is closed after the prompt
        # stopped reading it and the client closed.
        testcase.addCleanup(pipe.__exit__, None, None, None)
        self.client = Client(servers=servers or [server.url], retries=0, reactor=reactor)
        testcase.addCleanup(lambda: bounded(self.client.close()))
        self.printed: list[str] = []
        self.prompt = Prompt(
            self.client, topic, reactor, input=self.input,
            output=output if output is not None else DummyOutput(),
            printer=None if output is not None else self.printed.append,
        )
        self.done = self.prompt.start()
        testcase.addCleanup(lambda: bounded(self.prompt.stop()))

    def ready(self):
        return bounded(self.prompt.ready)

    def type(self, text: str) -> None:
        self.input.send_text(text)


@inlineCallbacks
def _watched_session(testcase: TestCase):
    """
    A running server, a subscriber to its topic C{t} that sees what the
    prompt publishes, and a ready L{_Session} on C{t}.
    """
    server = RunningServer(testcase)
    sub = yield server.client.subscribe(server.url, "t")
    session = _Session(testcase, server)
    yield session.ready()
    return server, sub, session


class PromptTests(TestCase):
    """
    Typed lines are published, arriving messages are shown, the user's own
    are not echoed back.
    """

    timeout = 60

    @inlineCallbacks
    def test_typed_line_published(self) -> None:
        """
        A typed line is published as UTF-8.
        """
        server, sub, session = yield _watched_session(self)
        session.type("hello ü\r")
        messages = yield sub.wait_for(1)
        self.assertEqual(messages, [b"hello \xc3\xbc"])

    @inlineCallbacks
    def test_message_shown(self) -> None:
        """
        A message another client publishes is shown.
        """
        server = RunningServer(self)
        session = _Session(self, server)
        yield session.ready()
        yield server.client.publish(server.url, "t", "from afar ✓".encode())
        yield until(lambda: session.printed)
        self.assertEqual(session.printed, ["from afar ✓"])

    @inlineCallbacks
    def test_message_drawn_above_prompt(self) -> None:
        """
        Without a printer of its own, the prompt draws messages on its
        output (crossing from the reactor thread to the prompt's loop).
        """
        server = RunningServer(self)
        output = _Recording()
        session = _Session(self, server, output=output)
        yield session.ready()
        yield server.client.publish(server.url, "t", b"drawn \x1b[31m")
        yield until(lambda: "drawn" in output.text())
        self.assertIn("t (connected)>", output.text())
        self.assertIn("drawn ?[31m", output.text())

    @inlineCallbacks
    def test_control_characters_shown_inert(self) -> None:
        """
        Control characters in a message (an escape sequence, a carriage
        return) are shown as "?", so they cannot act on the terminal.
        """
        server = RunningServer(self)
        session = _Session(self, server)
        yield session.ready()
        yield server.client.publish(server.url, "t", b"red \x1b[31m\rover\ttab\nnext")
        yield until(lambda: session.printed)
        self.assertEqual(session.printed, ["red ?[31m?over\ttab\nnext"])

    @inlineCallbacks
    def test_own_line_not_echoed(self) -> None:
        """
        The user's own line comes back from the server but is not shown;
        a later message is.
        """
        server, sub, session = yield _watched_session(self)
        session.type("mine\r")
        yield sub.wait_for(1)
        yield server.client.publish(server.url, "t", b"marker")
        yield until(lambda: session.printed)
        self.assertEqual(session.printed, ["marker"])
        self.assertEqual(sub.messages, [b"mine", b"marker"])

    @inlineCallbacks
    def test_own_line_not_echoed_by_any_server(self) -> None:
        """
        Over two servers (the All selector), the user's line is published
        to both and comes back from both: neither copy is shown.
        """
        servers = [RunningServer(self), RunningServer(self)]
        subs = []
        for server in servers:
            subs.append((yield server.client.subscribe(server.url, "t")))
        session = _Session(self, None, servers=[s.url for s in servers])
        yield session.ready()
        self.assertEqual(len(session.prompt.subscription.servers), 2)
        session.type("mine\r")
        for sub in subs:
            yield sub.wait_for(1)
        # Each server sends its marker after the line, on the same connection.
        for number, server in enumerate(servers):
            yield server.client.publish(server.url, "t", b"marker %d" % number)
        yield until(lambda: len(session.printed) == 2)
        self.assertEqual(sorted(session.printed), ["marker 0", "marker 1"])

    @inlineCallbacks
    def test_same_text_from_another_client_shown(self) -> None:
        """
        Suppression counts the user's own messages, it is not a time
        window: the same text published by another client is shown once.
        """
        server, sub, session = yield _watched_session(self)
        session.type("same\r")
        yield sub.wait_for(1)
        yield server.client.publish(server.url, "t", b"same")
        yield server.client.publish(server.url, "t", b"marker")
        yield until(lambda: "marker" in session.printed)
        self.assertEqual(session.printed, ["same", "marker"])

    @inlineCallbacks
    def test_empty_line_not_published(self) -> None:
        """
        Enter on an empty line publishes nothing.
        """
        server, sub, session = yield _watched_session(self)
        session.type("\r\rafter\r")
        yield sub.wait_for(1)
        # An empty message would have been published, so delivered, first.
        self.assertEqual(sub.messages, [b"after"])

    @inlineCallbacks
    def test_publish_failure_shown(self) -> None:
        """
        A refused publish is reported in one line and the prompt goes on.
        """
        server = RunningServer(self, max_message_size=5)
        sub = yield server.client.subscribe(server.url, "t")
        session = _Session(self, server)
        yield session.ready()
        session.type("far too long\r")
        yield until(lambda: session.printed)
        self.assertEqual(len(session.printed), 1)
        self.assertTrue(session.printed[0].startswith("! publish failed: "), session.printed)
        self.assertIn("413", session.printed[0])
        session.type("ok\r")
        yield sub.wait_for(1)
        self.assertEqual(sub.messages, [b"ok"])

    @inlineCallbacks
    def test_end_of_input(self) -> None:
        """
        The end of input ends the session with status 0 and closes the
        subscription.
        """
        server = RunningServer(self)
        session = _Session(self, server)
        yield session.ready()
        self.assertIsNotNone(server.broker.topic("t"))
        session.input.close()
        status = yield bounded(session.done)
        self.assertEqual(status, 0)
        yield until(lambda: server.broker.topic("t") is None)

    @inlineCallbacks
    def test_ctrl_c(self) -> None:
        """
        Ctrl-C ends the session with status 0, as Ctrl-D does.
        """
        server = RunningServer(self)
        session = _Session(self, server)
        yield session.ready()
        session.type("\x03")
        status = yield bounded(session.done)
        self.assertEqual(status, 0)
        yield until(lambda: server.broker.topic("t") is None)

    @inlineCallbacks
    def test_stop(self) -> None:
        """
        stop() (what SIGTERM does) ends a waiting prompt with status 0.
        """
        server = RunningServer(self)
        session = _Session(self, server)
        yield session.ready()
        yield bounded(session.prompt.stop())
        status = yield bounded(session.done)
        self.assertEqual(status, 0)
        yield until(lambda: server.broker.topic("t") is None)

    @inlineCallbacks
    def test_message_shows_state(self) -> None:
        """
        The prompt shows the topic and whether it is connected, and
        follows the connection when it drops.
        """
        server = RunningServer(self)
        session = _Session(self, server, topic="example")
        self.assertEqual(session.prompt.message(), "example (connecting)> ")
        yield session.ready()
        self.assertEqual(session.prompt.message(), "example (connected)> ")
        yield bounded(server.stop())
        yield until(lambda: session.prompt.message() == "example (disconnected)> ")

    @inlineCallbacks
    def test_subscribe_failure(self) -> None:
        """
        When the topic cannot be subscribed to, start() fails and no prompt
        is shown.
        """
        session = _Session(self, None, servers=[f"127.0.0.1:{dead_port()}"])
        error = yield self.assertFailure(bounded(session.done), SubscribeError)
        self.assertIn("connection refused", str(error))
        self.assertFalse(session.prompt.ready.called)


class CommandTests(TestCase):
    """
    memmq -i as a real child process, its standard input a pipe (not a
    terminal: prompt_toolkit reads it all the same).
    """

    timeout = 60

    @inlineCallbacks
    def test_line_published_then_end_of_input(self) -> None:
        """
        A line written to memmq -i is published, a message from elsewhere
        is shown, and the end of input exits 0.
        """
        server = RunningServer(self)
        sub = yield server.client.subscribe(server.url, "t")
        child = spawn_memmq(self, "-i", "--topic=t", f"--servers=127.0.0.1:{server.port}")
        yield until(lambda: server.broker.topic("t") is not None and server.broker.subscribers == 2, 30)
        yield server.client.publish(server.url, "t", b"from afar")
        yield until(lambda: b"from afar" in child.stdout, 30)
        child.transport.write("typed ü\n".encode())
        child.transport.closeStdin()
        status = yield bounded(child.ended, 30)
        self.assertEqual(status, 0, child.stderr)
        self.assertEqual(sub.messages, [b"from afar", "typed ü".encode()])
        self.assertNotIn(b"Traceback", child.stderr)

    @inlineCallbacks
    def test_terminal(self) -> None:
        """
        On a terminal (a pty): a message is drawn above the prompt with the
        line being typed kept; the line is published on Enter; Ctrl-C
        exits 0.
        """
        server = RunningServer(self)
        sub = yield server.client.subscribe(server.url, "t")
        child = Child()
        try:
            spawn(
                self, child,
                [sys.executable, "-m", "memmq", "-i", "--topic=t", f"--servers=127.0.0.1:{server.port}"],
                # A pty answers no cursor position request: do not ask.
                env=dict(child_env(), PROMPT_TOOLKIT_NO_CPR="1", TERM="xterm"), usePTY=True,
            )
        except (OSError, NotImplementedError) as e:
            raise SkipTest(f"no pty here: {e}") from None
        yield until(lambda: server.broker.subscribers == 2, 30)
        child.transport.write(b"half")
        yield until(lambda: b"half" in child.stdout, 30)
        yield server.client.publish(server.url, "t", b"from afar")
        yield until(lambda: b"t (connected)> half" in child.stdout.split(b"from afar", 1)[-1], 30)
        child.transport.write(" typed ü\r".encode())
        yield sub.wait_for(2)
        child.transport.write(b"\x03")
        status = yield bounded(child.ended, 30)
        self.assertEqual(status, 0, child.stdout)
        self.assertEqual(sub.messages, [b"from afar", "half typed ü".encode()])
        self.assertNotIn(b"Traceback", child.stdout)

    @inlineCallbacks
    def test_sigterm(self) -> None:
        """
        SIGTERM ends memmq -i with status 0, its subscription closed.
        """
        server = RunningServer(self)
        child = spawn_memmq(self, "-i", "--topic=t", f"--servers=127.0.0.1:{server.port}")
        yield until(lambda: server.broker.topic("t") is not None, 30)
        child.transport.signalProcess("TERM")
        status = yield bounded(child.ended, 30)
        self.assertEqual(status, 0, child.stderr)
        self.assertNotIn(b"Traceback", child.stderr)
        yield until(lambda: server.broker.topic("t") is None)

    @inlineCallbacks
    def test_no_server(self) -> None:
        """
        With no server to subscribe to, memmq -i says why on stderr and
        exits 1.
        """
        child = spawn_memmq(self, "-i", "--topic=t", f"--servers=127.0.0.1:{dead_port()}", "--retries=0")
        status = yield bounded(child.ended, 30)
        self.assertEqual(status, 1)
        self.assertIn(b"memmq: cannot subscribe to 't'", child.stderr)
        self.assertIn(b"connection refused", child.stderr)
        self.assertNotIn(b"Traceback", child.stderr)
