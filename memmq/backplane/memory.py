# -*- test-case-name: tests.test_backplane -*-
"""
An in-memory L{IBackplane}: several brokers in one process joined as if
they were the workers of one server.  For tests of what goes over a
backplane (the broker wrapper's, and users' own), and the reference of what
a backplane must do: a message goes only to the members that follow its
topic, in the order it was published.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from memmq.backplane.interface import IBackplane
from memmq.errors import BackplaneUnavailable

__all__ = ["MemoryBackplane", "MemoryHub"]


class MemoryHub:
    """
    What the members of one in-memory backplane share.

    @ivar carried: (sender, receiver, topic, payload) of every message
        carried between members, in order.
    """

    def __init__(self) -> None:
        self.members: list[MemoryBackplane] = []
        self.carried: list[tuple[MemoryBackplane, MemoryBackplane, str, bytes]] = []

    def member(self) -> MemoryBackplane:
        """
        A new member's backplane.
        """
        backplane = MemoryBackplane(self)
        self.members.append(backplane)
        return backplane


@implementer(IBackplane)
class MemoryBackplane:
    """
    One member's side of a L{MemoryHub}.

    @ivar healthy: set it to L{False} to act a broken link.
    @ivar subjects: (subject, group) -> nothing: what this member follows.
    @ivar calls: every C{interest} call, in order, as (subject, on, group).
    """

    def __init__(self, hub: MemoryHub) -> None:
        self.hub = hub
        self.healthy = False
        self.receiver = None
        self.subjects: dict[tuple[object, str | None], None] = {}
        self.calls: list[tuple[object, bool, str | None]] = []

    def start(self, receiver) -> Deferred[None]:
        self.receiver = receiver
        self.healthy = True
        return succeed(None)

    def interest(self, subject, on: bool, group: str | None = None) -> None:
        self.calls.append((subject, on, group))
        if on:
            self.subjects[(subject, group)] = None
        else:
            self.subjects.pop((subject, group), None)

    def follows(self, topic: str) -> bool:
        """
        Whether this member's subscribers follow C{topic}.
        """
        return (topic, None) in self.subjects

    def route(self, topic: str) -> None:
        # Queue groups are per node: every local one gets its message.
        return None

    def publish(
        self, topic: str, payload: bytes, hops: int = 0, stamp: int | None = None, route: None = None,
    ) -> Deferred[None]:
        if not self.healthy:
            return fail(BackplaneUnavailable("in-memory backplane down"))
        for other in self.hub.members:
            if other is not self and other.receiver is not None and other.follows(topic):
                self.hub.carried.append((self, other, topic, payload))
                other.receiver.received(topic, payload)
        return succeed(None)

    def stop(self) -> Deferred[None]:
        self.healthy = False
        self.receiver = None
        return succeed(None)
