"""
The interfaces every front-end is written against.

Front-ends (HTTP/WebSocket, gRPC) speak only L{IBroker}; the in-memory
broker (L{memmq.broker.Broker}), a persisting server's
(L{memmq.persist.PersistingBroker}) and a proxy's, over the client library
(L{memmq.proxy.ProxyBroker}), implement it.  A front-end hands the broker an
L{ISubscriber} for each of its subscribers and steers that subscriber's
flow through the L{ISubscription} it gets back.

What else a front-end needs is handed to it by whoever builds the service,
never discovered on the broker: the figures of C{/metrics} and C{/stats}
come through L{IBrokerStats}, and replay (C{?since=N}) from an
L{IReplaySource} given only to the front-ends of a server run with
C{--persist}.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface

__all__ = ["IBroker", "IBrokerStats", "IFollower", "IReplaySource", "ISubscriber", "ISubscription"]


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


class IFollower(ISubscriber):
    """
    A subscriber that writes what it is sent later, many messages at once
    (a WebSocket, Server-Sent Events or streaming C{/sub} subscriber:
    L{memmq.server.combine.CombinedSubscriber}): rather than being handed
    each message of a topic, it is woken once, and takes at its next write
    everything published since (L{memmq.following}).
    """

    def wake():
        """
        Messages wait for this subscriber in its topic's log: take them
        (C{subscription.take}) at the next write.  Called once until they
        are taken; must not raise and must not call back into the broker.
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
            is on disk -- or fails with L{memmq.errors.InvalidTopic},
            L{memmq.errors.PersistError}, L{memmq.errors.PublishError} (a
            proxy's upstream did not take it) or another error of the
            broker.
        """

    def subscribe(topic, subscriber, group=None):
        """
        Register C{subscriber} (an L{ISubscriber}) for every message published
        to C{topic} from now on; with a queue C{group} name, for its share
        of them: each message goes to one member of each group.

        @return: an L{ISubscription}.
        @raise memmq.errors.InvalidTopic: if the topic (or group) is not
            acceptable.
        """

    def subscribe_pattern(pattern, subscriber, group=None):
        """
        As L{subscribe}, for every topic C{pattern} (a
        L{memmq.patterns.Pattern}) matches.  Each message a subscriber
        takes is delivered once, whatever else it matches.
        """

    def unsubscribe(subscription):
        """
        End C{subscription} at once; nothing more is delivered through it.
        Unsubscribing twice is harmless.
        """


class IBrokerStats(Interface):
    """
    The figures a broker keeps about itself, read when scraped.
    """

    def stats():
        """
        The totals now.

        @return: a L{memmq.stats.Stats}.
        """

    def topic_stats():
        """
        Every live topic's figures now, in no particular order.

        @return: a L{list} of L{memmq.stats.TopicStats}.
        """


class IReplaySource(Interface):
    """
    Where a replaying subscriber's persisted messages come from (the
    persistence writer, L{memmq.persist.Persister}); see
    L{memmq.persist.replay}.
    """

    def seam():
        """
        A timestamp (Unix ns) that every message accepted so far has, or is
        older than, and that every later message will be younger than:
        where a replay ends and live delivery begins.
        """

    def flushed():
        """
        @return: a L{Deferred} that fires once everything stamped so far has
            been written (or has failed to be).
        """

    def settle(subject):
        """
        Take the seam of a replay of C{subject} (a topic or a
        L{memmq.patterns.Pattern}) now, in the turn its subscriber was
        registered, and fire once every message stamped up to it is written.

        @return: a L{Deferred} firing with the seam: a timestamp, or, for a
            pattern whose topics are written by several processes, a
            function from a topic to its seam; or failing with a
            L{memmq.errors.MemmqError} when it cannot be had.
        """

    def read(topic, since, last, offset, bound):
        """
        Read the next chunk of C{topic}'s file from C{offset}.

        @return: a L{Deferred} firing with the result of
            L{memmq.persist.replay.read_chunk}.
        """

    def read_pattern(pattern, since, last, reader):
        """
        Read the next chunk of the persisted messages of every topic
        C{pattern} matches, merged in timestamp order (C{reader}: L{None}
        at first, then what the previous call gave).

        @return: a L{Deferred} firing with the result of
            L{memmq.persist.replay.read_merged}.
        """
