"""
The two interfaces every transport is written against.

Front-ends (HTTP/WebSocket, gRPC) speak only L{IBroker}; the
in-memory broker implements it, and so will the client library, which is
how a proxy puts the same front-ends in front of other servers.  A front-end
hands the broker an L{ISubscriber} for each of its subscribers and steers
that subscriber's flow through the L{ISubscription} it gets back.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface

__all__ = ["IBroker", "ISubscriber", "ISubscription"]


class ISubscriber(Interface):
    """
    Where a subscription's messages go: one connection of a front-end.
    """

    def deliver(message):
        """
        Write C{message} (a L{memmq.broker.Message}) to the subscriber now.

        Called only while the subscription is not paused, in publish order.
        Must not raise and must not call back into the broker.
        """


class ISubscription(Interface):
    """
    One subscriber's registration on one topic, and its outbound buffer.
    """

    topic = Attribute("The topic subscribed to (L{str}).")
    dropped = Attribute("Messages dropped for this subscriber alone (L{int}).")

    def pause():
        """
        Stop calling C{deliver}: the subscriber's connection is full.

        Messages published meanwhile are buffered, up to the broker's limits,
        and dropped for this subscriber past them.
        """

    def resume():
        """
        Deliver what was buffered, in order, then deliver as before.
        """


class IBroker(Interface):
    """
    Publish/subscribe by topic.
    """

    def publish(topic, payload, hops=0):
        """
        Hand C{payload} (L{bytes}) to every current subscriber of C{topic}.

        C{hops} is how many proxies the message has passed through already;
        a broker that forwards it (a proxy's client) passes it on, so that a
        cycle of proxies cannot pass a message around forever.

        @return: a L{Deferred} that fires with L{None} once every current
            subscriber has been handed the message (written or buffered) --
            and, for a broker persisting in durable mode, once the message
            is on disk -- or fails with L{memmq.broker.InvalidTopic},
            L{memmq.errors.PersistError} or another error of the broker.
        """

    def subscribe(topic, subscriber):
        """
        Register C{subscriber} (an L{ISubscriber}) for every message published
        to C{topic} from now on.

        @return: an L{ISubscription}.
        @raise memmq.broker.InvalidTopic: if the topic is not acceptable.
        """

    def unsubscribe(subscription):
        """
        End C{subscription} at once; nothing more is delivered through it.
        Unsubscribing twice is harmless.
        """
