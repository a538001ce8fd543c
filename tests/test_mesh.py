"""
Tests for memmq.backplane.mesh: two workers' meshes in this process, joined
by real Unix sockets.
"""

from __future__ import annotations

import os
import socket

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from memmq.backplane.interface import IBackplane
from memmq.backplane.mesh import MeshBackplane, message_frame, parse_message
from tests.support import bounded, short_directory, until


class _Recorder:
    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []

    def received(self, topic, payload, plain=True, groups=None, stamp=None) -> None:
        self.messages.append((topic, payload))


class MessageFrameTests(TestCase):
    """
    A message frame reads back as it was written.
    """

    def test_round_trip(self) -> None:
        for fields in [
            ("t", b"", None, True, ()),
            ("t\u00e9", b"\x00payload\xff", 1_700_000_000_000_000_001, False, ("g1", "workers\u00e9")),
            ("a.b", b"x" * 70000, 5, True, ("g",)),
        ]:
            frame = message_frame(*fields)
            kind, length = frame[0], int.from_bytes(frame[1:5], "big")
            self.assertEqual((chr(kind), length), ("M", len(frame) - 5))
            self.assertEqual(parse_message(frame[5:]), fields)


class MeshTests(TestCase):
    """
    Interest goes to the peers; messages go only to peers that follow their
    topic, in order; figures are gathered from the peers.
    """

    timeout = 30

    def setUp(self) -> None:
        directory = short_directory(self)
        paths = [os.path.join(directory, f"m{i}") for i in range(2)]
        self.meshes = []
        self.recorders = []
        for index, path in enumerate(paths):
            listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listening.bind(path)
            listening.listen(8)
            listening.setblocking(False)
            self.addCleanup(listening.close)
            mesh = MeshBackplane(reactor, index, paths, listening.fileno())
            recorder = _Recorder()
            mesh.start(recorder)
            self.addCleanup(mesh.stop)
            self.meshes.append(mesh)
            self.recorders.append(recorder)

    @inlineCallbacks
    def test_interest_and_order(self) -> None:
        """
        Once B follows a topic, A's messages to it reach B in order, and
        only those: a topic B does not follow costs nothing.
        """
        a, b = self.meshes
        self.assertTrue(verifyObject(IBackplane, a))
        b.interest("t", True)
        yield until(lambda: a.remote_topics("t") == 1)
        for i in range(100):
            a.publish("t", b"%d" % i)
            a.publish("other", b"x")
        yield until(lambda: len(self.recorders[1].messages) >= 100)
        self.assertEqual(self.recorders[1].messages, [("t", b"%d" % i) for i in range(100)])
        self.assertEqual(a.sent, 100)
        b.interest("t", False)
        yield until(lambda: a.remote_topics("t") == 0)
        a.publish("t", b"late")
        self.assertEqual(a.sent, 100)

    @inlineCallbacks
    def test_gather(self) -> None:
        """
        gather() fires with each peer's figures.
        """
        a, b = self.meshes
        b.figures = lambda: {"worker": 1}
        yield until(lambda: 1 in a._inbound and a._links[1].transport is not None)
        answers = yield bounded(a.gather())
        self.assertEqual(answers, {1: {"worker": 1}})


class CallTests(TestCase):
    """
    Calls on a peer's services (what persistence with workers is built on):
    answered in order after what was sent before, failed with
    BackplaneUnavailable when the peer cannot be reached or goes away.
    """

    timeout = 30
    setUp = MeshTests.setUp

    def _connected(self):
        a, b = self.meshes
        return until(lambda: a.reachable(1) and b.reachable(0))

    @inlineCallbacks
    def test_call_and_tell(self) -> None:
        """
        A call is answered with the service's bytes, or fails with the
        MemmqError it raised; a tell is handled in order after the messages
        sent before it, and both count as messages when told so.
        """
        from memmq.errors import PersistError

        a, b = self.meshes
        seen: list[object] = []

        def echo(peer, body):
            seen.append(("call", peer, body, len(self.recorders[1].messages)))
            if body == b"fail":
                raise PersistError("cannot write it")
            return body.upper()

        b.serve(b"E", echo, message=True)
        b.interest("t", True)
        yield self._connected()
        yield until(lambda: a.remote_topics("t") == 1)
        for i in range(10):
            a.publish("t", b"%d" % i)
        a.tell(1, b"E", b"told", message=True)
        answer = yield bounded(a.call(1, b"E", b"hello", message=True))
        self.assertEqual(answer, b"HELLO")
        self.assertEqual(seen[0], ("call", 0, b"told", 10))
        error = yield self.assertFailure(bounded(a.call(1, b"E", b"fail", message=True)), PersistError)
        self.assertEqual(str(error), "cannot write it")
        self.assertEqual((a.sent, b.received), (13, 13))

    @inlineCallbacks
    def test_unreachable_and_gone(self) -> None:
        """
        A call to a peer not connected both ways fails at once; a call
        waiting for a peer that stops fails, with BackplaneUnavailable.
        """
        from twisted.internet.defer import Deferred

        from memmq.errors import BackplaneUnavailable

        a, b = self.meshes
        self.assertFalse(a.reachable(5))
        yield self.assertFailure(a.call(5, b"E", b""), BackplaneUnavailable)
        self.assertRaises(BackplaneUnavailable, a.tell, 5, b"E", b"")
        never: Deferred = Deferred()
        b.serve(b"W", lambda peer, body: never)
        yield self._connected()
        waiting = a.call(1, b"W", b"")
        yield bounded(b.stop())
        yield self.assertFailure(bounded(waiting), BackplaneUnavailable)
