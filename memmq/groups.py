# -*- test-case-name: tests.test_sublist -*-
"""
Queue groups: each message to exactly one member of a group.

A group picks round-robin among its members that have room in their
buffer, so members that keep up share a group's messages evenly and a full
member is skipped rather than made to drop; only when every member is full
is the message dropped for the group, and counted.  Pure: no reactor, no
I/O.  Delivery is at most once, as everywhere in memmq: a member that leaves
takes what it had buffered with it, and nothing is handed to another member.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar

__all__ = ["HasRoom", "QueueGroup"]


class HasRoom(Protocol):
    """
    What a group asks of its members.
    """

    def has_room(self) -> bool:
        """
        Whether one more message would be kept rather than dropped.
        """


M = TypeVar("M", bound=HasRoom)


class QueueGroup:
    """
    One named queue group's state: where its round-robin stands and how
    many messages it dropped.

    The members themselves are whatever the caller found for a message (a
    subscription tree gives the members whose pattern matches its topic),
    so one group can span several topics and patterns.

    @ivar name: the group's name.
    @ivar size: how many members it has, kept by whoever adds and removes
        them (L{memmq.sublist.Sublist}).
    @ivar dropped: messages dropped because every member was full.
    """

    __slots__ = ("name", "size", "dropped", "_next")

    def __init__(self, name: str) -> None:
        self.name = name
        self.size = 0
        self.dropped = 0
        self._next = 0

    def __repr__(self) -> str:
        return f"<QueueGroup {self.name!r} size={self.size} dropped={self.dropped}>"

    def choose(self, members: Sequence[M]) -> M | None:
        """
        The member to give the next message to, or C{None} (and one more
        dropped) when none has room.

        Starts after the member chosen last and takes the first with room.
        """
        count = len(members)
        if count == 1:
            # The common case of a group of one, without the arithmetic.
            if members[0].has_room():
                return members[0]
        else:
            start = self._next % count if count else 0
            for offset in range(count):
                index = (start + offset) % count
                member = members[index]
                if member.has_room():
                    self._next = index + 1
                    return member
        self.dropped += 1
        return None
