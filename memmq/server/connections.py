"""
The long-lived connections of a front-end, so that a stopping server can
say goodbye to each and wait, briefly, for them to go.
"""

from __future__ import annotations

from typing import Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime

__all__ = ["Connections"]


class Closable(Protocol):
    def close_going_away(self) -> None:
        """Begin a polite close: the server is going away."""

    def abort(self) -> None:
        """Drop the connection now."""


class Connections:
    """
    A set of open subscriber and publisher connections.
    """

    def __init__(self) -> None:
        self._open: set[Closable] = set()
        self._waiting: list[Deferred[None]] = []

    def add(self, connection: Closable) -> None:
        self._open.add(connection)

    def discard(self, connection: Closable | None) -> None:
        self._open.discard(connection)
        if not self._open and self._waiting:
            waiting, self._waiting = self._waiting, []
            for d in waiting:
                d.callback(None)

    def __len__(self) -> int:
        return len(self._open)

    def close_all(self, clock: IReactorTime, grace: float) -> Deferred[None]:
        """
        Close every connection politely, and abort those still open after
        C{grace} seconds.

        @return: a Deferred that fires once every connection is gone.
        """
        for connection in list(self._open):
            connection.close_going_away()
        if not self._open:
            return succeed(None)
        done: Deferred[None] = Deferred()
        self._waiting.append(done)

        def abort_stragglers() -> None:
            nonlocal timer
            for connection in list(self._open):
                connection.abort()
            # An aborted connection reports its loss on the next turn of
            # the reactor; never let shutdown hang on one that does not.
            timer = clock.callLater(grace, give_up)

        def give_up() -> None:
            self._open.clear()
            self.discard(None)

        timer = clock.callLater(grace, abort_stragglers)

        def stop_timer(result):
            if timer.active():
                timer.cancel()
            return result

        return done.addBoth(stop_timer)
