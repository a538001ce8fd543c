# -*- test-case-name: tests.test_limits -*-
"""
The limits a server sets itself against peers that misbehave (README:
Limits): whatever a peer does, it gets a prompt answer or a close, and the
memory and descriptors it can hold stay bounded.  This module holds what
every front-end shares: the limits' values, their counts (L{Guard}), the
plain-text answer of a refusal, and the watch on output a peer does not
take; each limit is applied where its transport is:

- Output a peer does not read: past the transport's buffer (64 KiB), the
  connection is not read any more (so it cannot ask for more answers,
  pongs or close frames), and one that takes no byte of its output for
  L{STALL_TIMEOUT} seconds is closed (L{OutputStall}).
- A request head (and so a WebSocket upgrade, and the TLS handshake before
  it) must be complete within L{HEAD_TIMEOUT} seconds of its first byte,
  or of the connection for the first request
  (L{memmq.server.http_channel.GuardedChannel}).
- A line longer than twisted.web takes, a line not ended by CRLF, and a
  chunk larger than a message may be are answered at once (431, 400, 413)
  and the connection closed, rather than waited on (the same channel).
- Plain HTTP on the TLS port gets a plain-text 400 saying so, as Go's
  server answers it (L{memmq.server.plain_http}).
- A WebSocket message in more than L{MAX_FRAGMENTS} frames closes the
  connection (1009; L{memmq.server.websocket}).
- Connections refused for want of descriptors are counted and logged at
  most every few seconds; the soft C{RLIMIT_NOFILE} is raised to the hard
  one at start; ports listen with the system's largest backlog
  (L{memmq.server.system_limits}).

Every refusal is counted in C{/metrics} (L{Guard}) and logged rate-limited.
"""

from __future__ import annotations

from prometheus_client.core import CounterMetricFamily
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web import http

from memmq.internals.twisted_private import queued_output
from memmq.logs import RateLimited

__all__ = [
    "CLOSE_GRACE", "HEAD_TIMEOUT", "MAX_FRAGMENTS", "STALL_TIMEOUT", "Guard", "OutputStall", "default_guard",
    "plain_text",
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
