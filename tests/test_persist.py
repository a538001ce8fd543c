"""
Tests for memmq.persist's parts: the line format (byte for byte against
lines Go's encoding/json wrote, as asim/mq does), file names, and the
writer service (batches, durable mode, disk errors, shutdown).
"""

from __future__ import annotations

import os
import shutil

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks, succeed
from twisted.trial.unittest import SynchronousTestCase, TestCase

from memmq.broker import Broker
from memmq.errors import PersistError
from memmq.persist import Persister, PersistingBroker, file_name, parse
from memmq.persist.names import MAX_NAME
from memmq.persist.record import encode_topic, line
from memmq.persist.replay import Replay, read_chunk
from tests.support import PAYLOADS, REPO, bounded, logged_events, sleep

FIXTURES = os.path.join(REPO, "tests", "fixtures", "asim-mq")

TIMESTAMPS = [1764219600000000000 + i * 1001 for i in range(len(PAYLOADS))]
ODD_TOPIC = 'a<b>&c "q" \\ \u00e9/..% \u2028x'


def _fixture(name: str) -> bytes:
    with open(os.path.join(FIXTURES, name), "rb") as f:
        return f.read()


def _lines(path: str) -> list[bytes]:
    with open(path, "rb") as f:
        return f.read().splitlines(keepends=True)


class _Clock:
    """
    Nanosecond timestamps from a list, then the last one again and again.
    """

    def __init__(self, values) -> None:
        self._values = list(values)

    def __call__(self) -> int:
        return self._values.pop(0) if len(self._values) > 1 else self._values[0]


class RecordTests(SynchronousTestCase):
    """
    A line is what asim/mq's Go encoder writes for the same message.
    """

    def test_plain_topic_byte_for_byte(self) -> None:
        """
        The lines for topic C{example} equal Go's, byte for byte.
        """
        part = encode_topic("example")
        made = b"".join(line(t, part, p) for t, p in zip(TIMESTAMPS, PAYLOADS, strict=True))
        self.assertEqual(made, _fixture("plain.mq"))

    def test_escaped_topic_byte_for_byte(self) -> None:
        """
        A topic with quotes, backslash, HTML characters, non-ASCII and
        U+2028 is escaped exactly as Go escapes it.
        """
        part = encode_topic(ODD_TOPIC)
        made = b"".join(line(t, part, p) for t, p in zip(TIMESTAMPS, PAYLOADS, strict=True))
        self.assertEqual(made, _fixture("odd.mq"))

    def test_parse_go_lines(self) -> None:
        """
        Lines written by Go read back as the messages they hold.
        """
        for name, topic in (("plain.mq", "example"), ("odd.mq", ODD_TOPIC)):
            records = [parse(text) for text in _fixture(name).splitlines()]
            self.assertEqual([r.payload for r in records], PAYLOADS)
            self.assertEqual([r.timestamp for r in records], TIMESTAMPS)
            self.assertEqual({r.topic for r in records}, {topic})

    def test_parse_refuses_torn_line(self) -> None:
        """
        A line cut short (a crash in mid-write) is a ValueError, as is a
        null payload read as empty (Go marshals a nil slice as null).
        """
        self.assertRaises(ValueError, parse, b'{"timestamp":1,"topic":"t","payl')
        self.assertRaises(ValueError, parse, b'{"timestamp":"1","topic":"t","payload":""}')
        self.assertEqual(parse(b'{"timestamp":1,"topic":"t","payload":null}').payload, b"")


HOSTILE = [
    ".",
    "..",
    "../escape",
    "../../etc/passwd",
    "/absolute",
    "a/b",
    "a\\b",
    "C:\\windows",
    "%2E%2E",
    "~",
    " ",
    "-rf",
    "\u00e9" * 127,
    "x" * 255,
    "x" * 254 + "y",
    "\u4e16" * 85,
]


class NameTests(SynchronousTestCase):
    """
    A topic's file name is one path component of bounded length, and
    distinct topics get distinct names.
    """

    def test_plain_names_as_asim_mq(self) -> None:
        """
        A topic of [A-Za-z0-9._-] is its own name plus .mq, as in asim/mq.
        """
        self.assertEqual(file_name("orders.eu-west_1"), "orders.eu-west_1.mq")

    def test_hostile_names(self) -> None:
        """
        No name is a path, C{.}/C{..} or longer than the cap, and all differ.
        """
        names = [file_name(topic) for topic in HOSTILE]
        for topic, name in zip(HOSTILE, names, strict=True):
            self.assertNotIn("/", name, topic)
            self.assertNotIn("\\", name, topic)
            self.assertNotIn("\x00", name, topic)
            self.assertNotIn(name, (".", "..", ".mq"))
            self.assertLessEqual(len(name.encode()), MAX_NAME, topic)
            self.assertTrue(name.endswith(".mq"))
        self.assertEqual(len(set(names)), len(names))
        self.assertEqual(file_name(".."), "%2E%2E.mq")
        self.assertEqual(file_name("../escape"), "..%2Fescape.mq")


class WriterTests(TestCase):
    """
    The Persister service writing real files in a temporary directory.
    """

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)

    def _persister(self, **kwargs) -> Persister:
        persister = Persister(self.directory, reactor=reactor, **kwargs)
        persister.startService()
        self.addCleanup(lambda: persister.running and persister.stopService())
        return persister

    @inlineCallbacks
    def test_file_equals_go_fixture(self) -> None:
        """
        The file the writer makes for the fixture's messages equals the
        one Go's encoder made, byte for byte.
        """
        persister = self._persister(clock=_Clock(TIMESTAMPS))
        for payload in PAYLOADS:
            self.assertIsNone(persister.append(ODD_TOPIC, payload))
        yield bounded(persister.stopService())
        with open(persister.path(ODD_TOPIC), "rb") as f:
            self.assertEqual(f.read(), _fixture("odd.mq"))

    @inlineCallbacks
    def test_first_message_of_new_topic(self) -> None:
        """
        The first message of a topic nobody subscribed to is persisted;
        so is one of a topic that had a subscriber first.
        """
        persister = self._persister()
        local = Broker()
        broker = PersistingBroker(local, persister)
        yield broker.publish("fresh", b"first")
        local.subscribe("watched", _Sink())
        yield broker.publish("watched", b"seen")
        yield bounded(persister.flushed())
        self.assertEqual([parse(t).payload for t in _lines(persister.path("fresh"))], [b"first"])
        self.assertEqual([parse(t).payload for t in _lines(persister.path("watched"))], [b"seen"])

    @inlineCallbacks
    def test_hostile_topics_stay_inside(self) -> None:
        """
        Messages of hostile topics land in files directly inside the
        directory, one per topic, each reading back as its own topic;
        nothing appears beside or above the directory.
        """
        base = os.path.abspath(self.mktemp())
        self.directory = os.path.join(base, "persist")
        os.makedirs(self.directory)
        persister = self._persister()
        for topic in HOSTILE:
            persister.append(topic, topic.encode())
        yield bounded(persister.stopService())
        self.assertEqual(os.listdir(base), ["persist"])
        found = {}
        for root, dirs, files in os.walk(base):
            self.assertEqual(dirs, [] if root == self.directory else ["persist"])
            for name in files:
                self.assertEqual(root, self.directory)
                [record] = [parse(t) for t in _lines(os.path.join(root, name))]
                found[record.topic] = record.payload
        self.assertEqual(found, {topic: topic.encode() for topic in HOSTILE})

    @inlineCallbacks
    def test_timestamps_strictly_increase(self) -> None:
        """
        A clock that stands still (or steps back) still gives every
        message a later timestamp than the one before.
        """
        persister = self._persister(clock=_Clock([500, 400, 400, 300]))
        for i in range(6):
            persister.append("t" if i % 2 else "u", b"%d" % i)
        yield bounded(persister.flushed())
        stamps = sorted(parse(t).timestamp for name in ("t", "u") for t in _lines(persister.path(name)))
        self.assertEqual(stamps, [500, 501, 502, 503, 504, 505])
        self.assertEqual(persister.last_timestamp, 505)

    @inlineCallbacks
    def test_batched_not_written_at_once(self) -> None:
        """
        In the default mode a message waits for the interval (here long)
        and is written when asked to flush; nothing blocks the caller.
        """
        persister = self._persister(flush_interval=3600)
        self.assertIsNone(persister.append("t", b"later"))
        self.assertFalse(os.path.exists(persister.path("t")))
        yield bounded(persister.flushed())
        self.assertEqual(len(_lines(persister.path("t"))), 1)

    @inlineCallbacks
    def test_interval_flush(self) -> None:
        """
        Without being asked, a message is written within the interval.
        """
        persister = self._persister(flush_interval=0.05)
        persister.append("t", b"soon")
        for _ in range(200):
            if os.path.exists(persister.path("t")) and _lines(persister.path("t")):
                break
            yield sleep(0.01)
        self.assertEqual([parse(t).payload for t in _lines(persister.path("t"))], [b"soon"])

    @inlineCallbacks
    def test_group_commit(self) -> None:
        """
        In durable mode, publishes made together share one write and one
        fsync, and each fires only once its message is in the file.
        """
        persister = self._persister(sync=True, flush_interval=3600)
        waits = [persister.append("t", b"%d" % i) for i in range(100)]
        self.assertFalse(any(d.called for d in waits))
        yield bounded(gatherResults(waits))
        self.assertEqual(persister.syncs, 1)
        self.assertEqual([parse(t).payload for t in _lines(persister.path("t"))], [b"%d" % i for i in range(100)])

    @inlineCallbacks
    def test_directory_removed(self) -> None:
        """
        A directory removed under the server: the failure is logged once
        per file with the reason, counted, durable publishes fail with
        PersistError; once the directory is back, writing resumes.
        """
        events = logged_events(self)
        persister = self._persister(sync=True)
        yield bounded(persister.append("kept", b"before"))
        shutil.rmtree(self.directory)
        for _ in range(3):
            failed = yield bounded(persister.append("kept", b"lost")).addErrback(lambda f: f.value)
            self.assertIsInstance(failed, PersistError)
            self.assertIn("No such file or directory", str(failed))
        failed = yield bounded(persister.append("other", b"lost")).addErrback(lambda f: f.value)
        self.assertIsInstance(failed, PersistError)
        errors = [e for e in events if "cannot write" in e.get("log_format", "")]
        self.assertEqual(sorted(e["path"] for e in errors), sorted([persister.path("kept"), persister.path("other")]))
        self.assertEqual(persister.errors, 4)
        self.assertEqual(len(persister.failing), 2)
        os.makedirs(self.directory)
        yield bounded(persister.append("kept", b"after"))
        self.assertEqual([parse(t).payload for t in _lines(persister.path("kept"))], [b"after"])
        self.assertEqual(len(persister.failing), 1)

    @inlineCallbacks
    def test_rotated_file_reopened(self) -> None:
        """
        A file renamed away (log rotation) or deleted is not written to
        any more: the next line goes to a new file under the topic's name.
        """
        persister = self._persister()
        path = persister.path("t")
        for step in ("first", "renamed", "deleted"):
            persister.append("t", step.encode())
            yield bounded(persister.flushed())
            if step == "first":
                os.rename(path, path + ".1")
            elif step == "renamed":
                os.unlink(path)
        self.assertEqual([parse(t).payload for t in _lines(path + ".1")], [b"first"])
        self.assertEqual([parse(t).payload for t in _lines(path)], [b"deleted"])

    @inlineCallbacks
    def test_torn_line_finished(self) -> None:
        """
        A file whose last line was torn by a crash gets a newline before
        the first new line, so that the new line reads back.
        """
        path = os.path.join(self.directory, "t.mq")
        with open(path, "wb") as f:
            f.write(b'{"timestamp":1,"topic":"t","payload":"YQ=="}\n{"timestamp":2,"top')
        persister = self._persister()
        persister.append("t", b"new")
        yield bounded(persister.flushed())
        texts = _lines(path)
        self.assertEqual(len(texts), 3)
        self.assertEqual(parse(texts[2]).payload, b"new")
        payloads, offset, bound, done = read_chunk(path, "t", 0, persister.last_timestamp, 0, None)
        self.assertEqual(payloads, [b"a", b"new"])
        self.assertTrue(done)

    @inlineCallbacks
    def test_stop_writes_everything(self) -> None:
        """
        Stopping writes what is pending, and a message accepted after the
        stop is written at once rather than lost.
        """
        persister = self._persister(flush_interval=3600)
        for i in range(50):
            persister.append("t", b"%d" % i)
        yield bounded(persister.stopService())
        self.assertEqual(len(_lines(persister.path("t"))), 50)
        persister.append("t", b"late")
        self.assertEqual(parse(_lines(persister.path("t"))[-1]).payload, b"late")


class _FakePersister:
    """
    Six persisted payloads, read two at a time, at once; flushed when the
    test says so.
    """

    last_timestamp = 100

    def __init__(self) -> None:
        self.reads: list[int] = []
        self.flushing: Deferred = Deferred()

    def flushed(self):
        return self.flushing

    def seam(self) -> int:
        return self.last_timestamp

    def read(self, topic, since, last, offset, bound):
        self.reads.append(offset)
        payloads = [b"p%d" % i for i in range(offset, min(offset + 2, 6))]
        return succeed((payloads, offset + 2, 6, offset + 2 >= 6))


class _FakeSubscription:
    def __init__(self) -> None:
        self.paused = False
        self.calls: list[str] = []

    def pause(self) -> None:
        self.paused = True
        self.calls.append("pause")

    def resume(self) -> None:
        self.paused = False
        self.calls.append("resume")


class ReplayFlowTests(SynchronousTestCase):
    """
    The replay holds live messages until the persisted ones are sent, and
    reads no further while the connection is full.
    """

    def setUp(self) -> None:
        self.persister = _FakePersister()
        self.subscription = _FakeSubscription()
        self.sent: list[bytes] = []
        self.full_after: bytes | None = None

    def _replay(self, since: int = 0) -> Replay:
        def send(payload: bytes) -> None:
            self.sent.append(payload)
            if payload == self.full_after:
                self.assertTrue(self.replay.pause())

        self.replay = Replay(self.persister, "t", since, self.subscription, send, self.fail)
        return self.replay

    def test_all_then_live(self) -> None:
        """
        The subscription is paused from the start, nothing is read before
        the writer has written up to the seam, and live delivery resumes
        once every persisted payload has been sent.
        """
        replay = self._replay()
        self.assertEqual(self.subscription.calls, ["pause"])
        self.assertEqual(self.persister.reads, [])
        self.persister.flushing.callback(None)
        self.assertEqual(self.sent, [b"p%d" % i for i in range(6)])
        self.assertEqual(self.subscription.calls, ["pause", "resume"])
        self.assertFalse(replay.active)
        self.assertFalse(replay.pause())

    def test_full_connection_stops_reading(self) -> None:
        """
        While the connection is full no chunk is read; once it drains the
        replay goes on, and only then does live delivery resume.
        """
        self.full_after = b"p1"
        replay = self._replay()
        self.persister.flushing.callback(None)
        self.assertEqual(self.sent, [b"p0", b"p1"])
        self.assertEqual(self.persister.reads, [0])
        self.assertTrue(self.subscription.paused)
        self.assertTrue(replay.resume())
        self.assertEqual(self.sent, [b"p%d" % i for i in range(6)])
        self.assertEqual(self.persister.reads, [0, 2, 4])
        self.assertEqual(self.subscription.calls, ["pause", "resume"])

    def test_full_at_the_end(self) -> None:
        """
        A connection full when the replay ends keeps the subscription
        paused: the connection resumes it when it drains.
        """
        self.full_after = b"p5"
        replay = self._replay()
        self.persister.flushing.callback(None)
        self.assertFalse(replay.active)
        self.assertEqual(self.subscription.calls, ["pause"])
        self.assertFalse(replay.resume())

    def test_nothing_after_since(self) -> None:
        """
        A since at or after the last message's stamp reads nothing.
        """
        self._replay(since=100)
        self.assertEqual(self.persister.reads, [])
        self.assertEqual(self.subscription.calls, ["pause", "resume"])


class ReadChunkTests(SynchronousTestCase):
    """
    read_chunk reads whole lines, within the bound, of the topic, in the
    window (since, last].
    """

    def test_window_and_bound(self) -> None:
        """
        Lines outside the window, of another topic, past the bound or torn
        are left out; small chunks still end on whole lines.
        """
        path = os.path.abspath(self.mktemp())
        part = encode_topic("t")
        lines = [line(ts, part, b"m%d" % ts) for ts in range(1, 9)]
        lines.insert(3, line(4, encode_topic("other"), b"other"))
        lines.insert(5, b"torn\n")
        with open(path, "wb") as f:
            f.write(b"".join(lines))
        bound = sum(len(t) for t in lines[:-1])  # the last line came later
        got, offset, done = [], 0, False
        while not done:
            payloads, offset, bound, done = read_chunk(path, "t", 2, 7, offset, bound, size=10)
            got += payloads
        self.assertEqual(got, [b"m3", b"m4", b"m5", b"m6", b"m7"])
        self.assertEqual(read_chunk(path + ".missing", "t", 0, 9, 0, None), ([], 0, 0, True))


class _Sink:
    def deliver(self, message) -> None:
        pass


