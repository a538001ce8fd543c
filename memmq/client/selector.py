"""
Which servers a topic goes to: every one (L{All}) or one chosen by the topic
(L{Shard}).

The Go client's C{client/selector}, in Python: the same C{Set}/C{Get} pair,
and the same choice of shard for the same ordered list of servers, so Go and
Python clients of one cluster publish and subscribe a topic on one server.
"""

from __future__ import annotations

import zlib

from zope.interface import Interface, implementer

from memmq.errors import MemmqError

__all__ = ["ISelector", "All", "Shard", "NoServers"]


class NoServers(MemmqError, LookupError):
    """
    A selector asked for servers before it was given any.
    """

    def __init__(self, message: str = "no servers to choose from") -> None:
        super().__init__(message)


class ISelector(Interface):
    """
    Chooses, for each topic, the servers a client publishes to and
    subscribes on.
    """

    def set(*servers):
        """
        Replace the servers to choose from (C{str} each, as the resolver
        gave them), keeping their order and the first of any duplicates.
        """

    def get(topic):
        """
        The servers for C{topic}: a new C{list} of C{str} each call.

        @raise NoServers: if no servers were set.
        """


class _Servers:
    """
    The ordered, duplicate-free list both selectors choose from.
    """

    def __init__(self, *servers: str) -> None:
        self._servers: tuple[str, ...] = ()
        self.set(*servers)

    @property
    def servers(self) -> tuple[str, ...]:
        """
        The servers chosen from, in the order given.
        """
        return self._servers

    def set(self, *servers: str) -> None:
        # Order matters: Shard's choice depends on each server's position,
        # and dict keeps the first position of a duplicate.
        self._servers = tuple(dict.fromkeys(servers))

    def _nonempty(self) -> tuple[str, ...]:
        if not self._servers:
            raise NoServers()
        return self._servers

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(map(repr, self._servers))})"


@implementer(ISelector)
class All(_Servers):
    """
    Every server gets every topic: publish to all of them, subscribe on all
    of them.
    """

    def get(self, topic: str) -> list[str]:
        return list(self._nonempty())


@implementer(ISelector)
class Shard(_Servers):
    """
    Each topic lives on one server, chosen by the CRC-32 (IEEE) of the topic's
    UTF-8 bytes modulo the number of servers, as the Go client chooses it.
    """

    def get(self, topic: str) -> list[str]:
        servers = self._nonempty()
        return [servers[zlib.crc32(topic.encode("utf-8")) % len(servers)]]
