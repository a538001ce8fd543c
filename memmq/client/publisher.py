"""
Publishing over pipelined HTTP/1.1: requests are written back to back on
a persistent connection and the answers matched to them in order.

Why not an HTTP client library: a publish is one small POST whose answer
is an empty 200, and a proxy makes one for every message it forwards.
Waiting a round trip per publish (what HTTP/1.1 without pipelining does)
serialises the publishes of a topic, which must stay in order; and a
general client (treq over twisted.web's Agent) spends most of a proxy's
CPU on machinery a publish does not use.  Pipelining keeps the order (one
connection carries a topic's publishes in the order they were made)
without the round trip, and the request and answer are simple enough to
write and read here.

What is retried, and what is not (delivery is at most once: README,
"Delivery"): a request is sent again only when it is known that the server did not
take it -- the connection could not be made, the server answered 503, or
it closed the connection after announcing it would (C{Connection: close})
before reading the request.  A request the server read but did not
answer before the connection was lost may have been published; it is
reported as failed and not sent again.
"""

from __future__ import annotations

from collections import deque
from urllib.parse import urlsplit

from twisted.internet import endpoints
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

from memmq.client.reasons import reason_of, refusal
from memmq.client.servers import endpoint_of, publish_url
from memmq.client.transport import CONNECT_TIMEOUT, backoff
from memmq.eager import ImmediateTLSFactory, make_eager
from memmq.errors import MemmqError
from memmq.hops import HOPS_HEADER, TooManyHops

__all__ = ["Publisher", "PublishConnection"]

# Requests written and not yet answered, per connection: enough to keep a
# connection busy across a round trip, few enough that a lost connection
# leaves little in doubt.
MAX_IN_FLIGHT = 256
# A connection whose oldest request waits this long for an answer is
# dropped (the server or the path to it is stuck).
ANSWER_TIMEOUT = 30.0
_MAX_HEAD = 64 * 1024  # a response head larger than this is not a memmq server's
_MAX_HEADS = 1024  # request heads kept per connection, one per topic
# A request's resends: the first after 0.05 s, doubling to at most 2 s.
_RETRY_FIRST = 0.05
_RETRY_MAX = 2.0


class _Request:
    __slots__ = ("data", "done", "attempts_left", "attempt")

    def __init__(self, data: bytes, done: Deferred[None], attempts: int) -> None:
        self.data = data
        self.done = done
        self.attempts_left = attempts
        self.attempt = 0


class BadResponse(MemmqError):
    """
    The server's answer is not HTTP/1.1 as a memmq server speaks it.
    """


class _Response:
    """
    One HTTP response being read: its status, whether the server closes
    afterwards, and how much body is still to come.
    """

    __slots__ = ("code", "close", "remaining", "chunked", "until_close", "body")

    def __init__(self, code: int, close: bool, remaining: int, chunked: bool, until_close: bool) -> None:
        self.code = code
        self.close = close
        self.remaining = remaining
        self.chunked = chunked
        self.until_close = until_close
        self.body = bytearray()


def _parse_head(head: bytes) -> _Response:
    """
    The status line and headers of a response (without the blank line).
    """
    lines = head.split(b"\r\n")
    status = lines[0].split(b" ", 2)
    if len(status) < 2 or not status[0].startswith(b"HTTP/1.") or not status[1].isdigit():
        raise BadResponse(f"not an HTTP/1.1 answer: {lines[0][:80]!r}")
    code = int(status[1])
    close = status[0] == b"HTTP/1.0"
    length = None
    chunked = False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        value = value.strip()
        if name == b"content-length":
            if not value.isdigit():
                raise BadResponse(f"bad Content-Length {value[:40]!r}")
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = value.lower().endswith(b"chunked")
        elif name == b"connection":
            tokens = {t.strip().lower() for t in value.split(b",")}
            if b"close" in tokens:
                close = True
            elif b"keep-alive" in tokens:
                close = False
    if code in (204, 304) or 100 <= code < 200:
        return _Response(code, close, 0, False, False)
    if chunked:
        return _Response(code, close, 0, True, False)
    if length is not None:
        return _Response(code, close, length, False, False)
    return _Response(code, True, 0, False, True)


class _PublishProtocol(Protocol):
    """
    The reading side of one publish connection: splits the byte stream into
    responses and hands each to the connection, in order.
    """

    def __init__(self, connection: PublishConnection) -> None:
        self._connection = connection
        self._buffer = bytearray()
        self._response: _Response | None = None
        self._chunk_left = -1  # chunked: bytes left in the chunk, -1 when a size line is due

    def connectionMade(self) -> None:
        tcp = self.transport
        tcp = getattr(tcp, "transport", tcp)  # under TLS, the TCP connection below it
        make_eager(tcp)
        self._connection._connected(self)

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        try:
            while self._buffer and self._parse_one():
                pass
        except BadResponse as e:
            self._connection._bad_response(self, str(e))

    def _parse_one(self) -> bool:
        """
        Make what progress the buffer allows; C{True} if more may be made.
        """
        buffer = self._buffer
        response = self._response
        if response is None:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > _MAX_HEAD:
                    raise BadResponse("response head too large")
                return False
            response = _parse_head(bytes(buffer[:end]))
            del buffer[: end + 4]
            if 100 <= response.code < 200:
                return True  # an interim answer: the real one follows
            self._response = response
            self._chunk_left = -1
        if response.until_close:
            response.body += buffer
            del buffer[:]
            return False
        if response.chunked:
            return self._parse_chunk(response)
        take = min(response.remaining, len(buffer))
        if take:
            response.body += buffer[:take]
            del buffer[:take]
            response.remaining -= take
        if response.remaining:
            return False
        self._finish(response)
        return True

    def _parse_chunk(self, response: _Response) -> bool:
        buffer = self._buffer
        if self._chunk_left == -1:
            end = buffer.find(b"\r\n")
            if end < 0:
                if len(buffer) > _MAX_HEAD:
                    raise BadResponse("chunk size line too long")
                return False
            size = bytes(buffer[:end]).split(b";", 1)[0].strip()
            try:
                self._chunk_left = int(size, 16)
            except ValueError:
                raise BadResponse(f"bad chunk size {size[:20]!r}") from None
            del buffer[: end + 2]
            if self._chunk_left == 0:
                self._chunk_left = -2  # the trailer is due
            return True
        if self._chunk_left == -2:
            end = buffer.find(b"\r\n\r\n") if not buffer.startswith(b"\r\n") else -2
            if end == -2:
                del buffer[:2]
            elif end < 0:
                return False
            else:
                del buffer[: end + 4]
            self._finish(response)
            return True
        take = min(self._chunk_left, len(buffer))
        response.body += buffer[:take]
        del buffer[:take]
        self._chunk_left -= take
        if self._chunk_left:
            return False
        if len(buffer) < 2:
            self._chunk_left = 0
            return False
        if buffer[:2] != b"\r\n":
            raise BadResponse("chunk longer than its size")
        del buffer[:2]  # the CRLF after the chunk
        self._chunk_left = -1
        return True

    def _finish(self, response: _Response) -> None:
        self._response = None
        self._connection._answered(self, response.code, bytes(response.body), response.close)

    def connectionLost(self, reason: Failure) -> None:
        response = self._response
        if response is not None and response.until_close:
            self._response = None
            self._connection._answered(self, response.code, bytes(response.body), True)
        self._connection._lost(self, reason)


class PublishConnection:
    """
    One persistent, pipelined connection to one server, connected when
    there is something to send and again after it drops.

    C{send} returns a Deferred that fires with L{None} when the server
    answered 200, or fails with L{MemmqError} (with the reason as its
    message) or L{TooManyHops}.
    """

    def __init__(self, server: str, reactor, tls_policy, attempts: int, reconnected=None, token=None) -> None:
        """
        @param reconnected: called with the server when a connection is
            made after one was lost or could not be made (so others
            waiting to reconnect there can try now), or L{None}.
        """
        self.server = server
        self._token = token
        self._reconnected = reconnected
        self._was_down = False
        self._reactor = reactor
        self._tls_policy = tls_policy
        self._attempts = attempts
        tls, self._host, self._port = endpoint_of(server)
        self._tls = tls
        self._unsent: deque[_Request] = deque()
        self._in_flight: deque[_Request] = deque()
        self._protocol: _PublishProtocol | None = None
        self._connecting: Deferred | None = None
        self._reconnect_call = None
        self._closing = False  # the server said it closes after an answer
        self._timeout_call = None
        self._closed = False
        self._lost_waiters: list[Deferred[None]] = []
        self._heads: dict[tuple[str, int], bytes] = {}
        self._write_call = None

    def request(self, topic: str, payload: bytes, hops: int) -> bytes:
        """
        The bytes of the request that publishes C{payload} to C{topic}.
        """
        head = self._heads.get((topic, hops))
        if head is None:
            if len(self._heads) >= _MAX_HEADS:
                self._heads.clear()
            parts = urlsplit(publish_url(self.server, topic))
            default_port = 443 if self._tls else 80
            host = parts.netloc if self._port != default_port else parts.netloc.rsplit(":", 1)[0]
            text = f"POST {parts.path}?{parts.query} HTTP/1.1\r\nHost: {host}\r\n"
            if hops:
                text += f"{HOPS_HEADER}: {hops}\r\n"
            if self._token:
                text += f"Authorization: Bearer {self._token}\r\n"
            head = self._heads[topic, hops] = (text + "Content-Length: ").encode("ascii")
        return b"%s%d\r\n\r\n%s" % (head, len(payload), payload)

    def send(self, data: bytes) -> Deferred[None]:
        """
        Send one request (from L{request}); see the class docstring for
        what the result says.
        """
        if self._closed:
            raise MemmqError("client is closed")
        done: Deferred[None] = Deferred()
        self._enqueue(_Request(data, done, self._attempts))
        return done

    def _enqueue(self, request: _Request) -> None:
        self._unsent.append(request)
        if self._protocol is not None:
            # Written at the end of this turn of the reactor, together
            # with the others made in it: one TLS record and one send for
            # all the publishes a burst of requests made.
            if self._write_call is None:
                self._write_call = self._reactor.callLater(0, self._write)
        else:
            self._connect_unless_connecting()

    # -- connecting ------------------------------------------------------

    def _connect_unless_connecting(self) -> None:
        # Callbacks fired from here may publish again (and so come back):
        # one connection attempt at a time, whoever asks first.
        if self._protocol is None and self._connecting is None and self._reconnect_call is None:
            self._connect()

    def _connect(self) -> None:
        self._reconnect_call = None
        endpoint = endpoints.HostnameEndpoint(self._reactor, self._host, self._port, timeout=CONNECT_TIMEOUT)
        factory = Factory.forProtocol(lambda: _PublishProtocol(self))
        factory.noisy = False
        if self._tls:
            # TLS records written as the requests are, not a turn later: a
            # proxy forwards each publish as it comes (memmq.eager).
            factory = ImmediateTLSFactory(self._tls_policy.creator(self._host), True, factory, self._reactor)
            factory.noisy = False
        self._connecting = endpoint.connect(factory)
        self._connecting.addErrback(self._connect_failed)

    def _connected(self, protocol: _PublishProtocol) -> None:
        self._connecting = None
        if self._closed:
            protocol.transport.loseConnection()
            return
        self._protocol = protocol
        self._closing = False
        for request in self._unsent:
            request.attempt = 0
        self._write()
        if self._was_down:
            self._was_down = False
            if self._reconnected is not None:
                self._reconnected(self.server)

    def _connect_failed(self, failure: Failure) -> None:
        self._connecting = None
        if self._closed:
            return
        self._was_down = True
        self._give_up_or_retry(reason_of(failure))

    def _give_up_or_retry(self, reason: str) -> None:
        """
        The unsent requests could not be sent: each loses an attempt; those
        with none left fail, the others wait for the next connection.
        """
        keep: deque[_Request] = deque()
        failed = []
        attempt = 0
        for request in self._unsent:
            request.attempts_left -= 1
            request.attempt += 1
            if request.attempts_left > 0:
                keep.append(request)
                attempt = max(attempt, request.attempt)
            else:
                failed.append(request)
        self._unsent = keep
        if keep and not self._closed:
            delay = backoff(attempt - 1, _RETRY_FIRST, _RETRY_MAX)
            self._reconnect_call = self._reactor.callLater(delay, self._connect)
        for request in failed:
            request.done.errback(MemmqError(reason))

    # -- sending and answers ---------------------------------------------

    def _write(self) -> None:
        if self._write_call is not None:
            if self._write_call.active():
                self._write_call.cancel()
            self._write_call = None
        protocol = self._protocol
        if protocol is None or self._closing:
            return
        room = MAX_IN_FLIGHT - len(self._in_flight)
        if room <= 0 or not self._unsent:
            return
        batch = []
        while self._unsent and room:
            request = self._unsent.popleft()
            self._in_flight.append(request)
            batch.append(request.data)
            room -= 1
        protocol.transport.write(b"".join(batch))
        if self._timeout_call is None:
            self._timeout_call = self._reactor.callLater(ANSWER_TIMEOUT, self._timed_out)

    def _answered(self, protocol: _PublishProtocol, code: int, body: bytes, close: bool) -> None:
        if protocol is not self._protocol or not self._in_flight:
            return
        request = self._in_flight.popleft()
        if self._timeout_call is not None:
            if self._in_flight:
                self._timeout_call.reset(ANSWER_TIMEOUT)
            else:
                self._timeout_call.cancel()
                self._timeout_call = None
        if close:
            # Nothing after this answer will be read: what was written
            # after it was not taken, and goes again on a new connection.
            self._closing = True
            self._unsent.extendleft(reversed(self._in_flight))
            self._in_flight.clear()
            protocol.transport.loseConnection()
        elif self._unsent:
            self._write()
        if code == 200:
            request.done.callback(None)
            return
        reason = _status_reason(code, body)
        if code == 503 and request.attempts_left > 1:
            # The server did not take it (shutting down, say): again later.
            request.attempts_left -= 1
            request.attempt += 1
            self._reactor.callLater(backoff(request.attempt - 1, _RETRY_FIRST, _RETRY_MAX), self._resend, request)
        elif code == 508:
            request.done.errback(TooManyHops(reason))  # a loop does not heal by asking again
        elif code in (401, 403):
            request.done.errback(refusal(code, reason))  # nor does access control's refusal
        else:
            request.done.errback(MemmqError(reason))

    def _resend(self, request: _Request) -> None:
        if self._closed:
            request.done.errback(MemmqError("client is closed"))
            return
        self._enqueue(request)

    def _bad_response(self, protocol: _PublishProtocol, reason: str) -> None:
        protocol.transport.abortConnection()
        if protocol is self._protocol:
            self._closing = True  # what is published meanwhile waits for a new connection
            self._fail_in_flight(reason)

    def _timed_out(self) -> None:
        self._timeout_call = None
        if self._protocol is not None and self._in_flight:
            self._protocol.transport.abortConnection()
            self._closing = True
            self._fail_in_flight(f"no answer in {ANSWER_TIMEOUT:g} s")

    def _fail_in_flight(self, reason: str) -> None:
        in_flight, self._in_flight = self._in_flight, deque()
        for request in in_flight:
            request.done.errback(MemmqError(reason))

    def _lost(self, protocol: _PublishProtocol, reason: Failure) -> None:
        if protocol is not self._protocol:
            return
        self._protocol = None
        self._was_down = True
        if self._timeout_call is not None:
            self._timeout_call.cancel()
            self._timeout_call = None
        if self._unsent and not self._closed:
            self._connect_unless_connecting()
        # Read by the server, perhaps published: not sent again.
        self._fail_in_flight("connection lost before the server answered (" + reason_of(reason) + ")")
        waiters, self._lost_waiters = self._lost_waiters, []
        for d in waiters:
            d.callback(None)

    # -- closing ---------------------------------------------------------

    def close(self) -> Deferred[None]:
        """
        Fail what is not sent yet, and close the connection once what was
        sent is answered.
        """
        self._closed = True
        if self._reconnect_call is not None and self._reconnect_call.active():
            self._reconnect_call.cancel()
        if self._connecting is not None:
            self._connecting.cancel()
        unsent, self._unsent = self._unsent, deque()
        for request in unsent:
            request.done.errback(MemmqError("client is closed"))
        if self._protocol is None:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._lost_waiters.append(d)
        self._protocol.transport.loseConnection()
        return d


def _status_reason(code: int, body: bytes) -> str:
    line = body.decode("utf-8", "replace").strip().splitlines()
    return f"HTTP {code}" + (f": {line[0]}" if line else "")


class Publisher:
    """
    The publish connections of a client: per server, a few pipelined
    connections, a topic always on the same one (so its publishes arrive
    in the order they were made) and different topics spread over them.
    """

    def __init__(
        self, reactor, tls_policy, attempts: int, connections_per_server: int = 4, reconnected=None, token=None
    ) -> None:
        self._reactor = reactor
        self._token = token
        self._reconnected = reconnected
        self._tls_policy = tls_policy
        self._attempts = attempts
        self._width = connections_per_server
        self._connections: dict[tuple[str, int, int], PublishConnection] = {}

    def connection(self, server: str, topic: str, hops: int) -> PublishConnection:
        # A connection per hop count too: in a cycle of proxies a message
        # comes back with more hops, and must not wait (pipelined) behind
        # the request that is waiting for it.
        key = (server, hops, hash(topic) % self._width)
        connection = self._connections.get(key)
        if connection is None:
            connection = self._connections[key] = PublishConnection(
                server, self._reactor, self._tls_policy, self._attempts, self._reconnected, self._token
            )
        return connection

    def publish(self, server: str, topic: str, payload: bytes, hops: int) -> Deferred[None]:
        connection = self.connection(server, topic, hops)
        return connection.send(connection.request(topic, payload, hops))

    def close(self) -> Deferred[None]:
        closing = [c.close() for c in self._connections.values()]
        self._connections.clear()
        return DeferredList(closing, consumeErrors=True).addCallback(lambda _: None)
