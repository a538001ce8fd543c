# -*- test-case-name: tests.test_workers_persist -*-
"""
Persistence on a server run with C{--workers} (README: Workers,
Persistence): every topic's file is written by one worker, the topic's
owner, so that it holds one order with strictly increasing stamps, as with
one process.

The owner of a topic is fixed: a hash of its name modulo the number of
workers (L{owner_of}), the same in every worker and across restarts.  A
publish on a worker that does not own its topic is handed to the owner over
the mesh, in order on the stream between the two (so each publishing
connection's order holds); the owner stamps it, appends it to the file and
delivers it here and to every worker that follows the topic, this one
included, each copy carrying the stamp.  The worker that took the publish
does not deliver it itself: every subscriber, on any worker, sees one order
per topic and the same stamps.

The publisher is answered once the owner has the message (at once on the
owner itself), or with C{--persist_sync} once the owner says its line is on
disk (or that it could not be written: the same error as with one
process).  An owner that cannot be reached (it is being restarted) fails
the publish with L{BackplaneUnavailable} (HTTP 503, which clients retry):
never a message answered and lost.

A replay (C{since}, C{Last-Event-ID}) on any worker reads the owner's file
directly (one directory for all), up to the seam the owner gives once it
has written everything stamped so far (L{WorkerReplaySource}); the seam is
asked for after this worker's interest in the topic, on the same stream, so
every message stamped later reaches the subscriber live.
"""

from __future__ import annotations

import struct
import zlib
from functools import partial

from twisted.internet.defer import Deferred, fail, gatherResults, succeed
from zope.interface import implementer

from memmq.errors import BackplaneUnavailable, InvalidTopic
from memmq.interfaces import IBroker, IBrokerStats, IReplaySource
from memmq.persist.broker import PersistingBroker
from memmq.persist.replay import Seams
from memmq.persist.writer import Persister
from memmq.topics import check_topic
from memmq.workers.figures import WorkerBroker

__all__ = ["DRAIN", "OwnedPersistingBroker", "WorkerReplaySource", "owner_of"]

# What a worker asks its peers over the mesh (MeshBackplane.serve).
_PUBLISH = b"P"  # persist and publish this message of a topic you own
_SEAM = b"T"  # your seam, once what you stamped so far is written

_TOPIC = struct.Struct(">H")
_STAMP = struct.Struct(">Q")

#: How long a stopping worker keeps reading what its peers still hand it
#: (seconds): a message answered before they stopped is written.
DRAIN = 2.0


def owner_of(topic: str, workers: int) -> int:
    """
    The worker (from 0) that writes C{topic}'s file on a server of
    C{workers} workers: a stable hash (CRC-32 of its UTF-8), the same in
    every process and every run.
    """
    return zlib.crc32(topic.encode("utf-8", "surrogatepass")) % workers


@implementer(IBroker, IBrokerStats)
class OwnedPersistingBroker(PersistingBroker):
    """
    The broker of a worker of a persisting server: persists and publishes
    the topics it owns, hands the others to their owners.

    @param broker: the worker's broker (over the mesh).
    @param persister: the worker's writer, of the files of the topics it
        owns.
    """

    def __init__(self, broker: WorkerBroker, persister: Persister) -> None:
        super().__init__(broker, persister)  # type: ignore[arg-type]
        self.index = broker.index
        self.mesh = mesh = broker.mesh
        self.workers = len(mesh.paths)
        self.gather = broker.gather
        broker.persister = persister
        mesh.serve(_PUBLISH, self._take, message=True)
        mesh.serve(_SEAM, self._seam)
        mesh.drain = DRAIN
        #: what the front-ends replay from
        self.replay = WorkerReplaySource(persister, mesh, self.index, self.workers)

    def publish(self, topic: str, payload: bytes, hops: int = 0) -> Deferred[None]:
        try:
            owner = owner_of(check_topic(topic), self.workers)
        except InvalidTopic:
            return fail()
        if owner == self.index:
            return super().publish(topic, payload, hops)
        encoded = topic.encode("utf-8")
        body = _TOPIC.pack(len(encoded)) + encoded + payload
        if self.persister.sync:
            return self.mesh.call(owner, _PUBLISH, body, message=True).addCallback(_nothing)
        try:
            self.mesh.tell(owner, _PUBLISH, body, message=True)
        except BackplaneUnavailable:
            return fail()
        return succeed(None)

    def _take(self, peer: int, body: bytes) -> Deferred[bytes]:
        """
        A message of a topic this worker owns, handed over by C{peer}:
        stamped, delivered here and to the workers that follow its topic,
        and written; the answer once written (as the writer answers).
        """
        (length,) = _TOPIC.unpack_from(body)
        topic = body[_TOPIC.size : _TOPIC.size + length].decode("utf-8")
        payload = body[_TOPIC.size + length :]
        stamp = self.persister.stamp()
        try:
            self._publish_now(topic, payload, stamp)
        except BackplaneUnavailable:
            # This worker is stopping: its subscribers are gone, and the
            # publisher, answered already, is owed the line.
            pass
        written = self._append(topic, payload, stamp)
        return succeed(b"") if written is None else written.addCallback(lambda _: b"")

    def _seam(self, peer: int, body: bytes) -> Deferred[bytes]:
        return self.persister.settle(None).addCallback(_STAMP.pack)

    def stats(self):
        # The whole server's, the writers' figures added up.
        return self.local.stats()


def _nothing(_) -> None:
    return None


@implementer(IReplaySource)
class WorkerReplaySource:
    """
    Where a worker's replays come from: the files of every owner (one
    directory), each read up to its owner's seam.
    """

    def __init__(self, persister: Persister, mesh, index: int, workers: int) -> None:
        self._persister = persister
        self._mesh = mesh
        self._index = index
        self._workers = workers
        self.seam = persister.seam
        self.flushed = persister.flushed
        self.read = persister.read
        self.read_pattern = persister.read_pattern

    def settle(self, subject) -> Deferred:
        """
        A topic's seam is its owner's; a pattern's topics have each their
        owner's, so every worker is asked.
        """
        workers = self._workers
        if isinstance(subject, str):
            return self._seam_of(owner_of(subject, workers))
        asked = gatherResults([self._seam_of(owner) for owner in range(workers)], consumeErrors=True)
        return asked.addCallbacks(
            lambda seams: Seams(seams, partial(owner_of, workers=workers)), lambda failure: failure.value.subFailure
        )

    def _seam_of(self, owner: int) -> Deferred[int]:
        if owner == self._index:
            return self._persister.settle(None)
        return self._mesh.call(owner, _SEAM, b"").addCallback(lambda body: _STAMP.unpack(body)[0])
