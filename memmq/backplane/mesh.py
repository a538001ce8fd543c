# -*- test-case-name: tests.test_mesh -*-
"""
The backplane between the worker processes of one server (C{--workers}):
a Unix-socket connection from every worker to every other.

Each worker listens on a Unix socket of its own (the parent process made
it and holds it, so that a restarted worker takes over the same one and a
peer that connects meanwhile waits in its backlog); each worker connects to
every other's and sends on that connection only, so every ordered pair of
workers has one stream: what worker A sends B arrives in the order A sent
it, which keeps the order of every publishing connection's messages.

What goes over a stream, as frames of one type byte and a 4-byte length:

    H index count       first: who is sending, and how many I frames
                        follow at once (everything it follows now)
    I subject / i       the sender's subscribers now follow / no longer
                        follow this topic or pattern, outside queue
                        groups or in one (L{interest_frame})
    M message           a message published on the sender, for the
                        receiver's subscribers of its topic: the topic,
                        its persisted stamp (0: none), whether it is for
                        the subscribers outside queue groups, the queue
                        groups the sender chose the receiver for, and the
                        payload (L{message_frame}, L{parse_message})
    S id / R id body    a request for the receiver's figures, and the
                        answer (a pickle: the workers are one program, and
                        the sockets are in a directory only its user can
                        enter)
    C id what body      a call on a service of the receiver's (L{serve}),
                        C{what} a byte naming it; id 0 wants no answer
                        (L{tell}), any other id is answered (L{call})
    Y id ok body        a call's answer: its result, or (ok 0) the pickled
                        L{memmq.errors.MemmqError} it failed with

A message goes to a peer only if that peer said it follows the topic, so a
publish to a topic nobody elsewhere follows costs nothing here.  Frames to a
peer are gathered during a turn of the reactor and written together: a
burst of messages to a peer leaves in one write.

Each worker keeps what every peer follows: exact topics outside groups in a
set per peer (a publish without patterns or groups anywhere is one lookup
per peer, as in NATS's routes), and patterns and queue groups in one
subscription tree (L{memmq.sublist}) whose items are workers, this one's
groups included.  For a message to a topic a queue group reaches, the
worker that took the publish chooses one worker among those holding the
group's matching members (round-robin per group, L{Route}), so the group
gets it once in the whole server (README: Workers).

A peer that stops reading its stream (stopped, or stuck) is not waited
for without end: once its stream is full a peer holds at most L{HOLD}
bytes of messages for it, then drops what would pass that and counts it
(L{MeshBackplane.dropped}); a call carrying a message fails then with
L{BackplaneUnavailable} instead, and interest frames are never dropped.
While its stream is full, queue groups choose among the other workers.

Calls keep their place on the stream: a call sent after an interest frame
or a message is handled after it.  A call to a peer that cannot be reached
both ways (it is being restarted) fails at once, and calls waiting for an
answer from a peer that goes away fail, with L{BackplaneUnavailable}, never
silently.
"""

from __future__ import annotations

import pickle
import socket
import struct

from twisted.internet import error as internet_error
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from memmq.backplane.interface import IBackplane
from memmq.errors import BackplaneUnavailable, MemmqError
from memmq.patterns import Pattern
from memmq.sublist import Sublist

__all__ = ["HOLD", "MeshBackplane", "Route", "interest_frame", "message_frame", "parse_interest", "parse_message"]

_log = Logger()

_HEADER = struct.Struct(">BI")
_TOPIC = struct.Struct(">H")
# stamp, flags, how many groups
_MESSAGE_FIELDS = struct.Struct(">QBB")
_PLAIN = 1
_ID = struct.Struct(">I")
# flags, subject length; then the subject and the group (none if empty)
_SUBJECT = struct.Struct(">BH")
_IS_PATTERN = 1

_HELLO, _ON, _OFF, _MESSAGE, _ASK, _ANSWER, _CALL, _REPLY = b"HIiMSRCY"
# call id, what is called (C) / call id, whether it succeeded (Y)
_CALL_HEAD = struct.Struct(">IB")

# How long a worker waits before connecting again to a peer that went away
# (it is being restarted: the connection waits in the backlog of the socket
# the parent holds).
_RECONNECT = 0.05
# Bytes of messages a worker keeps waiting for a peer whose stream is full
# (it is stopped or stuck): seconds of a busy server's traffic, less than a
# stuck peer would otherwise cost every other worker in memory.
HOLD = 64 * 1024 * 1024

# How long a starting worker waits to learn what its peers follow before it
# serves anyway (a peer that is down, or starting again itself).
SYNC_LIMIT = 3.0


def _frame(kind: int, body: bytes) -> bytes:
    return _HEADER.pack(kind, len(body)) + body


def interest_frame(subject: str | Pattern, on: bool, group: str | None = None) -> bytes:
    """
    The whole frame saying that the sender's subscribers now follow
    (C{on}) or no longer follow C{subject} (a topic or a pattern with
    wildcards), outside queue groups or in C{group}: what
    L{parse_interest} reads back.
    """
    is_pattern = isinstance(subject, Pattern)
    text = (subject.text if is_pattern else subject).encode("utf-8")
    body = _SUBJECT.pack(_IS_PATTERN if is_pattern else 0, len(text)) + text + (group or "").encode("utf-8")
    return _frame(_ON if on else _OFF, body)


def parse_interest(body: bytes) -> tuple[str | Pattern, str | None]:
    """
    (subject, group or None) of an interest frame's body.
    """
    flags, length = _SUBJECT.unpack_from(body)
    text = body[_SUBJECT.size : _SUBJECT.size + length].decode("utf-8")
    group = body[_SUBJECT.size + length :].decode("utf-8") or None
    return (Pattern(text) if flags & _IS_PATTERN else text), group


def message_frame(
    topic: str, payload: bytes, stamp: int | None = None, plain: bool = True, groups: tuple[str, ...] = (),
) -> bytes:
    """
    The whole frame of one message: what L{parse_message} reads back.
    """
    encoded = topic.encode("utf-8")
    parts = [_TOPIC.pack(len(encoded)), encoded, _MESSAGE_FIELDS.pack(stamp or 0, _PLAIN if plain else 0, len(groups))]
    for group in groups:
        name = group.encode("utf-8")
        parts += (_TOPIC.pack(len(name)), name)
    parts.append(payload)
    body = b"".join(parts)
    return _HEADER.pack(_MESSAGE, len(body)) + body


def parse_message(body: bytes) -> tuple[str, bytes, int | None, bool, tuple[str, ...]]:
    """
    (topic, payload, stamp or None, plain, groups) of a message frame's body.
    """
    (length,) = _TOPIC.unpack_from(body)
    offset = _TOPIC.size + length
    topic = body[_TOPIC.size : offset].decode("utf-8")
    stamp, flags, count = _MESSAGE_FIELDS.unpack_from(body, offset)
    offset += _MESSAGE_FIELDS.size
    groups = []
    for _ in range(count):
        (length,) = _TOPIC.unpack_from(body, offset)
        offset += _TOPIC.size
        groups.append(body[offset : offset + length].decode("utf-8"))
        offset += length
    return topic, body[offset:], stamp or None, bool(flags & _PLAIN), tuple(groups)


class _Frames(Protocol):
    """
    Splits a stream into frames; L{frame} gets each.
    """

    _buffer = b""

    def dataReceived(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        offset, size = 0, len(buffer)
        header = _HEADER.size
        unpack = _HEADER.unpack_from
        while size - offset >= header:
            kind, length = unpack(buffer, offset)
            end = offset + header + length
            if end > size:
                break
            self.frame(kind, buffer[offset + header : end])
            offset = end
        self._buffer = buffer[offset:]

    def frame(self, kind: int, body: bytes) -> None:
        raise NotImplementedError


class _Inbound(_Frames):
    """
    A peer's stream to this worker: its interest, its messages, its
    requests and its answers.
    """

    peer: int | None = None

    def __init__(self, mesh: MeshBackplane) -> None:
        self.mesh = mesh

    def frame(self, kind: int, body: bytes) -> None:
        mesh = self.mesh
        if kind == _MESSAGE:
            topic, payload, stamp, plain, groups = parse_message(body)
            mesh.received += 1
            mesh.receiver.received(topic, payload, plain, groups, stamp)
        elif kind == _ON or kind == _OFF:
            subject, group = parse_interest(body)
            mesh._peer_interest(self.peer, subject, kind == _ON, group)
        elif kind == _HELLO:
            peer, count = body.split()
            self.peer = int(peer)
            mesh._inbound_from(self.peer, self, int(count))
        elif kind == _ASK:
            mesh._answer(self.peer, body)
        elif kind == _ANSWER:
            (ident,) = _ID.unpack_from(body)
            mesh._answered(self.peer, ident, pickle.loads(body[_ID.size :]))
        elif kind == _CALL:
            ident, what = _CALL_HEAD.unpack_from(body)
            mesh._called(self.peer, ident, what, body[_CALL_HEAD.size :])
        elif kind == _REPLY:
            ident, ok = _CALL_HEAD.unpack_from(body)
            mesh._replied(ident, ok, body[_CALL_HEAD.size :])

    def connectionLost(self, reason=None) -> None:
        if self.peer is not None:
            self.mesh._inbound_lost(self.peer, self)


class _Outbound(Protocol):
    """
    This worker's stream to a peer.
    """

    def __init__(self, link: _Link) -> None:
        self.link = link

    def connectionMade(self) -> None:
        self.link._connected(self)

    def connectionLost(self, reason=None) -> None:
        self.link._lost(self)


@implementer(IPushProducer)
class _Link(ClientFactory):
    """
    The connection to one peer, made again whenever it is lost; the
    producer of its stream, paused while the peer does not read it.

    @ivar full: whether the stream is full (the peer reads slower than it
        is written to, or not at all).
    @ivar dropped: messages dropped for the peer, once L{HOLD} bytes of
        them were waiting on a full stream.
    """

    noisy = False

    def __init__(self, mesh: MeshBackplane, peer: int, path: str) -> None:
        self.mesh = mesh
        self.peer = peer
        self.path = path
        self.transport = None
        self.connects = 0
        self.full = False
        self.dropped = 0
        # Bytes of messages written since the stream became full.
        self._held = 0
        # Frames written in this reactor turn, sent together at its end.
        self._pending: list[bytes] = []

    def send(self, frame: bytes, message: bool = False) -> bool:
        """
        Queue C{frame} for this turn's write to the peer. Return whether
        it was: not if the peer is not connected, nor, for a C{message},
        if the stream is full and L{HOLD} bytes of messages wait already.
        """
        if self.transport is None:
            return False
        if message and self.full:
            if self._held + len(frame) > HOLD:
                return False
            self._held += len(frame)
        pending = self._pending
        if not pending:
            self.mesh._reactor.callLater(0, self._flush)
        pending.append(frame)
        return True

    def pauseProducing(self) -> None:
        self.full = True

    def resumeProducing(self) -> None:
        self.full = False
        self._held = 0

    def stopProducing(self) -> None:
        self.full = False

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        if pending and self.transport is not None:
            self.transport.write(b"".join(pending))

    def buildProtocol(self, addr):
        return _Outbound(self)

    def connect(self) -> None:
        self.mesh._reactor.connectUNIX(self.path, self, timeout=5)

    def _connected(self, protocol: _Outbound) -> None:
        self.transport = protocol.transport
        self.transport.registerProducer(self, True)
        self.connects += 1
        interest = self.mesh._interest
        self.send(_frame(_HELLO, b"%d %d" % (self.mesh.index, len(interest))))
        for subject, group in interest:
            self.send(interest_frame(subject, True, group))
        self.mesh._sync()

    def _lost(self, protocol: _Outbound) -> None:
        self.transport = None
        self.resumeProducing()
        self._pending = []
        self.mesh._calls_lost(self.peer)
        self._again()

    def clientConnectionFailed(self, connector, reason) -> None:
        self._again()

    def _again(self) -> None:
        if self.mesh.running:
            self.mesh._reactor.callLater(_RECONNECT, self.connect)


class _Holder:
    """
    A worker, as the subscription tree of L{MeshBackplane} holds it: an
    item that says whether a queue group's message can be sent to it.
    """

    __slots__ = ("index", "link")

    def __init__(self, index: int, link: _Link | None) -> None:
        self.index = index
        self.link = link

    def __repr__(self) -> str:
        return f"<worker {self.index}>"

    def has_room(self) -> bool:
        # This worker always; a peer while it is connected and reads.
        link = self.link
        return link is None or (link.transport is not None and not link.full)


class Route:
    """
    Where one message published on this worker goes, when patterns or queue
    groups are followed somewhere (L{MeshBackplane.route}).

    @ivar local: the queue groups of this worker chosen for it: its own
        delivery gives it to one member of each of these, and of no other.
    @ivar plain: the peers whose subscribers outside groups get it.
    @ivar chosen: peer -> the queue groups chosen for it.
    """

    __slots__ = ("local", "plain", "chosen")

    def __init__(self, local: tuple[str, ...], plain: set[int], chosen: dict[int, list[str]]) -> None:
        self.local = local
        self.plain = plain
        self.chosen = chosen


@implementer(IBackplane)
class MeshBackplane:
    """
    One worker's side of the mesh.

    @param index: this worker's number, from 0.
    @param paths: every worker's socket path, by number (this one's too).
    @param listening: the file descriptor of this worker's own listening
        socket, made and held by the parent.
    @ivar sent: messages written to peers (one per peer per message).
    @ivar received: messages that came from peers.
    """

    def __init__(self, reactor, index: int, paths: list[str], listening: int) -> None:
        self._reactor = reactor
        self.index = index
        self.paths = paths
        self._listening = listening
        self.receiver = None
        self.running = False
        self.sent = 0
        self.received = 0
        # (subject, group) this worker's subscribers follow
        self._interest: set[tuple[str | Pattern, str | None]] = set()
        self._links = {peer: _Link(self, peer, path) for peer, path in enumerate(paths) if peer != index}
        # peer -> the exact topics its subscribers outside groups follow
        self._peers: dict[int, set[str]] = {}
        # The patterns and queue groups followed by the peers, and this
        # worker's queue groups, by worker; consulted only while
        # C{_matching} is set, so that a server without any pays nothing.
        self._tree: Sublist[_Holder] = Sublist()
        self._matching: Sublist[_Holder] | None = None
        self._holders = {peer: _Holder(peer, self._links.get(peer)) for peer in range(len(paths))}
        # worker -> the (subject, group) it holds in the tree
        self._held: dict[int, set[tuple[str | Pattern, str | None]]] = {}
        # peer -> how many I frames of its first dump are still to come
        self._unsynced: dict[int, int] = {}
        self._synced: Deferred | None = None
        self._inbound: dict[int, _Inbound] = {}
        self._port = None
        self._asked: dict[int, tuple[Deferred, dict[int, object], set[int]]] = {}
        self._next_ask = 0
        #: answers this worker's figures when a peer asks: set by the owner
        self.figures = lambda: None
        # what -> the service a peer's call reaches (see serve)
        self._services: dict[int, object] = {}
        # call id -> (peer, Deferred of its answer)
        self._calls: dict[int, tuple[int, Deferred]] = {}
        self._next_call = 0
        #: how long stop() waits for the peers to close their streams to
        #: this worker (what they sent last is read first); 0: not at all
        self.drain = 0.0
        self._drained: Deferred | None = None

    @property
    def healthy(self) -> bool:
        # A peer that is down has no subscribers (they were its
        # connections): delivering to the others is delivering to all.
        return self.running

    def start(self, receiver) -> Deferred[None]:
        """
        Join the mesh; fire once every peer has said what it follows (so
        that a message published here reaches them at once) and this worker
        has said hello to every peer (so that its figures are asked for),
        or after L{SYNC_LIMIT} seconds for those that have not.
        """
        self.receiver = receiver
        self.running = True
        factory = Factory.forProtocol(lambda: _Inbound(self))
        factory.noisy = False
        self._port = self._reactor.adoptStreamPort(self._listening, socket.AF_UNIX, factory)
        for link in self._links.values():
            link.connect()
        if not self._links:
            return succeed(None)
        synced = self._synced = Deferred()
        synced.addTimeout(SYNC_LIMIT, self._reactor, onTimeoutCancel=lambda result, timeout: None)
        return synced

    def _sync(self) -> None:
        synced = self._synced
        if synced is not None and not synced.called and all(
            self._unsynced.get(peer, 1) == 0 and link.transport is not None for peer, link in self._links.items()
        ):
            self._synced = None
            synced.callback(None)

    def stop(self) -> Deferred[None]:
        self.running = False
        synced, self._synced = self._synced, None
        if synced is not None and not synced.called:
            synced.callback(None)
        for link in self._links.values():
            if link.transport is not None:
                link._flush()
                link.transport.loseConnection()
        for peer in list(self._links):
            self._calls_lost(peer)
        port, self._port = self._port, None
        stopped = succeed(None) if port is None else maybeDeferred(port.stopListening)
        if not (self.drain and self._inbound):
            return stopped
        # Each peer closes its stream once it has stopped taking work: what
        # it sent before is read and handled before this worker goes.
        self._drained = Deferred()
        self._drained.addTimeout(self.drain, self._reactor).addErrback(lambda f: None)
        return stopped.addCallback(lambda _: self._drained)

    def interest(self, subject, on: bool, group: str | None = None) -> None:
        if isinstance(subject, Pattern) and subject.is_literal:
            subject = subject.text
        if on:
            self._interest.add((subject, group))
        else:
            self._interest.discard((subject, group))
        if group is not None:
            # Chosen among the workers with members, this one included.
            self._hold(self.index, subject, on, group)
        frame = interest_frame(subject, on, group)
        for link in self._links.values():
            link.send(frame)

    def route(self, topic: str) -> Route | None:
        """
        Where a message to C{topic} published here goes: L{None} when no
        worker follows a pattern or has a queue group (every peer that
        follows the topic gets it, for its subscribers outside groups);
        else a L{Route}, choosing for each queue group the topic reaches
        one worker among those with members it reaches.  Call once per
        message: each call moves the groups' round-robin on.
        """
        matching = self._matching
        if matching is None:
            return None
        matches = matching.match(topic)
        plain = {holder.index for holder in matches.plain}
        for peer, follows in self._peers.items():
            if topic in follows:
                plain.add(peer)
        local: list[str] = []
        chosen: dict[int, list[str]] = {}
        for queue, holders in matches.groups:
            holder = queue.choose(holders)
            if holder is None:
                continue  # every worker with members is unreachable
            if holder.index == self.index:
                local.append(queue.name)
            else:
                chosen.setdefault(holder.index, []).append(queue.name)
        return Route(tuple(local), plain, chosen)

    def publish(
        self, topic: str, payload: bytes, hops: int = 0, stamp: int | None = None, route: Route | None = None,
    ) -> Deferred[None]:
        if route is None and self._matching is not None:
            # A caller that delivers to every local group itself.
            route = self.route(topic)
        if route is None:
            frame = None
            peers = self._peers
            for peer, link in self._links.items():
                follows = peers.get(peer)
                if follows and topic in follows and link.transport is not None:
                    if frame is None:
                        frame = message_frame(topic, payload, stamp)
                    self._count(link.send(frame, message=True), link)
            return succeed(None)
        plain, chosen = route.plain, route.chosen
        for peer, link in self._links.items():
            groups = chosen.get(peer, ())
            if (groups or peer in plain) and link.transport is not None:
                self._count(link.send(message_frame(topic, payload, stamp, peer in plain, tuple(groups)), True), link)
        return succeed(None)

    def _count(self, sent: bool, link: _Link) -> None:
        if sent:
            self.sent += 1
        else:
            link.dropped += 1

    @property
    def dropped(self) -> int:
        """
        Messages dropped for peers that did not read their streams (see
        L{HOLD}).
        """
        return sum(link.dropped for link in self._links.values())

    def remote_topics(self, topic: str) -> int:
        """
        How many peers follow C{topic} now (exactly, outside groups).
        """
        return sum(1 for follows in self._peers.values() if topic in follows)

    def remote_subjects(self) -> int:
        """
        How many (pattern or topic, group) pairs the peers follow in the
        subscription tree now: their patterns and queue groups.
        """
        return sum(len(held) for worker, held in self._held.items() if worker != self.index)

    # Figures of the whole server.

    def gather(self, timeout: float = 1.0) -> Deferred[dict[int, object]]:
        """
        Ask every peer for its figures; fire with peer -> figures for those
        that answered within C{timeout} seconds.
        """
        asking = {peer for peer, link in self._links.items() if link.transport is not None and peer in self._inbound}
        answers: dict[int, object] = {}
        if not asking:
            return succeed(answers)
        ident = self._next_ask = self._next_ask + 1
        d: Deferred = Deferred()
        self._asked[ident] = (d, answers, asking)
        frame = _frame(_ASK, _ID.pack(ident))
        for peer in asking:
            self._links[peer].send(frame)

        def late():
            if ident in self._asked:
                del self._asked[ident]
                d.callback(answers)

        call = self._reactor.callLater(timeout, late)
        d.addBoth(lambda result: (call.active() and call.cancel(), result)[1])
        return d

    def _answer(self, peer: int | None, body: bytes) -> None:
        link = self._links.get(peer) if peer is not None else None
        if link is not None and link.transport is not None:
            link.send(_frame(_ANSWER, body + pickle.dumps(self.figures(), pickle.HIGHEST_PROTOCOL)))

    def _answered(self, peer: int | None, ident: int, figures) -> None:
        asked = self._asked.get(ident)
        if asked is None or peer is None:
            return
        d, answers, asking = asked
        answers[peer] = figures
        asking.discard(peer)
        if not asking:
            del self._asked[ident]
            d.callback(answers)

    # Calls on the peers' services.

    def serve(self, what: bytes, service, message: bool = False) -> None:
        """
        Have the peers' calls of C{what} (one byte) reach C{service(peer,
        body)}, which returns the answer's bytes (or a Deferred of them),
        or raises a L{MemmqError} that the caller's call fails with.
        C{message}: each call carries a message (counted in L{received}).
        """
        self._services[what[0]] = (service, message)

    def reachable(self, peer: int) -> bool:
        """
        Whether C{peer} is connected both ways: a call to it can be
        answered (a peer being restarted is not).
        """
        link = self._links.get(peer)
        return link is not None and link.transport is not None and peer in self._inbound

    def tell(self, peer: int, what: bytes, body: bytes, message: bool = False) -> None:
        """
        Call C{what} on C{peer} wanting no answer, in order after whatever
        was sent to it before; C{message}: it carries a message (counted in
        L{sent}). @raise BackplaneUnavailable: the peer cannot be reached,
        or, for a message, has left L{HOLD} bytes of them unread.
        """
        self._send_call(peer, 0, what, body, message)

    def call(self, peer: int, what: bytes, body: bytes, message: bool = False) -> Deferred[bytes]:
        """
        Call C{what} on C{peer}, in order after whatever was sent to it
        before; fire with its answer, or fail with the L{MemmqError} it
        failed with, or with L{BackplaneUnavailable} if the peer cannot be
        reached (or, for a message, has left L{HOLD} bytes of them unread)
        or goes away first.
        """
        self._next_call = ident = self._next_call % 0xFFFFFFFF + 1
        try:
            self._send_call(peer, ident, what, body, message)
        except BackplaneUnavailable:
            return fail()
        d: Deferred[bytes] = Deferred()
        self._calls[ident] = (peer, d)
        return d

    def _send_call(self, peer: int, ident: int, what: bytes, body: bytes, message: bool) -> None:
        if not self.reachable(peer):
            raise BackplaneUnavailable(f"worker {peer} of this server cannot be reached (restarting?)")
        if not self._links[peer].send(_frame(_CALL, _CALL_HEAD.pack(ident, what[0]) + body), message):
            raise BackplaneUnavailable(f"worker {peer} of this server is not reading what it is sent (stopped?)")
        if message:
            self.sent += 1

    def _called(self, peer: int | None, ident: int, what: int, body: bytes) -> None:
        served = self._services.get(what)
        if peer is None or served is None:
            raise internet_error.ConnectionLost(f"a call of {what!r} this worker does not serve")
        service, message = served
        if message:
            self.received += 1
        result = maybeDeferred(service, peer, body)
        if ident:
            result.addCallbacks(self._reply, self._reply_failure, callbackArgs=(peer, ident), errbackArgs=(peer, ident))
        else:
            result.addErrback(lambda f: _log.failure("worker {peer}'s call failed", f, peer=peer))

    def _reply(self, answer: bytes, peer: int, ident: int) -> None:
        link = self._links.get(peer)
        if link is not None:
            link.send(_frame(_REPLY, _CALL_HEAD.pack(ident, 1) + answer))

    def _reply_failure(self, failure, peer: int, ident: int) -> None:
        error = failure.value
        if not isinstance(error, MemmqError):
            _log.failure("worker {peer}'s call failed", failure, peer=peer)
            error = MemmqError(f"worker {self.index} failed: {failure.getErrorMessage()}")
        link = self._links.get(peer)
        if link is not None:
            link.send(_frame(_REPLY, _CALL_HEAD.pack(ident, 0) + pickle.dumps(error, pickle.HIGHEST_PROTOCOL)))

    def _replied(self, ident: int, ok: int, body: bytes) -> None:
        waiting = self._calls.pop(ident, None)
        if waiting is None:
            return
        d = waiting[1]
        if ok:
            d.callback(body)
        else:
            d.errback(pickle.loads(body))

    def _calls_lost(self, peer: int) -> None:
        for ident, (to, d) in list(self._calls.items()):
            if to == peer:
                del self._calls[ident]
                d.errback(BackplaneUnavailable(f"worker {peer} of this server went away before answering"))

    # The peers' streams.

    def _peer_interest(self, peer: int | None, subject: str | Pattern, on: bool, group: str | None) -> None:
        if peer is None:
            raise internet_error.ConnectionLost("a peer sent before saying who it is")
        if group is None and isinstance(subject, str):
            follows = self._peers.setdefault(peer, set())
            if on:
                follows.add(subject)
            else:
                follows.discard(subject)
        else:
            self._hold(peer, subject, on, group)
        left = self._unsynced.get(peer)
        if left:
            self._unsynced[peer] = left - 1
            if left == 1:
                self._sync()

    def _hold(self, worker: int, subject: str | Pattern, on: bool, group: str | None) -> None:
        """
        Worker C{worker} follows, or no longer follows, a pattern or holds
        members of a queue group: the tree says so.
        """
        held = self._held.setdefault(worker, set())
        key = (subject, group)
        if on and key not in held:
            held.add(key)
            self._tree.insert(subject, self._holders[worker], group)
        elif not on and key in held:
            held.discard(key)
            self._tree.remove(subject, self._holders[worker], group)
        self._matching = self._tree if len(self._tree) else None

    def _forget(self, peer: int) -> None:
        """
        Everything C{peer} followed is gone (its connection was).
        """
        self._peers.pop(peer, None)
        for subject, group in list(self._held.get(peer, ())):
            self._hold(peer, subject, False, group)

    def _inbound_from(self, peer: int, protocol: _Inbound, count: int = 0) -> None:
        old = self._inbound.get(peer)
        self._inbound[peer] = protocol
        self._forget(peer)
        self._peers[peer] = set()
        self._unsynced[peer] = count
        if not count:
            self._sync()
        if old is not None and old.transport is not None:
            old.transport.loseConnection()

    def _inbound_lost(self, peer: int, protocol: _Inbound) -> None:
        if self._inbound.get(peer) is not protocol:
            return
        del self._inbound[peer]
        self._forget(peer)
        self._calls_lost(peer)
        if self._drained is not None and not self._inbound and not self._drained.called:
            self._drained.callback(None)
        for ident, (d, answers, asking) in list(self._asked.items()):
            if peer in asking:
                asking.discard(peer)
                if not asking:
                    del self._asked[ident]
                    d.callback(answers)
