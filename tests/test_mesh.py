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

from memmq.backplane import mesh as mesh_module
from memmq.backplane.interface import IBackplane
from memmq.backplane.mesh import MeshBackplane, interest_frame, message_frame, parse_interest, parse_message
from memmq.errors import BackplaneUnavailable
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

    @inlineCallbacks
    def test_peer_not_reading(self) -> None:
        """
        A peer that stops reading its stream costs a bounded amount: once
        the stream is full its messages are held up to HOLD bytes, then
        dropped and counted (calls carrying a message are refused); its
        queue groups are not chosen meanwhile.
        When it reads again, what was held arrives, in order, and new
        messages and group choices reach it again.
        """
        self.patch(mesh_module, "HOLD", 256 * 1024)
        a, b = self.meshes
        a.interest("t", True, "g")
        b.interest("t", True)
        b.interest("t", True, "g")
        yield until(lambda: a.remote_topics("t") == 1 and a.remote_subjects() == 1)
        inbound = b._inbound[0]
        inbound.transport.pauseProducing()
        payload = b"x" * 1024
        published = 0
        while published < 4000 and not a.dropped:
            for _ in range(50):
                a.publish("t", payload + b"%d" % published, route=a.route("t"))
                published += 1
            yield until(lambda: not a._links[1]._pending)
        self.assertTrue(a._links[1].full)
        self.assertGreater(a.dropped, 0)
        self.assertEqual(a.sent + a.dropped, published)
        # Held: HOLD bytes at most, beyond what the stream took before it
        # was full (the kernel's buffers, some hundreds of KiB).
        self.assertLess(a.sent * len(payload), 256 * 1024 + 4 * 1024 * 1024)
        self.assertEqual([a.route("t").local for _ in range(3)], [("g",)] * 3)
        # A call carrying a message is refused rather than dropped.
        self.assertRaises(BackplaneUnavailable, a.tell, 1, b"p", payload, True)
        yield self.assertFailure(a.call(1, b"p", payload, True), BackplaneUnavailable)
        inbound.transport.resumeProducing()
        yield until(lambda: len(self.recorders[1].frames) == a.sent and not a._links[1].full)
        received = [frame[1] for frame in self.recorders[1].frames]
        numbers = [int(p[len(payload):]) for p in received]
        self.assertEqual(numbers, sorted(numbers))
        self.assertEqual(numbers[: len(numbers) // 2], list(range(len(numbers) // 2)))
        choices = [a.route("t") for _ in range(2)]
        self.assertEqual(sorted(len(route.local) for route in choices), [0, 1])
        a.publish("t", b"again")
        yield until(lambda: self.recorders[1].frames[-1][1] == b"again")


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
