"""
The backplane's place in the service tree: connected before the front-ends
listen (a node that cannot reach its backplane refuses to start, with one
line, unless told it may serve alone), disconnected after they close.
"""

from __future__ import annotations

from twisted.application.service import Service

from memmq.backplane.broker import BackplaneBroker

__all__ = ["BackplaneService"]


class BackplaneService(Service):
    """
    Starts and stops a L{BackplaneBroker}'s backplane.

    @param broker: the broker over the backplane; its backplane may offer
        C{connect_now()} (blocking, raising L{memmq.errors.MemmqError}),
        called before anything listens.
    """

    name = "backplane"

    def __init__(self, broker: BackplaneBroker) -> None:
        self.broker = broker

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        connect_now = getattr(self.broker.backplane, "connect_now", None)
        if connect_now is not None:
            connect_now()

    def startService(self) -> None:
        super().startService()
        self.broker.start()

    def stopService(self):
        super().stopService()
        return self.broker.stop()
