"""
Write combining for subscribers: many messages, one write.

Every write to a subscriber costs a TLS record and a C{send} system call,
and profiling the fan-out showed those calls, not Python, to be most of the
cost once there are many subscribers.  So a subscriber does not write each
message as it is delivered: it keeps the frames and asks the L{Combiner}
for a flush.  The combiner flushes every waiting subscriber at the end of
the next turn of the reactor, but at most once per C{window} seconds:
while messages come slower than that, nothing waits longer than two reactor
turns; when they come faster, each subscriber gets one write per window
carrying all the messages of that window, and no message waits longer than
the window.

A flush goes through the waiting subscribers a slice at a time
(L{DEFAULT_SLICE}), one slice per reactor turn: writing to a thousand
subscribers takes tens of milliseconds, and a flush that held the reactor
that long would keep publishers waiting for their answers, so that each
flush carried about one message.  Between slices publishers are read and
answered, and what they publish meanwhile joins the frames of the
subscribers not yet written to: the more subscribers, the more messages
each write carries (measured: 23 per write with 1,000 subscribers, against
about 1 when a flush held the reactor).

L{CombinedSubscriber} is the subscriber's half, shared by every subscriber
written to this way (WebSocket, Server-Sent Events, the streaming response):
it keeps what was delivered to it until its flush, and follows its topic's
log (L{memmq.following}), so that with many subscribers on a topic a
publish costs one append, and each flush writes bytes joined once for all
the subscribers flushed in the same turn.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from zope.interface import implementer

from memmq.interfaces import IFollower
from memmq.topics import Message, Subscription

__all__ = ["CombinedSubscriber", "Combiner", "DEFAULT_SLICE", "DEFAULT_WINDOW"]

# One millisecond: below what a network hop costs, above what a loop of
# system calls to a hundred subscribers takes.
DEFAULT_WINDOW = 0.001

# Subscribers written to per reactor turn. A publisher waiting for its
# answer waits about one slice, so a flush of N subscribers carries about
# N / slice messages per write: measured with 1,000 subscribers and one
# HTTP publisher, 128 gave 7 messages per write, 32 gave 23 (and 1.7 times
# the deliveries per second); once a publish cost one append to the
# topic's log rather than a call per subscriber (memmq.following), 8 gave
# 97 messages per write and twice the deliveries per second of 32 (with
# 100 subscribers, 11 messages per write against 3, and 3.5 times), for a
# median latency of 60 ms rather than 35 with 1,000 subscribers; 4 and 2
# gave no more.
DEFAULT_SLICE = 8


class Flushable(Protocol):
    def flush(self) -> None:
        """Write out what is waiting."""


class Combiner:
    """
    Schedules the flushes of subscribers that have frames waiting.
    """

    def __init__(self, clock: IReactorTime, window: float = DEFAULT_WINDOW, slice: int = DEFAULT_SLICE) -> None:
        self._clock = clock
        self._window = window
        self._slice = slice
        self._waiting: deque[Flushable] = deque()
        self._call: IDelayedCall | None = None
        self._last = float("-inf")
        self._flushing = False
        self._stopped = False

    def want_flush(self, subscriber: Flushable) -> None:
        """
        C{subscriber} has something to write: flush it soon.  Called once
        per subscriber per flush (the subscriber remembers it asked).
        """
        self._waiting.append(subscriber)
        if self._call is None and not self._flushing and not self._stopped:
            self._schedule()

    def _schedule(self) -> None:
        delay = self._last + self._window - self._clock.seconds()
        if delay > 0:
            self._call = self._clock.callLater(delay, self.flush, False)
        else:
            self._call = self._clock.callLater(0, self._next_turn)

    def _next_turn(self) -> None:
        # Not in the very next turn but the one after: the answers written in
        # this turn (a publisher's 200, flushed by the TLS layer in the next
        # turn) go out before the fan-out, so that publishers send their
        # next message while the subscribers are being written to.
        self._call = self._clock.callLater(0, self.flush, False)

    def flush(self, everyone: bool = True) -> None:
        """
        Flush every waiting subscriber now (or, from the reactor, one slice
        of them, and the rest in the turns after).
        """
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        waiting = self._waiting
        rest = not everyone and len(waiting) > self._slice
        self._flushing = True
        try:
            if rest:
                # One slice from the front; the deque, not a list sliced
                # anew each turn (a thousand subscribers made that show).
                pop = waiting.popleft
                for _ in range(self._slice):
                    pop().flush()
            else:
                self._waiting = deque()
                for subscriber in waiting:
                    subscriber.flush()
        finally:
            self._flushing = False
        if rest and not self._stopped:
            # The rest of this flush, once the reactor has read what came.
            self._call = self._clock.callLater(0, self.flush, False)
            return
        # The window runs from the end of the writes: what is published
        # while they go out, and during the window after, goes in the next
        # flush together.
        self._last = self._clock.seconds()
        if self._waiting and not self._stopped:
            self._schedule()

    def stop(self) -> None:
        """
        Flush what waits, and schedule no flush again: the server is
        stopping, and its subscribers are being closed.
        """
        self._stopped = True
        self.flush()


@implementer(IFollower)
class CombinedSubscriber:
    """
    A subscriber whose writes go through a L{Combiner}: woken once (by a
    message delivered to it, or by its topic's log), it writes at its
    flush, in one write, the messages delivered to it and then what its
    topic's log holds for it.

    A subclass says how a message is framed (C{framing}, a function of the
    message, the same object for every subscriber of its kind: a
    C{staticmethod}), where it writes (C{write_combined}), and has the
    C{combiner} and, once subscribed, the C{subscription}.
    """

    combiner: Combiner
    subscription: Subscription | None = None
    framing: Callable[[Message], bytes]
    _frames: list[bytes] | None = None
    _flushing_soon = False

    def write_combined(self, data: bytes) -> None:
        """
        Write C{data} (some messages, framed) if the connection is still open.
        """
        raise NotImplementedError

    def deliver(self, message: Message) -> None:
        frames = self._frames
        if frames is None:
            self._frames = [message.framed(self.framing)]
            self.wake()
        else:
            frames.append(message.framed(self.framing))

    def wake(self) -> None:
        """
        Something waits for this subscriber (delivered, or in its topic's
        log): flush it soon.
        """
        if not self._flushing_soon:
            self._flushing_soon = True
            self.combiner.want_flush(self)

    def flush(self) -> None:
        """
        Write what waits since the last flush, in one write: the messages
        delivered, then what the topic's log holds.
        """
        self._flushing_soon = False
        frames, self._frames = self._frames, None
        subscription = self.subscription
        # Taken even when it will not be written: it stops following.
        logged = subscription.take(self.framing) if subscription is not None else b""
        if frames:
            if logged:
                frames.append(logged)
            data = frames[0] if len(frames) == 1 else b"".join(frames)
        else:
            data = logged
        # Empty payloads framed as themselves (the streaming response) are
        # nothing to write: an empty chunk would end the response.
        if data:
            self.write_combined(data)

    def flush_now(self) -> None:
        """
        Write what waits now rather than at the combiner's next flush: the
        connection is being closed.
        """
        if self._flushing_soon:
            self.flush()

    def forget_frames(self) -> None:
        """
        The connection is gone: let what waited for it go.
        """
        self._frames = None
