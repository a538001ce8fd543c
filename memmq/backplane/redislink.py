# -*- test-case-name: tests.test_backplane_redis -*-
"""
The Redis backplane's side on the asyncio loop (L{memmq.backplane.redis}
is the reactor's): the connections to Redis through redis-py, the channels
subscribed, the messages waiting to be published, and the announcements of
this node's interest (L{memmq.backplane.interest}).

It runs on the loop only; it reaches the reactor through the loop thread's
batches, and the reactor reaches it the same way, in order.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque

from twisted.logger import Logger

from memmq.backplane.interest import STATE_INTERVAL, announcement, glob_regex
from memmq.client.transport import backoff

__all__ = ["RedisLink"]

_log = Logger()

# Messages handed to Redis in one command or pipeline at most.
_BATCH = 1024
# Publishes a batch (channel, message, channel, message...) in order.
_PUBLISH_SCRIPT = "for i = 1, #ARGV, 2 do redis.call('PUBLISH', ARGV[i], ARGV[i + 1]) end return #ARGV / 2"
# How long a connection attempt, a command or a ping may take.
TIMEOUT = 5.0
# Seconds between pings while nothing else shows the link is alive.
_PING_INTERVAL = 1.0
# Reconnection backoff: first wait and longest wait, in seconds.
_RETRY_FIRST, _RETRY_MAX = 0.2, 5.0

_CONFIRMED = {b"subscribe": True, b"ssubscribe": True, b"psubscribe": True,
              b"unsubscribe": False, b"sunsubscribe": False, b"punsubscribe": False}


def reason(e: BaseException) -> str:
    """
    One line saying why a call to Redis failed.
    """
    if isinstance(e, (asyncio.TimeoutError, TimeoutError)):
        return "timed out"
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


class RedisLink:
    """
    The connections to Redis and what goes over them.

    @param owner: the reactor's side, told (through the loop thread's
        batches) C{_received(topic, data)}, C{_control(data)}, C{_up(cluster)}
        and C{_down(reason)}.
    """

    def __init__(self, target, node: bytes, thread, owner) -> None:
        self.target = target
        self.node = node
        self._owner = owner
        self._to_reactor = thread.to_reactor.call
        self._prefix = target.prefix.encode("utf-8")
        # Topics hold no control characters, so no topic's channel is this.
        self.control = self._prefix + b"\x00control"
        # What this node wants: channel or glob -> how many subjects.
        self.channels: dict[bytes, int] = {}
        self.globs: dict[bytes, int] = {}
        self._glob_regexes: dict = {}
        # What Redis has confirmed on this connection (announced as ours).
        self._confirmed: set[bytes] = set()
        self._confirmed_globs: set[bytes] = set()
        self._announce: deque[tuple[str, list, list]] = deque()
        self._changes: deque[tuple[bool, bytes, bool]] = deque()
        self._outbox: deque[tuple[bytes, bytes]] = deque()
        self._wake = asyncio.Event()
        self._client = None
        self._pubsub = None
        self._script: str | None = None  # SHA1 of _PUBLISH_SCRIPT, or None to pipeline
        self.cluster = False
        self._closing = False

    # Building the client.

    def _options(self) -> dict:
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        target = self.target
        options = dict(
            host=target.host, port=target.port, username=target.username, password=target.password,
            socket_timeout=None, socket_connect_timeout=TIMEOUT, decode_responses=False,
            # The link retries, resubscribes and counts its losses itself.
            retry=Retry(NoBackoff(), 0),
        )
        if target.tls:
            options.update(ssl=True, ssl_ca_certs=target.ca_file, ssl_cert_reqs=ssl.CERT_REQUIRED,
                           ssl_certfile=target.cert_file, ssl_keyfile=target.key_file)
        return options

    async def connect(self) -> bool:
        """
        Connect, learn whether Redis is a cluster, and subscribe to the
        control channel and every channel and pattern this node follows.
        @return: whether it is a cluster.
        """
        from redis.asyncio import Redis
        from redis.asyncio.cluster import RedisCluster
        from redis.exceptions import ResponseError

        options = self._options()
        client = Redis(db=self.target.db, **options)
        try:
            info = await asyncio.wait_for(client.info("cluster"), TIMEOUT)
            cluster = bool(info.get("cluster_enabled"))
            if cluster:
                await client.aclose()
                client = RedisCluster(**options)
                await asyncio.wait_for(client.initialize(), TIMEOUT)
            self._script = None
            if not cluster:
                # A cluster's script would need every channel on one slot.
                try:
                    self._script = await asyncio.wait_for(client.script_load(_PUBLISH_SCRIPT), TIMEOUT)
                except ResponseError:
                    pass
            self._client, self._pubsub, self.cluster = client, client.pubsub(), cluster
            self._confirmed.clear()
            self._confirmed_globs.clear()
            self._changes.clear()
            self._announce.clear()
            await self._subscribe(self.control, True)
            for channel in self.channels:
                await self._subscribe(channel, True)
            for glob in self.globs:
                await self._psubscribe(glob, True)
        except BaseException:
            await self._forget(client)
            raise
        return cluster

    async def _forget(self, client=None) -> None:
        client = client or self._client
        pubsub, self._pubsub, self._client = self._pubsub, None, None
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

    def interest(self, pattern: bool, key: str, on: bool) -> None:
        name = key.encode("utf-8")
        counts = self.globs if pattern else self.channels
        count = counts.get(name, 0) + (1 if on else -1)
        if count > 0:
            counts[name] = count
            if count > 1 or not on:
                return
        else:
            counts.pop(name, None)
        self._changes.append((pattern, name, on))
        self._wake.set()

    def send(self, messages: list[tuple[str, bytes]]) -> None:
        self._outbox.extend((channel.encode("utf-8"), data) for channel, data in messages)
        self._wake.set()

    def announce_state(self, op: str = "state") -> None:
        """
        Say everything this node follows (Redis has confirmed).
        """
        self._announce.append((op, sorted(self._confirmed), sorted(self._confirmed_globs)))
        self._wake.set()

    # The link's life.

    async def run(self, connected: bool) -> None:
        attempt = 0
        while not self._closing:
            if not connected:
                try:
                    cluster = await self.connect()
                except Exception as e:
                    self._to_reactor(self._owner._down, reason(e))
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
                self._to_reactor(self._owner._down, reason(e))

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
        outbox, wake, changes, announce = self._outbox, self._wake, self._changes, self._announce
        while True:
            await wake.wait()
            wake.clear()
            while changes:
                pattern, name, on = changes.popleft()
                if not on:
                    # Said before Redis forgets it: the others stop sending.
                    self._said("remove", name, pattern)
                await (self._psubscribe(name, on) if pattern else self._subscribe(name, on))
            while announce:
                op, channels, globs = announce.popleft()
                outbox.appendleft((self.control, announcement(
                    self.node, op, (c.decode("utf-8", "replace") for c in channels),
                    (g.decode("utf-8", "replace") for g in globs),
                )))
            while outbox:
                batch = [outbox.popleft() for _ in range(min(len(outbox), _BATCH))]
                await asyncio.wait_for(self._publish(batch), TIMEOUT)

    def _said(self, op: str, name: bytes, pattern: bool) -> None:
        confirmed = self._confirmed_globs if pattern else self._confirmed
        if op == "add":
            confirmed.add(name)
        else:
            confirmed.discard(name)
        self._announce.append((op, [] if pattern else [name], [name] if pattern else []))
        self._wake.set()

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
                          reason=reason(e))
                self._script = None
        pipe = self._client.pipeline(transaction=False)
        publish = pipe.spublish if self.cluster else pipe.publish
        for channel, data in batch:
            publish(channel, data)
        await pipe.execute()

    async def _reader(self) -> None:
        prefix = len(self._prefix)
        deliver, control = self._owner._received, self._owner._control
        pubsub = self._pubsub
        if self.cluster:
            # One connection per shard, read in turn: a short wait on each.
            def subscribed():
                return bool(pubsub.node_pubsub_mapping)

            async def get():
                return await pubsub.get_sharded_message(timeout=0.01)
        else:
            def subscribed():
                return pubsub.subscribed

            async def get():
                return await pubsub.get_message(timeout=_PING_INTERVAL)
        while True:
            if not subscribed():
                await asyncio.sleep(0.05)
                continue
            message = await get()
            if message is None:
                continue
            kind, channel = message["type"], message["channel"]
            if isinstance(kind, str):
                kind = kind.encode("ascii")
            if kind in _CONFIRMED:
                self._confirmed_by_redis(kind, channel)
            elif channel == self.control:
                if kind != b"pmessage":
                    self._to_reactor(control, message["data"])
            elif kind != b"pmessage" or self._first_glob(message["pattern"], channel):
                self._to_reactor(deliver, channel[prefix:].decode("utf-8", "replace"), message["data"])

    def _confirmed_by_redis(self, kind: bytes, channel: bytes) -> None:
        """
        Redis took a subscription: now the others may send to it. The
        control channel's is this connection's first: say hello.
        """
        if not _CONFIRMED[kind]:
            return
        if channel == self.control:
            self.announce_state("hello")
            return
        pattern = kind == b"psubscribe"
        if channel in (self.globs if pattern else self.channels):
            self._said("add", channel, pattern)

    def _first_glob(self, glob: bytes, channel: bytes) -> bool:
        """
        Whether this pattern message is the one copy to deliver: Redis
        sends a message once per matching subscription (channel or glob),
        and the local broker delivers to every local subscriber at once.
        """
        if channel in self.channels:
            return False
        text = channel.decode("utf-8", "replace")
        regexes = self._glob_regexes
        for candidate in sorted(self.globs):
            regex = regexes.get(candidate)
            if regex is None:
                regex = regexes[candidate] = glob_regex(candidate.decode("utf-8", "replace"))
            if regex.fullmatch(text):
                return candidate == glob
        return False

    async def _pinger(self) -> None:
        last_state = time.monotonic()
        while True:
            await asyncio.sleep(_PING_INTERVAL)
            await asyncio.wait_for(self._client.ping(), TIMEOUT)
            if time.monotonic() - last_state >= STATE_INTERVAL:
                last_state = time.monotonic()
                self.announce_state()

    async def close(self) -> None:
        self._closing = True
        if self._client is not None:
            publish = self._client.spublish if self.cluster else self._client.publish
            try:
                await asyncio.wait_for(publish(self.control, announcement(self.node, "bye")), 1)
            except Exception:
                pass
        await self._forget()
