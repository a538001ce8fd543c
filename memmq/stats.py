"""
What a broker tells about itself, as typed values: the one thing C{/metrics}
and C{/stats} read (L{memmq.interfaces.IBrokerStats}).

A broker answers with the parts it has: every broker that fans messages out
to subscribers of its own has L{Delivery} figures, a persisting one adds
L{Persistence}, a proxy adds L{Upstream}.  The front-ends render what is
there and never look at the broker's attributes.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "Delivery", "GroupStats", "Interest", "PatternStats", "Persistence", "Stats", "TopicStats", "Upstream", "Worker",
]


@dataclass(frozen=True)
class Delivery:
    """
    Totals of the in-memory fan-out, since start.

    @ivar delivered: message x subscriber pairs handed over (written or
        queued) and not dropped.
    @ivar topics: how many topics have subscribers now.
    @ivar subscribers: how many subscriptions there are now, over all topics.
    """

    published: int
    published_bytes: int
    delivered: int
    delivered_bytes: int
    dropped: int
    subscribers: int
    topics: int


@dataclass(frozen=True)
class TopicStats:
    """
    One live topic's figures.

    @ivar buffered: messages waiting in its subscribers' buffers now.
    """

    topic: str
    subscribers: int
    published: int
    dropped: int
    buffered: int


@dataclass(frozen=True)
class PatternStats:
    """
    One pattern subscribed to, and how many subscriptions it has.
    """

    pattern: str
    subscribers: int


@dataclass(frozen=True)
class GroupStats:
    """
    One queue group: its members (over every topic and pattern it spans)
    and the messages it dropped because every member was full.
    """

    group: str
    members: int
    dropped: int


@dataclass(frozen=True)
class Interest:
    """
    Pattern subscriptions and queue groups, by pattern and by group.
    """

    patterns: tuple[PatternStats, ...] = ()
    groups: tuple[GroupStats, ...] = ()


@dataclass(frozen=True)
class Persistence:
    """
    The persistence writer's figures (a server run with C{--persist}).

    @ivar failing: the files failing to be written now, as (path, reason).
    """

    directory: str
    sync: bool
    written: int
    written_bytes: int
    errors: int
    syncs: int
    failing: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Upstream:
    """
    A proxy's view of its upstream servers.

    @ivar topics: how many topics it holds an upstream subscription for.
    @ivar errors: failed publishes to, and lost connections with, them.
    """

    topics: int
    servers: tuple[str, ...]
    errors: int


@dataclass(frozen=True)
class Worker:
    """
    One worker process of a server run with C{--workers}.

    @ivar connections: its open WebSocket and streaming connections.
    @ivar rss: its resident memory, in bytes.
    @ivar sent: messages it sent to other workers (one per message per
        worker that follows the topic).
    @ivar received: messages it received from other workers.
    @ivar dropped: messages it dropped for a worker that did not read them
        (L{memmq.backplane.mesh.HOLD}).
    """

    index: int
    pid: int
    rss: int
    connections: int
    subscribers: int
    published: int
    sent: int
    received: int
    dropped: int = 0


@dataclass(frozen=True)
class Stats:
    """
    A broker's totals: each part L{None} when the broker has no such thing.
    """

    delivery: Delivery | None = None
    persistence: Persistence | None = None
    upstream: Upstream | None = None
    workers: tuple[Worker, ...] = ()
    interest: Interest | None = None
