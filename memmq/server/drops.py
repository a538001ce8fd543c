"""
Saying, in the log, that a subscriber is not keeping up: the broker's
C{on_drop}, handed to it by whoever builds the service (the broker itself
never logs).
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from memmq.interfaces import ISubscription
from memmq.logs import RateLimited

__all__ = ["drop_reporter"]

_log = Logger()


def drop_reporter(clock: IReactorTime) -> Callable[[ISubscription], None]:
    """
    An C{on_drop} for L{memmq.broker.Broker} that warns, rate-limited, when
    a subscriber starts dropping messages because its buffer is full.
    """
    slow = RateLimited(_log, clock)

    def dropping(subscription: ISubscription) -> None:
        slow.warn(
            "a subscriber of {topic!r} is not keeping up: its buffer is full, and messages are "
            "dropped for it until it drains", topic=subscription.topic,
        )

    return dropping
