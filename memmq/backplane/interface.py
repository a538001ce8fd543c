"""
The seam between one memmq process and the others that make up the same
server: its sibling worker processes (C{--workers}) or other nodes behind a
load balancer (C{--backplane}).

A L{IBackplane} carries messages between processes and nothing else; the
broker wrapper in L{memmq.backplane.broker} decides what to send and where
received messages go. Interest flows the other way: a process says which
topics and patterns its own subscribers follow, so that a message goes only
to the processes that want it, and a publish to a topic nobody elsewhere
follows costs nothing beyond the local delivery.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface

__all__ = ["IBackplane", "IBackplaneReceiver"]


class IBackplaneReceiver(Interface):
    """
    What a backplane hands its incoming traffic to: the local broker wrapper.
    """

    def received(topic, payload, plain=True, groups=None, stamp=None):
        """
        A message published elsewhere, for this process's own subscribers
        only (never to be sent back out).

        C{plain}: deliver it to the subscribers outside queue groups.
        C{groups}: L{None} to give one member of every local queue group
        that matches a copy (groups counted per process, as a backplane
        between nodes does), or the names of the only groups to give one
        member a copy (the sender chose this process for them, as workers
        do to keep a group's once-only delivery across processes).
        """


class IBackplane(Interface):
    """
    Moves messages between the processes of one memmq server.
    """

    healthy = Attribute(
        "L{bool}: whether the link to the others is up; while it is not, a "
        "publish fails rather than being delivered locally only."
    )

    def start(receiver):
        """
        Connect, and hand every message that arrives to C{receiver} (an
        L{IBackplaneReceiver}).

        @return: a L{Deferred} that fires once the backplane can carry
            messages, or fails with a one-line L{memmq.errors.MemmqError}.
        """

    def interest(subject, on, group=None):
        """
        This process's subscribers now follow (C{on=True}) or no longer
        follow (C{on=False}) C{subject}: a topic (L{str}) or a
        L{memmq.patterns.Pattern}, for subscribers outside queue groups
        (C{group=None}) or members of queue group C{group}. Called on the
        first such local subscriber and after the last one, never twice in a
        row with the same C{on}.
        """

    def route(topic):
        """
        Which of this process's queue groups get the next message published
        here to C{topic}, decided before its local delivery and handed to
        L{publish} with it: L{None} for every local group the topic reaches
        (groups counted per process, as between nodes), or a value whose
        C{local} names the only ones (the backplane chose other processes
        for the others, as between workers).  Call once per message.
        """

    def publish(topic, payload, hops=0, stamp=None, route=None):
        """
        Send a message published here to the other processes that follow
        its topic (the local delivery is the caller's), with its persisted
        C{stamp} if it has one, where C{route} (from L{route}) says.

        @return: a L{Deferred} firing once the message is handed to the
            backplane in order after every earlier publish from this
            process, or failing (L{memmq.errors.BackplaneUnavailable})
            when it cannot be.
        """

    def stop():
        """
        Disconnect. @return: a L{Deferred} that fires once done.
        """
