"""
The limits a server sets itself against peers that misbehave (README:
Limits): whatever a peer does, it gets a prompt answer or a close, and the
memory and descriptors it can hold stay bounded.

- Output a peer does not read: past the transport's buffer (64 KiB), the
  connection is not read any more (so it cannot ask for more answers,
  pongs or close frames), and one that takes no byte of its output for
  L{STALL_TIMEOUT} seconds is closed (L{OutputStall}).
- A request head (and so a WebSocket upgrade, and the TLS handshake before
  it) must be complete within L{HEAD_TIMEOUT} seconds of its first byte,
  or of the connection for the first request (L{GuardedChannel}).
- A line longer than twisted.web takes, a line not ended by CRLF, and a
  chunk larger than a message may be are answered at once (431, 400, 413)
  and the connection closed, rather than waited on.
- Plain HTTP on the TLS port gets a plain-text 400 saying so
  (L{PlainHTTPAnswer}), as Go's server answers it.
- A WebSocket message in more than L{MAX_FRAGMENTS} frames closes the
  connection (1009).
- Connections refused for want of descriptors are counted and logged at
  most every few seconds (L{watch_accepts}); the soft C{RLIMIT_NOFILE} is
  raised to the hard one at start (L{raise_nofile_limit}); ports listen
  with the system's largest backlog (L{system_backlog}).

Every refusal is counted in C{/metrics} (L{Guard}) and logged rate-limited.
"""

from __future__ import annotations

import resource
import socket

from prometheus_client.core import CounterMetricFamily
from twisted.internet import tcp
from twisted.internet.interfaces import IReactorTime, IStreamServerEndpoint
from twisted.logger import Logger, globalLogPublisher
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.web import http
from zope.interface import implementer

from memmq.internals.twisted_private import (
    chunk_length_waiting,
    queued_output,
    request_line_parsed,
    set_accept_logger,
    stop_reading_during_request,
)
from memmq.logs import RateLimited

__all__ = [
    "Guard", "GuardedChannel", "OutputStall", "PlainHTTPAnswer", "GuardedTLSProtocol",
    "GuardedBufferingTLSProtocol", "HEAD_TIMEOUT", "STALL_TIMEOUT", "MAX_FRAGMENTS", "CLOSE_GRACE",
    "GuardedTLSServerEndpoint", "hang_up", "plain_text", "raise_nofile_limit", "system_backlog", "watch_accepts",
    "with_backlog",
]

_log = Logger()

# Seconds from a connection (or the first byte of a request on a kept-alive
# one) to the end of the request head: TLS handshake, request line, headers.
HEAD_TIMEOUT = 10.0

# Seconds a connection whose output is full may go without taking a byte.
STALL_TIMEOUT = 30.0

# Seconds a closing connection gets to take its last answer before it is
# dropped.
CLOSE_GRACE = 2.0

# Frames per WebSocket message (browsers send one).
MAX_FRAGMENTS = 4096

PLAIN_HTTP_REASON = "Client sent an HTTP request to an HTTPS server."


# What twisted.web's table lacks.
_PHRASES = {431: b"Request Header Fields Too Large"}


def plain_text(code: int, reason: str) -> bytes:
    """
    A whole HTTP/1.1 answer: C{code}, and C{reason} as its one-line body;
    the connection closes after it.
    """
    body = reason.encode("utf-8") + b"\n"
    phrase = http.RESPONSES.get(code) or _PHRASES.get(code, b"Error")
    return (
        b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n"
        b"Connection: close\r\n\r\n%s" % (code, phrase, len(body), body)
    )


class Guard:
    """
    One server's counts of what the limits refused, shown in C{/metrics}
    (it is a prometheus_client collector), and their rate-limited logs.
    """

    def __init__(
        self, clock: IReactorTime | None = None, head_timeout: float = HEAD_TIMEOUT,
        stall_timeout: float = STALL_TIMEOUT,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        self.clock = clock
        self.head_timeout = head_timeout
        self.stall_timeout = stall_timeout
        self.counts = {name: 0 for name, _ in self._METRICS}
        self._logs = {name: RateLimited(_log, clock) for name, _ in self._METRICS}

    _METRICS = (
        ("output_paused", "Times a connection was not read because it did not take its output."),
        ("stalled", f"Connections closed because they took none of their output for {STALL_TIMEOUT:g} s."),
        ("head_timeouts", f"Connections closed because a request head took over {HEAD_TIMEOUT:g} s."),
        ("idle_timeouts", "Idle HTTP connections closed."),
        ("bad_requests", "Requests refused at once: lines too long or not CRLF, chunks too large."),
        ("plain_http", "Plain HTTP requests on the TLS port."),
        ("refused", "Connections refused at accept (out of file descriptors or memory)."),
        ("fragments", f"WebSocket messages refused for coming in over {MAX_FRAGMENTS} frames."),
    )

    def count(self, name: str, why: str | None = None, **fields) -> None:
        """
        Count one C{name}; with C{why}, log it (at most every 10 s, saying
        how many more).
        """
        self.counts[name] += 1
        if why is not None:
            self._logs[name].warn(why, **fields)

    def collect(self):
        for name, text in self._METRICS:
            counter = CounterMetricFamily(f"memmq_connections_{name}", text)
            counter.add_metric([], self.counts[name])
            yield counter


_default_guard: Guard | None = None


def default_guard() -> Guard:
    """
    The guard of front-ends built without one (tests).
    """
    global _default_guard
    if _default_guard is None:
        _default_guard = Guard()
    return _default_guard


def hang_up(channel) -> None:
    """
    Stop reading C{channel}'s connection and close it: politely (what was
    written goes out first), and for good after L{CLOSE_GRACE} seconds
    when it is a L{GuardedChannel}.  Under TLS a polite close waits for
    the peer's close alert, which a hostile peer never sends: hence the
    grace.
    """
    if isinstance(channel, GuardedChannel):
        channel.hang_up()
    elif channel.transport is not None:
        channel.transport.pauseProducing()
        channel.loseConnection()


class OutputStall:
    """
    Watches one connection whose output is full (its producer was paused):
    after L{STALL_TIMEOUT} seconds in which the peer took none of it, the
    connection is dropped and counted.
    """

    def __init__(self, guard: Guard, transport) -> None:
        self._guard = guard
        self._transport = transport
        self._call = None
        self._queued: int | None = None

    def paused(self) -> None:
        if self._call is None:
            self._guard.count("output_paused")
            self._queued = queued_output(self._transport)
            self._call = self._guard.clock.callLater(self._guard.stall_timeout, self._check)

    def resumed(self) -> None:
        self.cancel()

    def cancel(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _check(self) -> None:
        self._call = None
        queued = queued_output(self._transport)
        if queued is None:
            return  # gone already
        if self._queued is not None and queued < self._queued:
            self._queued = queued
            self._call = self._guard.clock.callLater(self._guard.stall_timeout, self._check)
            return
        self._guard.count(
            "stalled", "closing {peer}: it took none of its {queued} waiting bytes in {seconds:g} s",
            peer=str(self._transport.getPeer()), queued=queued, seconds=self._guard.stall_timeout,
        )
        self._transport.abortConnection()


class GuardedChannel(http.HTTPChannel):
    """
    twisted.web's channel with the limits above: a deadline on the request
    head, prompt answers to lines it cannot take, no reading while its
    output is full (twisted.web pauses reading only between requests, so
    pipelined requests whose answers are not read were answered without
    end), and rate-limited time-out lines.
    """

    delimiter = b"\n"
    _head_call = None
    _lines = 0
    _stall: OutputStall | None = None
    _closing = False

    @property
    def guard(self) -> Guard:
        return getattr(self.site, "guard", None) or default_guard()

    def connectionMade(self) -> None:
        super().connectionMade()
        self._stall = OutputStall(self.guard, self.transport)
        self._start_head()

    def _start_head(self) -> None:
        if self._head_call is None:
            self._head_call = self.guard.clock.callLater(self.guard.head_timeout, self._head_timed_out)

    def _stop_head(self) -> None:
        if self._head_call is not None:
            if self._head_call.active():
                self._head_call.cancel()
            self._head_call = None

    def _head_timed_out(self) -> None:
        self._head_call = None
        self.guard.count(
            "head_timeouts", "closing {peer}: no complete request head in {seconds:g} s",
            peer=str(self.transport.getPeer()), seconds=self.guard.head_timeout,
        )
        self.answer_and_close(408, f"request head not complete within {self.guard.head_timeout:g} s", counted=True)

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        if self.line_mode and not self.requests:
            self._start_head()
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        if self._closing or (self.transport is not None and self.transport.disconnecting):
            return
        if not line.endswith(b"\r"):
            self.answer_and_close(400, "lines must end with CRLF")
            return
        self._lines += 1
        super().lineReceived(line[:-1])

    def lineLengthExceeded(self, line: bytes) -> None:
        if self._lines == 0:
            self.answer_and_close(400, f"request line longer than {self.MAX_LENGTH} bytes")
        else:
            self.answer_and_close(431, f"header line longer than {self.MAX_LENGTH} bytes")

    def allHeadersReceived(self) -> None:
        self._stop_head()
        self._lines = 0
        if not request_line_parsed(self):
            # Lines went on after a request line twisted.web refused.
            self.answer_and_close(400, "malformed request line")
            return
        super().allHeadersReceived()

    def rawDataReceived(self, data: bytes) -> None:
        super().rawDataReceived(data)
        if self._closing or not self.requests:
            return
        waiting = chunk_length_waiting(self)
        limit = getattr(self.site, "max_message_size", None)
        request = self.requests[-1]
        if waiting is not None and limit is not None and waiting > limit and not getattr(request, "refused", False):
            self.answer_and_close(413, f"message larger than {limit} bytes (a chunk of {waiting} bytes)")

    def answer_and_close(self, code: int, reason: str, counted: bool = False) -> None:
        """
        Answer C{code} with C{reason} now, read nothing more, and close.
        """
        if self._closing:
            return
        self._closing = True
        if not counted:
            self.guard.count(
                "bad_requests", "refused a request from {peer}: {code} {reason}",
                peer=str(self.transport.getPeer()), code=code, reason=reason,
            )
        self.persistent = False
        self.transport.write(plain_text(code, reason))
        self.hang_up()

    _abort_call = None

    def hang_up(self) -> None:
        """
        Read nothing more, close, and drop the connection if it is still
        open L{CLOSE_GRACE} seconds later.
        """
        if self._abort_call is not None or self.transport is None:
            return
        self._closing = True
        self.transport.pauseProducing()
        self.loseConnection()
        self._abort_call = self.guard.clock.callLater(CLOSE_GRACE, self._abort)

    def _abort(self) -> None:
        self._abort_call = None
        if self.transport is not None:
            self.transport.abortConnection()

    def pauseProducing(self) -> None:
        super().pauseProducing()
        # twisted.web does not stop reading during a request; answers to
        # what is read meanwhile would queue without bound.
        stop_reading_during_request(self)
        if self._stall is not None:
            self._stall.paused()

    def resumeProducing(self) -> None:
        if self._stall is not None:
            self._stall.resumed()
        super().resumeProducing()

    def timeoutConnection(self) -> None:
        # twisted.web logs every one; a server with many idle clients
        # would log a line per client.
        self.guard.count(
            "idle_timeouts", "timing out idle client {peer}", peer=str(self.transport.getPeer())
        )
        self.hang_up()

    def connectionLost(self, reason) -> None:
        self._stop_head()
        if self._abort_call is not None and self._abort_call.active():
            self._abort_call.cancel()
        self._abort_call = None
        if self._stall is not None:
            self._stall.cancel()
        super().connectionLost(reason)


class PlainHTTPAnswer:
    """
    A mixin for a server-side TLS protocol: a connection whose first byte
    is not a TLS handshake record (0x16) is answered a plain-text 400
    saying the server speaks TLS, and closed.
    """

    _first = True
    _plain = False

    def dataReceived(self, data: bytes) -> None:
        if self._plain:
            return
        if self._first and data:
            self._first = False
            if data[0] != 0x16:
                self._plain = True
                guard = getattr(self.factory.wrappedFactory, "guard", None) or default_guard()
                guard.count("plain_http")
                self.transport.write(plain_text(400, PLAIN_HTTP_REASON))
                self.transport.loseConnection()
                return
        super().dataReceived(data)


class GuardedTLSProtocol(PlainHTTPAnswer, TLSMemoryBIOProtocol):
    """
    TLS written as the application writes, with L{PlainHTTPAnswer}.
    """


class GuardedBufferingTLSProtocol(PlainHTTPAnswer, BufferingTLSTransport):
    """
    Twisted's default server TLS, with L{PlainHTTPAnswer}.
    """


class _AcceptObserver:
    """
    Receives a listening port's accept events: counts refused connections
    and logs them rate-limited, and passes anything else on.
    """

    def __init__(self, guard: Guard) -> None:
        self._guard = guard

    def __call__(self, event: dict) -> None:
        text = event.get("log_format") or ""
        if text.startswith(("EMFILE recovery: Closed", "Could not accept")):
            reason = event.get("acceptError", "EMFILE")
            self._guard.count(
                "refused", "refusing connections: {reason} (out of file descriptors; see the open files limit)",
                reason=reason,
            )
        elif text.startswith(("EMFILE encountered", "Re-reserving")):
            return
        else:
            globalLogPublisher(event)


def watch_accepts(port, guard: Guard) -> None:
    """
    Count and rate-limit the log lines of connections C{port} refuses
    (Twisted logs one line per refused connection).
    """
    if isinstance(port, tcp.Port):
        set_accept_logger(port, Logger(namespace="memmq.server.accept", observer=_AcceptObserver(guard)))


def system_backlog() -> int:
    """
    The longest listen backlog the system allows (Linux:
    C{net.core.somaxconn}), for bursts of connections after a restart.
    """
    try:
        with open("/proc/sys/net/core/somaxconn") as f:
            return max(int(f.read().strip()), 1)
    except (OSError, ValueError):
        return socket.SOMAXCONN


def raise_nofile_limit() -> tuple[int, int]:
    """
    Raise the soft open-files limit to the hard one (as Go's runtime
    does), so that a server is not capped at 1,024 connections by a
    default nobody chose.  Returns (before, after).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if target == resource.RLIM_INFINITY:
        try:
            with open("/proc/sys/fs/nr_open") as f:
                target = int(f.read().strip())
        except (OSError, ValueError):
            return soft, soft
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError):
            return soft, soft
        return soft, target
    return soft, soft


class _GuardedTLSFactory(TLSMemoryBIOFactory):
    protocol = GuardedBufferingTLSProtocol


@implementer(IStreamServerEndpoint)
class GuardedTLSServerEndpoint:
    """
    TLS over any server endpoint (a C{--listen}), with L{PlainHTTPAnswer}:
    what C{wrapServerTLS} does, with this module's TLS protocol.
    """

    def __init__(self, endpoint: IStreamServerEndpoint, options, clock: IReactorTime | None = None) -> None:
        self._endpoint = endpoint
        self._options = options
        self._clock = clock

    def listen(self, protocolFactory):
        return self._endpoint.listen(_GuardedTLSFactory(self._options, False, protocolFactory, self._clock))


def with_backlog(description: str) -> str:
    """
    A C{--listen} description of a TCP or UNIX endpoint, listening with the
    system's largest backlog unless it names one.
    """
    kind = description.split(":", 1)[0].strip().lower()
    if kind in ("tcp", "tcp6", "unix") and "backlog=" not in description:
        return f"{description}:backlog={system_backlog()}"
    return description
