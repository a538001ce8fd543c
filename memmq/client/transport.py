"""
The seam between the client core and its transports: L{ITransport} (how a
client reaches one server), L{IStream} (one open subscription stream), and
what they share: L{CONNECT_TIMEOUT} and L{backoff}.
"""

from __future__ import annotations

import random

from zope.interface import Interface

__all__ = ["CONNECT_TIMEOUT", "IStream", "ITransport", "backoff"]

#: Seconds a transport waits for a connection (and its handshakes) to a server.
CONNECT_TIMEOUT = 10.0
# Reconnection: the first retry after 0.1 s, doubling to at most 10 s.
_RECONNECT_FIRST = 0.1
_RECONNECT_MAX = 10.0


def backoff(attempt: int, first: float = _RECONNECT_FIRST, maximum: float = _RECONNECT_MAX) -> float:
    """
    Seconds to wait before try C{attempt + 1} (counting from 0): C{first},
    doubling up to C{maximum}, with some jitter so that many clients of one
    restarted server do not come back in lockstep.  The defaults are a
    subscription's reconnection; a publish retries with its own.
    """
    return min(maximum, first * 2**attempt) * random.uniform(0.8, 1.2)


class IStream(Interface):
    """
    One open subscription stream from one server, as a transport made it.
    It reports to its L{Link}: C{link.received(self, payload)} for each
    message, C{link.lost(self, reason)} once when it ends.
    """

    def pause():
        """
        Stop reading from the server (it buffers, then drops, on its side).
        """

    def resume():
        """
        Read again.
        """

    def close():
        """
        Close the stream; it calls C{link.lost} once it is gone.
        """


class ITransport(Interface):
    """
    How a L{Client} reaches one server: the seam a transport implements.
    A transport is made for one client, by C{transport(client)}, and may
    read the client's C{reactor}, C{tls}, C{retries}, and call its
    C{server_reachable(server)} when a server answers again after failures.
    """

    def publish(server, topic, payload, hops):
        """
        Publish C{payload} to C{topic} on one server, in order with the
        earlier publishes of C{topic} there, retried only when it is known
        that the server did not take it (up to C{1 + client.retries} tries).

        @return: a Deferred firing with L{None}, or failing with a
            L{MemmqError} whose message is the one-line reason (a
            L{TooManyHops} for a loop).
        """

    def subscribe(link):
        """
        Open C{link.topic}'s subscription on C{link.server}, asking for the
        messages since C{link.since} when it is not L{None}.

        @return: a Deferred firing with an L{IStream} once the server has
            accepted the subscription, or failing with the reason; cancelling
            it abandons the attempt.
        """

    def close():
        """
        Close every connection.  @return: a Deferred firing when done.
        """
