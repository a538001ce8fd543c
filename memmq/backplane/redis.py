# -*- test-case-name: tests.test_backplane_redis -*-
"""
The backplane between memmq nodes behind one load balancer: Redis pub/sub
(README: Redis backplane). This is the reactor's side; the connections to
Redis live on an asyncio loop in a thread of their own
(L{memmq.backplane.redislink}).

Each node subscribes in Redis to the channels of exactly the topics (and
patterns) its own subscribers follow, announces them to the other nodes
(L{memmq.backplane.interest}), and publishes an accepted message to its
topic's channel only when another node follows it; what arrives from Redis
goes to local subscribers only. A channel is C{prefix + topic}; a message
is a one-line header (this node's id and the message's hops) and the
payload, so that a node drops its own publications when Redis hands them
back. A message without the header (published into Redis by something
else) is delivered as it is.

The client is redis-py's C{redis.asyncio} on the loop of a
L{memmq.rpc.bridge.LoopThread}, as the gRPC side runs: the reactor thread
alone touches the broker, and the two sides trade calls in batches. On a
Redis Cluster (C{cluster_enabled:1}) messages go by sharded pub/sub
(C{SPUBLISH}/C{SSUBSCRIBE}, Redis 7), elsewhere by plain pub/sub.

While the link is down publishes are refused (L{BackplaneUnavailable}); the
link reconnects with backoff, subscribes again to everything, and counts and
logs each loss (at most one line per interval).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import re
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from zope.interface import implementer

from memmq.backplane.interest import RemoteInterest, parse_announcement
from memmq.backplane.interface import IBackplane, IBackplaneReceiver
from memmq.backplane.redislink import TIMEOUT, RedisLink, reason
from memmq.errors import BackplaneUnavailable, MemmqError
from memmq.patterns import MANY, ONE, Pattern
from memmq.rpc.bridge import LoopThread

__all__ = ["RedisBackplane", "RedisTarget", "parse_redis_url", "redis_glob"]

_log = Logger()

PASSWORD_ENVIRONMENT = "MEMMQ_BACKPLANE_PASSWORD"

# The header of a message on the wire: b"memmq1 <16 hex> <hops>\n".
_MAGIC = b"memmq1 "
_NODE_LENGTH = 16
_HEADER = len(_MAGIC) + _NODE_LENGTH + 1

# After each (re)connection, publishes go to Redis whatever the others'
# interest, until their announcements have had time to arrive.
_WARM_UP = 1.0
# At most one warning per this many seconds about the link.
_WARN_INTERVAL = 10.0


@dataclass(frozen=True)
class RedisTarget:
    """
    Where the backplane's Redis is and how to reach it, parsed from
    C{--backplane} and its companions.
    """

    url: str
    host: str
    port: int
    tls: bool
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    prefix: str = "memmq:"

    @property
    def where(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://{self.host}:{self.port}"


def parse_redis_url(url: str, password: str | None = None, **tls) -> RedisTarget:
    """
    A C{redis://[user@]host[:port][/db]} or C{rediss://...} URL. A password
    in the URL is refused: a command line is seen by every user of the
    machine (C{ps}); it comes from a file or the environment instead.

    @raise MemmqError: the URL is not such a URL; the message says why.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise MemmqError(f"--backplane: {url!r} is not a redis:// or rediss:// URL")
    if parts.password is not None:
        raise MemmqError(
            "--backplane: no password in the URL (anyone can read a command line); use "
            f"--backplane_password_file or {PASSWORD_ENVIRONMENT}"
        )
    try:
        port = parts.port or 6379
    except ValueError:
        raise MemmqError(f"--backplane: {url!r} has a bad port") from None
    if not parts.hostname:
        raise MemmqError(f"--backplane: {url!r} names no host")
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise MemmqError(f"--backplane: {url!r}: the path is a database number, if anything")
    if parts.query or parts.fragment:
        raise MemmqError(f"--backplane: {url!r}: no query or fragment expected")
    return RedisTarget(
        url=url, host=parts.hostname, port=port, tls=parts.scheme == "rediss", db=int(path or 0),
        username=unquote(parts.username) if parts.username else None, password=password, **tls,
    )


def redis_glob(pattern: Pattern, prefix: str) -> str:
    """
    The Redis glob a pattern's channel is subscribed with: every wildcard
    token becomes C{*} and every other character is itself (escaped). Redis's
    C{*} also crosses dots, so the glob matches a little more than the
    pattern; the local broker delivers only what the pattern matches.
    """
    escaped = [
        "*" if token in (ONE, MANY) else re.sub(r"([\\*?\[\]])", r"\\\1", token) for token in pattern.tokens
    ]
    return re.sub(r"([\\*?\[\]])", r"\\\1", prefix) + ".".join(escaped)


def encode(node: bytes, hops: int, payload: bytes) -> bytes:
    return b"%s%s %d\n%s" % (_MAGIC, node, hops, payload)


def decode(data: bytes) -> tuple[bytes | None, int, bytes]:
    """
    (node id, hops, payload) of a message from Redis; a message without
    memmq's header is a payload from elsewhere: (None, 0, data).
    """
    if data.startswith(_MAGIC):
        end = data.find(b"\n", _HEADER)
        if end > 0 and data[_HEADER - 1:_HEADER] == b" ":
            hops = data[_HEADER:end]
            if hops.isdigit():
                return data[len(_MAGIC):_HEADER - 1], int(hops), data[end + 1:]
    return None, 0, data


@implementer(IBackplane)
class RedisBackplane:
    """
    An L{IBackplane} over one Redis server or cluster.

    @param target: where Redis is (L{parse_redis_url}).
    @param optional: when Redis cannot be reached at start, serve locally
        (and join once it can) rather than refuse to start.
    @ivar healthy: whether publishes are taken: the link is up, or it has
        never been up on an optional backplane (serving locally).
    @ivar state: C{"up"}, C{"down"} (lost; publishes refused) or
        C{"local"} (optional, never connected yet).
    @ivar losses: how many times the link was lost after being up.
    """

    def __init__(self, target: RedisTarget, reactor=None, optional: bool = False) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.target = target
        self.optional = optional
        self.node = os.urandom(_NODE_LENGTH // 2).hex().encode("ascii")
        self._reactor = reactor
        self._thread = LoopThread(reactor, "memmq-backplane")
        self._receiver: IBackplaneReceiver | None = None
        self.state = "down"
        self.cluster = False
        self.losses = 0
        self.sent = 0
        self.received = 0
        self.echoes = 0
        self._last_warning = -_WARN_INTERVAL
        self.skipped = 0
        self.remote = RemoteInterest()
        self._send_all_until = 0.0
        self._link: RedisLink | None = None
        self._pending: list[tuple[str, bytes]] = []

    @property
    def healthy(self) -> bool:
        return self.state != "down"

    def problem(self) -> tuple[int, str] | None:
        """
        What C{/health} says of the backplane: None while up; else the
        status (503 while publishes are refused, 200 while serving
        locally) and one line.
        """
        if self.state == "up":
            return None
        if self.state == "local":
            return 200, f"degraded: serving locally, Redis at {self.target.where} not reached yet"
        return 503, f"degraded: Redis at {self.target.where} unreachable, publishes refused"

    def connect_now(self, timeout: float = TIMEOUT) -> None:
        """
        Connect before the reactor runs (at start-up), blocking: the
        process refuses to start with one line when Redis cannot be
        reached, unless the backplane is optional.

        @raise MemmqError: Redis could not be reached and the backplane is
            not optional.
        """
        self._thread.start()
        self._link = RedisLink(self.target, self.node, self._thread, self)
        future = asyncio.run_coroutine_threadsafe(self._link.connect(), self._thread.loop)
        try:
            self.cluster = future.result(timeout + 1)
        except (concurrent.futures.TimeoutError, Exception) as e:
            why = "timed out" if isinstance(e, concurrent.futures.TimeoutError) else reason(e)
            if not self.optional:
                raise MemmqError(f"--backplane: cannot reach Redis at {self.target.where}: {why}") from None
            _log.warn(
                "backplane: cannot reach Redis at {where} ({reason}); serving locally until it can "
                "(--backplane_optional)", where=self.target.where, reason=why,
            )
            self.state = "local"
        else:
            self.state = "up"
            self._send_all_until = self._reactor.seconds() + _WARM_UP
            _log.info(
                "backplane: connected to Redis at {where} ({kind} pub/sub)",
                where=self.target.where, kind="sharded" if self.cluster else "plain",
            )

    # IBackplane

    def start(self, receiver: IBackplaneReceiver) -> Deferred[None]:
        self._receiver = receiver
        if self._link is None:
            try:
                self.connect_now()
            except MemmqError:
                return fail()
        link = self._link
        self._thread.to_loop.call(lambda: self._thread.loop.create_task(link.run(self.state == "up")))
        return succeed(None)

    def interest(self, subject, on: bool, group: str | None = None) -> None:
        # Queue groups are per node: a member is one more local interest
        # in the same channel (the broker counts them apart).
        link = self._link
        if link is None:
            return
        if isinstance(subject, Pattern) and not subject.is_literal:
            self._thread.to_loop.call(link.interest, True, redis_glob(subject, self.target.prefix), on)
        else:
            topic = subject.text if isinstance(subject, Pattern) else subject
            self._thread.to_loop.call(link.interest, False, self.target.prefix + topic, on)

    def route(self, topic: str) -> None:
        # Queue groups are per node: every local one gets its message.
        return None

    def publish(
        self, topic: str, payload: bytes, hops: int = 0, stamp: int | None = None, route: None = None,
    ) -> Deferred[None]:
        state = self.state
        if state == "down":
            return fail(BackplaneUnavailable(f"Redis at {self.target.where} unreachable; not published"))
        if state == "local":
            return succeed(None)
        channel = self.target.prefix + topic
        if not self.remote.wants(channel) and self._reactor.seconds() >= self._send_all_until:
            # Nobody elsewhere follows it: nothing to send.
            self.skipped += 1
            return succeed(None)
        self.sent += 1
        pending = self._pending
        pending.append((channel, encode(self.node, hops, payload)))
        if len(pending) == 1:
            # One crossing per reactor turn, whatever it published.
            self._reactor.callLater(0, self._flush)
        return succeed(None)

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        if pending and self._link is not None:
            self._thread.to_loop.call(self._link.send, pending)

    def stop(self) -> Deferred[None]:
        self._flush()
        link = self._link
        return self._thread.stop(link.close if link is not None else None)

    # From the link, on the reactor.

    def _received(self, topic: str, data: bytes) -> None:
        node, hops, payload = decode(data)
        if node == self.node:
            self.echoes += 1
            return
        self.received += 1
        if self._receiver is not None:
            self._receiver.received(topic, payload)

    def _control(self, data: bytes) -> None:
        said = parse_announcement(data)
        if said is None or said[0] == self.node:
            return
        node, op, channels, globs = said
        self.remote.apply(node, op, channels, globs, self._reactor.seconds())
        if op == "hello" and self._link is not None:
            self._thread.to_loop.call(self._link.announce_state)

    def _up(self, cluster: bool) -> None:
        was = self.state
        self.state = "up"
        self._send_all_until = self._reactor.seconds() + _WARM_UP
        self.cluster = cluster
        if was == "down":
            _log.info("backplane: Redis at {where} back after {losses} loss(es); subscribed again",
                      where=self.target.where, losses=self.losses)
        elif was == "local":
            _log.info("backplane: connected to Redis at {where}; no longer local only", where=self.target.where)

    def _down(self, reason: str) -> None:
        if self.state == "up":
            self.losses += 1
            self.state = "down"
        now = self._reactor.seconds()
        if now - self._last_warning >= _WARN_INTERVAL:
            self._last_warning = now
            _log.warn(
                "backplane: Redis at {where} lost ({reason}); publishes refused until it is back "
                "({losses} loss(es) so far)", where=self.target.where, reason=reason, losses=self.losses,
            )
