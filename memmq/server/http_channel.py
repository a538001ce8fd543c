# -*- test-case-name: tests.test_limits -*-
"""
twisted.web's HTTP channel under the limits (README: Limits;
L{memmq.server.limits}): a deadline on the request head, prompt answers to
lines it cannot take, no reading while its output is full, and a close
that a hostile peer cannot hold open.
"""

from __future__ import annotations

from twisted.web import http

from memmq.internals.twisted_private import chunk_length_waiting, request_line_parsed, stop_reading_during_request
from memmq.server.limits import CLOSE_GRACE, Guard, OutputStall, default_guard, plain_text

__all__ = ["GuardedChannel", "hang_up"]


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


class GuardedChannel(http.HTTPChannel):
    """
    twisted.web's channel with the limits of this module: a deadline on the request
    head, prompt answers to lines it cannot take, no reading while its
    output is full (twisted.web pauses reading only between requests, so
    pipelined requests whose answers are not read were answered without
    end), and rate-limited time-out lines.
    """

    delimiter = b"\n"
    # The deadline on the request head: one call per connection, moved on
    # at each new head rather than cancelled and made again, since a
    # keep-alive connection starts a head for every request.
    _head_call = None
    _in_head = False
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
        if self._in_head:
            return
        self._in_head = True
        timeout = self.guard.head_timeout
        if self._head_call is not None and self._head_call.active():
            self._head_call.reset(timeout)
        else:
            self._head_call = self.guard.clock.callLater(timeout, self._head_timed_out)

    def _stop_head(self) -> None:
        self._in_head = False

    def _head_timed_out(self) -> None:
        self._head_call = None
        if not self._in_head:
            return
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

    def handed_over(self) -> None:
        """
        The connection now belongs to another protocol (a WebSocket, after
        an upgrade): the channel's timers stop, as at its connection's end.
        """
        self._in_head = False
        if self._head_call is not None and self._head_call.active():
            self._head_call.cancel()
        self._head_call = None

    def connectionLost(self, reason) -> None:
        self.handed_over()
        if self._abort_call is not None and self._abort_call.active():
            self._abort_call.cancel()
        self._abort_call = None
        if self._stall is not None:
            self._stall.cancel()
        super().connectionLost(reason)
