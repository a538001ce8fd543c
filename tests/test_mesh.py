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
from memmq.backplane.mesh import MeshBackplane, interest_frame, message_frame, parse_interest, parse_message
from memmq.patterns import parse_pattern
from tests.support import bounded, short_directory, until


class _Recorder:
    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.frames: list[tuple[str, bytes, bool, tuple[str, ...], int | None]] = []

    def received(self, topic, payload, plain=True, groups=None, stamp=None) -> None:
        self.messages.append((topic, payload))
        self.frames.append((topic, payload, plain, groups, stamp))


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


class InterestFrameTests(TestCase):
    """
    An interest frame reads back as it was written: a topic or a pattern,
    in a group or not.
    """

    def test_round_trip(self) -> None:
        for subject, on, group in [
            ("t", True, None),
            ("a.*", False, None),
            (parse_pattern("a.*"), True, None),
            (parse_pattern("orders.>"), False, "workers\u00e9"),
            ("jobs", True, "g"),
        ]:
            frame = interest_frame(subject, on, group)
            self.assertEqual(chr(frame[0]), "I" if on else "i")
            parsed = parse_interest(frame[5:])
            self.assertEqual(parsed, (subject, group))
            self.assertIs(type(parsed[0]), type(subject))


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
        self.started = []
        for index, path in enumerate(paths):
            listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listening.bind(path)
            listening.listen(8)
            listening.setblocking(False)
            self.addCleanup(listening.close)
            mesh = MeshBackplane(reactor, index, paths, listening.fileno())
            recorder = _Recorder()
            self.started.append(mesh.start(recorder))
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

    @inlineCallbacks
    def test_synced(self) -> None:
        """
        start() fires once each worker knows what the other follows (a
        message published then reaches it), well before the bound.
        """
        a, b = self.meshes
        yield bounded(self.started[0], 2)
        yield bounded(self.started[1], 2)
        self.assertEqual(a._unsynced, {1: 0})
        self.assertIsNotNone(a._links[1].transport)

    @inlineCallbacks
    def test_patterns(self) -> None:
        """
        A peer's pattern interest brings it the messages to the topics the
        pattern matches, for its plain subscribers, stamp and all; when it
        goes, the traffic stops.
        """
        a, b = self.meshes
        b.interest(parse_pattern("p.*"), True)
        yield until(lambda: a.remote_subjects() == 1)
        self.assertIsNone(b.route("p.x"))
        route = a.route("p.x")
        self.assertEqual((route.local, route.plain, route.chosen), ((), {1}, {}))
        a.publish("p.x", b"1", stamp=42, route=route)
        a.publish("q.x", b"no")
        a.publish("p.y", b"2")
        yield until(lambda: len(self.recorders[1].frames) >= 2)
        self.assertEqual(self.recorders[1].frames, [("p.x", b"1", True, (), 42), ("p.y", b"2", True, (), None)])
        b.interest(parse_pattern("p.*"), False)
        yield until(lambda: a.remote_subjects() == 0)
        self.assertIsNone(a.route("p.x"))
        a.publish("p.z", b"late")
        self.assertEqual(a.sent, 2)

    @inlineCallbacks
    def test_groups(self) -> None:
        """
        A queue group with members on both workers: each message is given
        to one worker, in turn, whichever of them takes the publish; a peer
        chosen only for the group gets it without its plain subscribers;
        a peer that is not connected is never chosen.
        """
        a, b = self.meshes
        a.interest("j", True, "g")
        b.interest(parse_pattern("j.>"), True, "g")
        b.interest("j", True, "g")
        yield until(lambda: a.remote_subjects() == 2 and b.remote_subjects() == 1)
        routes = [a.route("j") for _ in range(4)]
        self.assertEqual([r.local for r in routes], [("g",), (), ("g",), ()])
        self.assertEqual([r.chosen for r in routes], [{}, {1: ["g"]}, {}, {1: ["g"]}])
        self.assertEqual([r.plain for r in routes], [set()] * 4)
        for i, route in enumerate(routes):
            a.publish("j", b"%d" % i, route=route)
        yield until(lambda: len(self.recorders[1].frames) >= 2)
        self.assertEqual(self.recorders[1].frames, [("j", b"1", False, ("g",), None), ("j", b"3", False, ("g",), None)])
        # Only b's pattern reaches j.x: b is chosen every time.
        self.assertEqual([a.route("j.x").chosen for _ in range(2)], [{1: ["g"]}, {1: ["g"]}])
        link = a._links[1]
        transport, link.transport = link.transport, None
        try:
            self.assertEqual([a.route("j").local for _ in range(2)], [("g",), ("g",)])
        finally:
            link.transport = transport
