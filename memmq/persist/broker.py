"""
The broker of a server run with C{--persist}: the in-memory broker, with
every valid publish also handed to the persistence writer.

A wrapper rather than a hook in L{memmq.broker}: the pure broker stays
pure (no clock, no files), and a server without C{--persist} publishes
through it exactly as before.
"""

from __future__ import annotations

from dataclasses import replace

from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from memmq.broker import Broker
from memmq.errors import BackplaneUnavailable, InvalidTopic
from memmq.interfaces import IBroker, IBrokerStats
from memmq.persist.writer import Persister
from memmq.stats import Stats, TopicStats

__all__ = ["PersistingBroker"]


@implementer(IBroker, IBrokerStats)
class PersistingBroker:
    """
    An L{IBroker} that delivers through C{local} and persists through
    C{persister}.

    Subscribers are handed a message at once; in durable mode the publish
    fires only once the message is on disk, so a subscriber may see a
    message whose publisher is then told it could not be persisted.
    """

    def __init__(self, local: Broker, persister: Persister) -> None:
        self.local = local
        self.persister = persister
        self.subscribe = local.subscribe
        self.subscribe_pattern = local.subscribe_pattern
        self.unsubscribe = local.unsubscribe
        # The replay seam needs publish and stamping in one step: both
        # happen here, in one reactor turn.
        self._publish_now = local.publish_now
        self._append = persister.append

    def publish(self, topic: str, payload: bytes, hops: int = 0) -> Deferred[None]:
        # Stamped before it is handed out, so that subscribers see the
        # stamp (a Server-Sent Events id) the file will hold.
        stamp = self.persister.stamp()
        try:
            self._publish_now(topic, payload, stamp)
        except (InvalidTopic, BackplaneUnavailable):
            return fail()
        written = self._append(topic, payload, stamp)
        return succeed(None) if written is None else written

    def stats(self) -> Stats:
        return replace(self.local.stats(), persistence=self.persister.figures())

    def topic_stats(self) -> list[TopicStats]:
        return self.local.topic_stats()
