# -*- test-case-name: tests.test_backplane_redis -*-
"""
The backplane between memmq nodes behind one load balancer: Redis pub/sub
(README: Redis backplane).

Each node subscribes in Redis to the channels of exactly the topics (and
patterns) its own subscribers follow, and publishes every accepted message
to its topic's channel; what arrives from Redis goes to local subscribers
only. A channel is C{prefix + topic}; a message is a one-line header (this
node's id and the message's hops) and the payload, so that a node drops its
own publications when Redis hands them back (it is subscribed to the
channel whenever it has a local subscriber, which had the message already).
A message without the header (published into Redis by something else) is
delivered as it is.

The client is redis-py's C{redis.asyncio}, on an asyncio loop in a thread of
its own (L{memmq.rpc.bridge.LoopThread}, as the gRPC side runs): the reactor
thread alone touches the broker, and the two sides trade calls in batches.
On a Redis Cluster (C{cluster_enabled:1}) messages go by sharded pub/sub
(C{SPUBLISH}/C{SSUBSCRIBE}, Redis 7), each channel on its shard; elsewhere by
plain C{PUBLISH}/C{SUBSCRIBE}. Patterns use C{PSUBSCRIBE}, which Redis has
for plain pub/sub only.

While the link is down publishes are refused (L{BackplaneUnavailable}); the
link reconnects with backoff, subscribes again to everything, and counts and
logs each loss (at most one line per interval).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import re
import ssl
from collections import deque
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from zope.interface import implementer

from memmq.backplane.interface import IBackplane, IBackplaneReceiver
from memmq.client.transport import backoff
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

# Messages handed to Redis in one command or pipeline at most.
_BATCH = 1024
# Publishes a batch (channel, message, channel, message...) in order.
_PUBLISH_SCRIPT = "for i = 1, #ARGV, 2 do redis.call('PUBLISH', ARGV[i], ARGV[i + 1]) end return #ARGV / 2"
# How long a connection attempt, a command or a ping may take.
_TIMEOUT = 5.0
# Seconds between pings while nothing else shows the link is alive.
_PING_INTERVAL = 1.0
# Reconnection backoff: first wait and longest wait, in seconds.
_RETRY_FIRST, _RETRY_MAX = 0.2, 5.0
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


def _glob_regex(glob: str) -> re.Pattern:
    """
    What C{redis_glob}'s globs match, as Redis matches them.
    """
    out, i = [], 0
    while i < len(glob):
        c = glob[i]
        if c == "\\" and i + 1 < len(glob):
            out.append(re.escape(glob[i + 1]))
            i += 2
            continue
        out.append(".*" if c == "*" else re.escape(c))
        i += 1
    return re.compile("".join(out), re.DOTALL)


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
        self._link: _Link | None = None
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

    def connect_now(self, timeout: float = _TIMEOUT) -> None:
        """
        Connect before the reactor runs (at start-up), blocking: the
        process refuses to start with one line when Redis cannot be
        reached, unless the backplane is optional.

        @raise MemmqError: Redis could not be reached and the backplane is
            not optional.
        """
        self._thread.start()
        self._link = _Link(self.target, self.node, self._thread, self)
        future = asyncio.run_coroutine_threadsafe(self._link.connect(), self._thread.loop)
        try:
            self.cluster = future.result(timeout + 1)
        except (concurrent.futures.TimeoutError, Exception) as e:
            reason = _reason(e)
            if not self.optional:
                raise MemmqError(f"--backplane: cannot reach Redis at {self.target.where}: {reason}") from None
            _log.warn(
                "backplane: cannot reach Redis at {where} ({reason}); serving locally until it can "
                "(--backplane_optional)", where=self.target.where, reason=reason,
            )
            self.state = "local"
        else:
            self.state = "up"
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
            self._thread.to_loop.call(link.interest, "pattern", redis_glob(subject, self.target.prefix), on)
        else:
            topic = subject.text if isinstance(subject, Pattern) else subject
            self._thread.to_loop.call(link.interest, "channel", self.target.prefix + topic, on)

    def publish(self, topic: str, payload: bytes, hops: int = 0) -> Deferred[None]:
        state = self.state
        if state == "down":
            return fail(BackplaneUnavailable(f"Redis at {self.target.where} unreachable; not published"))
        if state == "local":
            return succeed(None)
        self.sent += 1
        pending = self._pending
        pending.append((self.target.prefix + topic, encode(self.node, hops, payload)))
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

    def _up(self, cluster: bool) -> None:
        was = self.state
        self.state = "up"
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


def _reason(e: BaseException) -> str:
    if isinstance(e, (concurrent.futures.TimeoutError, asyncio.TimeoutError, TimeoutError)):
        return "timed out"
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


class _Link:
    """
    The loop's side: the connections to Redis, the channels subscribed,
    and the messages waiting to be published. Runs on the loop only.
    """

    def __init__(self, target: RedisTarget, node: bytes, thread: LoopThread, owner: RedisBackplane) -> None:
        self.target = target
        self.node = node
        self._thread = thread
        self._owner = owner
        self._to_reactor = thread.to_reactor.call
        # what this node follows: channel -> how many subjects want it;
        # glob -> its regex
        self.channels: dict[bytes, int] = {}
        self.globs: dict[bytes, re.Pattern] = {}
        self._glob_counts: dict[bytes, int] = {}
        self._outbox: deque[tuple[bytes, bytes]] = deque()
        self._wake = asyncio.Event()
        self._client = None
        self._pubsub = None
        # the SHA1 of the loaded _PUBLISH_SCRIPT, or None to pipeline
        self._script: str | None = None
        self.cluster = False
        self._connected = False
        self._closing = False
        self._changes: deque[tuple[str, bytes, bool]] = deque()

    # Building the client.

    def _options(self) -> dict:
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        target = self.target
        options = dict(
            host=target.host, port=target.port, username=target.username, password=target.password,
            socket_timeout=None, socket_connect_timeout=_TIMEOUT, decode_responses=False,
            # The link retries, resubscribes and counts its losses itself.
            retry=Retry(NoBackoff(), 0),
        )
        if target.tls:
            options.update(ssl=True, ssl_ca_certs=target.ca_file, ssl_cert_reqs=ssl.CERT_REQUIRED,
                           ssl_certfile=target.cert_file, ssl_keyfile=target.key_file)
        return options

    async def connect(self) -> bool:
        """
        Connect, learn whether Redis is a cluster, and subscribe to every
        channel and pattern this node follows. @return: whether it is a
        cluster.
        """
        from redis.asyncio import Redis
        from redis.asyncio.cluster import RedisCluster
        from redis.exceptions import ResponseError

        options = self._options()
        client = Redis(db=self.target.db, **options)
        try:
            info = await asyncio.wait_for(client.info("cluster"), _TIMEOUT)
            cluster = bool(info.get("cluster_enabled"))
            if cluster:
                await client.aclose()
                client = RedisCluster(**options)
                await asyncio.wait_for(client.initialize(), _TIMEOUT)
            self._script = None
            if not cluster:
                # A cluster's script would need every channel on one slot.
                try:
                    self._script = await asyncio.wait_for(client.script_load(_PUBLISH_SCRIPT), _TIMEOUT)
                except ResponseError:
                    pass
            pubsub = client.pubsub()
            self._client, self._pubsub, self.cluster = client, pubsub, cluster
            self._changes.clear()
            for channel in self.channels:
                await self._subscribe(channel, True)
            for glob in self.globs:
                await self._psubscribe(glob, True)
        except BaseException:
            await self._forget(client)
            raise
        self._connected = True
        return cluster

    async def _forget(self, client=None) -> None:
        client = client or self._client
        pubsub, self._pubsub, self._client = self._pubsub, None, None
        self._connected = False
        for closing in (pubsub, client):
            if closing is not None:
                try:
                    await asyncio.wait_for(closing.aclose(), 1)
                except Exception:
                    pass

    async def _subscribe(self, channel: bytes, on: bool) -> None:
        pubsub = self._pubsub
        if self.cluster:
            await (pubsub.ssubscribe(channel) if on else pubsub.sunsubscribe(channel))
        else:
            await (pubsub.subscribe(channel) if on else pubsub.unsubscribe(channel))

    async def _psubscribe(self, glob: bytes, on: bool) -> None:
        if self.cluster:
            # Redis has no sharded pattern subscription: a pattern sees what
            # is published on this node only.
            return
        await (self._pubsub.psubscribe(glob) if on else self._pubsub.punsubscribe(glob))

    # Calls from the reactor (in order).

    def interest(self, kind: str, key: str, on: bool) -> None:
        name = key.encode("utf-8")
        counts = self.channels if kind == "channel" else self._glob_counts
        count = counts.get(name, 0) + (1 if on else -1)
        if count > 0:
            counts[name] = count
            if count > 1 or not on:
                return
        else:
            counts.pop(name, None)
        if kind == "pattern":
            if on:
                self.globs[name] = _glob_regex(key)
            else:
                self.globs.pop(name, None)
        self._changes.append((kind, name, on))
        self._wake.set()

    def send(self, messages: list[tuple[str, bytes]]) -> None:
        self._outbox.extend((channel.encode("utf-8"), data) for channel, data in messages)
        self._wake.set()

    # The link's life.

    async def run(self, connected: bool) -> None:
        attempt = 0
        while not self._closing:
            if not connected:
                try:
                    cluster = await self.connect()
                except Exception as e:
                    self._to_reactor(self._owner._down, _reason(e))
                    await asyncio.sleep(backoff(attempt, _RETRY_FIRST, _RETRY_MAX))
                    attempt += 1
                    continue
                attempt = 0
                self._to_reactor(self._owner._up, cluster)
            connected = False
            try:
                await self._serve()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                if self._closing:
                    return
                # Whatever was waiting goes: its publishers were answered,
                # and inventing it later would be worse (README: Redis
                # backplane).
                self._outbox.clear()
                await self._forget()
                self._to_reactor(self._owner._down, _reason(e))

    async def _serve(self) -> None:
        tasks = [asyncio.ensure_future(t) for t in (self._writer(), self._reader(), self._pinger())]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()
        finally:
            for task in tasks:
                task.cancel()

    async def _writer(self) -> None:
        outbox, wake = self._outbox, self._wake
        while True:
            await wake.wait()
            wake.clear()
            while self._changes:
                kind, name, on = self._changes.popleft()
                if kind == "channel":
                    await self._subscribe(name, on)
                else:
                    await self._psubscribe(name, on)
            while outbox:
                batch = [outbox.popleft() for _ in range(min(len(outbox), _BATCH))]
                await asyncio.wait_for(self._publish(batch), _TIMEOUT)

    async def _publish(self, batch: list[tuple[bytes, bytes]]) -> None:
        """
        Publish a batch in order: with the script when Redis takes it (one
        command and one reply for the batch: a quarter of the client's work
        per message of a pipeline), else pipelined.
        """
        if self._script is not None:
            from redis.exceptions import NoScriptError, ResponseError

            arguments = [part for message in batch for part in message]
            try:
                await self._client.evalsha(self._script, 0, *arguments)
                return
            except NoScriptError:
                # Redis restarted or flushed its scripts: load it again.
                self._script = await self._client.script_load(_PUBLISH_SCRIPT)
                await self._client.evalsha(self._script, 0, *arguments)
                return
            except ResponseError as e:
                # Scripts refused (ACL, a managed Redis): pipeline instead.
                _log.warn("backplane: Redis refused the publishing script ({reason}); pipelining instead",
                          reason=_reason(e))
                self._script = None
        pipe = self._client.pipeline(transaction=False)
        publish = pipe.spublish if self.cluster else pipe.publish
        for channel, data in batch:
            publish(channel, data)
        await pipe.execute()

    async def _reader(self) -> None:
        prefix = len(self.target.prefix.encode("utf-8"))
        deliver = self._owner._received
        pubsub = self._pubsub
        if self.cluster:
            # One connection per shard, read in turn: a short wait on each.
            def subscribed():
                return bool(pubsub.node_pubsub_mapping)

            async def get():
                return await pubsub.get_sharded_message(ignore_subscribe_messages=True, timeout=0.01)
        else:
            def subscribed():
                return pubsub.subscribed

            async def get():
                return await pubsub.get_message(ignore_subscribe_messages=True, timeout=_PING_INTERVAL)
        while True:
            if not subscribed():
                await asyncio.sleep(0.05)
                continue
            message = await get()
            if message is None:
                continue
            channel = message["channel"]
            if message["type"] == "pmessage" and not self._first_glob(message["pattern"], channel):
                continue
            self._to_reactor(deliver, channel[prefix:].decode("utf-8", "replace"), message["data"])

    def _first_glob(self, glob: bytes, channel: bytes) -> bool:
        """
        Whether this pattern message is the one copy to deliver: Redis
        sends a message once per matching subscription (channel or glob),
        and the local broker delivers to every local subscriber at once.
        """
        if channel in self.channels:
            return False
        text = channel.decode("utf-8", "replace")
        for candidate in sorted(self.globs):
            if self.globs[candidate].fullmatch(text):
                return candidate == glob
        return False

    async def _pinger(self) -> None:
        while True:
            await asyncio.sleep(_PING_INTERVAL)
            await asyncio.wait_for(self._client.ping(), _TIMEOUT)

    async def close(self) -> None:
        self._closing = True
        await self._forget()
